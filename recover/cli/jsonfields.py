"""The names the ``--json`` outputs share: one name per thing, snake_case, the same in every
verb (and in the boot's decision record). docs/cli.md's table is generated from here
(recover.cli.docs); tests/tpm/test_json_fields.py runs every verb's ``--json`` and fails on
a name that is not snake_case, or one used by two verbs and missing here.

Keys of maps whose keys are data, not names, are not field names: PCR banks and indices
(``pcrs``), step names (``timeline_ms``), verdict count names (``counts``); ``config
--json`` uses the setting names of docs/configuration.md.
"""

from __future__ import annotations

#: name → (what it is, where it appears)
JSON_FIELDS: dict[str, tuple[str, str]] = {
    "address": ("`host:port` (IPv6 `[addr]:port`) peers reach a host on", "attest, inventory"),
    "ak_pub": ("the attestation key's public key (PEM)", "attest, inventory"),
    "binding": (
        "which selected PCR binds kernel, initramfs, command line (docs/measured-boot.md)",
        "provision, status",
    ),
    "clock": (
        "the TPM clock: `time`, `clock` (ms), `reset_count`, `restart_count`, `safe`",
        "status, evidence, decide, decision record",
    ),
    "counts": ("numbers by name (verdict: peers by outcome)", "decide, decision record"),
    "credentials": (
        "credentials: names (decision record) or `{name, size}` (credential list)",
        "credential list, decision record",
    ),
    "evidence": ("the local evidence record", "decide, decision record"),
    "failure_domain": ("the failure domain (rack, power feed) of a host", "attest, inventory"),
    "generation": ("the credential store's generation", "credential list"),
    "handle": ("a TPM handle, `0x%08x`", "status"),
    "id": ("a host's id in the inventory", "attest, inventory"),
    "image_key_id": (
        "the key id of the image key derived from the sealed master (`image inspect` calls "
        "the image's own `key_id`)",
        "provision, status (pins)",
    ),
    "lock_pcr": ("the lock PCR's index", "provision, status (sealed), attest, inventory"),
    "lock_pcr_extended": (
        "whether the lock PCR was extended (in this boot)",
        "status (sealed), decision record",
    ),
    "owner_auth_set": ("whether the owner hierarchy auth is set", "provision, status"),
    "pcrs": ("PCR values: `{bank: {index: hex}}`", "attest, inventory"),
    "peers": ("the peer round: counts and one result per peer", "decide, decision record"),
    "pins": ("the pinned object names and image key id", "provision, status"),
    "policy": ("the sealed policy's kind: `pcr`, `signed`", "provision, status (sealed)"),
    "present": ("whether a TPM object or event log is there", "status, binding"),
    "reason": ("why, in words", "status (sealed), peers, evidence signals"),
    "selection": (
        "a PCR selection, tpm2-tools syntax (`sha256:0,2,4,7,9`)",
        "provision, status (sealed), binding",
    ),
    "summary": ("the evidence's one-word reading", "evidence, decide, decision record"),
    "timeline_ms": ("milliseconds per step, by step name", "decide, decision record"),
    "verdict": ("the verdict: kind, action, reasons, counts", "decide, decision record"),
}
