"""PCR selection syntax (tpm2-tools style): ``sha256:0,2,4,7,9[+sha1:0]``. Pure."""

from __future__ import annotations

from recover.errors import ConfigError

HASH_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}

Selection = tuple[tuple[str, tuple[int, ...]], ...]


def parse_selection(text: str) -> Selection:
    banks: list[tuple[str, tuple[int, ...]]] = []
    if not text.strip():
        raise ConfigError("empty PCR selection", hint="use e.g. sha256:0,2,4,7,9")
    for part in text.strip().split("+"):
        alg, sep, nums = part.partition(":")
        alg = alg.strip().lower()
        if not sep or alg not in HASH_SIZES:
            raise ConfigError(f"bad PCR selection {part!r}", hint="use e.g. sha256:0,2,4,7,9")
        try:
            pcrs = sorted({int(n, 0) for n in nums.split(",") if n.strip()})
        except ValueError:
            raise ConfigError(
                f"bad PCR number in {part!r}", hint="use e.g. sha256:0,2,4,7,9"
            ) from None
        if not pcrs or any(not 0 <= p <= 23 for p in pcrs):
            raise ConfigError(f"PCRs in {part!r} must be 0..23")
        if any(b[0] == alg for b in banks):
            raise ConfigError(f"bank {alg} given twice in {text!r}")
        banks.append((alg, tuple(pcrs)))
    return tuple(banks)


def format_selection(sel: Selection) -> str:
    return "+".join(f"{alg}:{','.join(str(p) for p in pcrs)}" for alg, pcrs in sel)


def add_pcr(sel: Selection, alg: str, pcr: int) -> Selection:
    out = []
    found = False
    for a, pcrs in sel:
        if a == alg:
            pcrs = tuple(sorted(set(pcrs) | {pcr}))
            found = True
        out.append((a, pcrs))
    if not found:
        out.append((alg, (pcr,)))
    return tuple(out)
