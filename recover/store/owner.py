"""The owner hierarchy auth: set at provisioning (``--export-owner-auth``), held offline
like the master secret, given back (``--owner-auth FILE``) to change protected TPM state:
raise the policy counter, replace the sealed secret, migrate or undefine NV indices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recover.errors import UsageError
from recover.store.keyfile import read_key_file

if TYPE_CHECKING:
    from recover.tpm import Tpm

OWNER_AUTH_SIZE = 32


def use_owner_auth(t: Tpm, path: str | None, needed_for: str) -> bool:
    """Authorise owner commands with the auth in ``path``; without a file the owner auth
    must still be empty. Returns whether the TPM has an owner auth set."""
    is_set = t.owner_auth_set()
    if path:
        t.use_owner_auth(read_key_file(path, "owner auth"))
    elif is_set:
        raise UsageError(
            f"{needed_for} needs the owner hierarchy auth (it is set on this TPM)",
            hint="pass --owner-auth FILE with the file written by "
            "`host-recover provision --export-owner-auth`",
        )
    return is_set
