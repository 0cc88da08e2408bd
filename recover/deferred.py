"""Imports that leave some of what they import unloaded until it is used (issue 12: cold
start): tpm2-pytss without most of cryptography, and dataclasses without inspect.

tpm2-pytss 3 imports, at module level, cryptography's key, KDF, cipher and x509
modules for its key conversions (``tpm2_pytss.internal.crypto``), and
``cryptography.hazmat.primitives.serialization`` for one default argument of
``TPMT_SENSITIVE``'s methods. None of it runs for the commands of a clean boot, and the
import is half of the payload's CPU before its first TPM command (docs/performance.md).

``dataclasses`` (Python 3.11) imports ``inspect``, with ``dis``, ``ast`` and their
tables, to call ``inspect.signature`` when it writes a docstring for a class that has
none: about 5 ms of the payload's cold start for a function the payload's classes (all
with docstrings) never call.

While :func:`importing` is active, these modules are created *deferred* (``names``
selects them: :data:`TPM2_PYTSS` for ``Tpm.open``, :data:`DATACLASSES` for the boot
entry, recover.cli.entry):

* ``tpm2_pytss.internal.crypto``: a name in :data:`CRYPTO_FUNCTIONS` (the functions the
  package's modules import from it) is bound to a forwarder that loads the real module on
  its first call; any other attribute loads it at once.
* ``cryptography.hazmat.primitives.serialization``: the names in
  :data:`SERIALIZATION_EAGER` are the very objects of ``..._serialization``, where the
  package itself takes them from (its SSH and key-loading modules stay unloaded); any
  other attribute loads the real package.
* ``inspect``: :data:`INSPECT_FUNCTIONS` (what dataclasses calls) are forwarders; any
  other attribute loads the real module.

The deferred modules are in ``sys.modules`` only while :func:`importing` runs: the modules
imported inside the block keep them as names, and afterwards the first use of one imports
the real module the ordinary way (``importlib.import_module``: once, under the import
system's own locks, package before submodules), whoever asks for it first. The deferral
changes when the modules load, never what a name means: a forwarder calls the same
function, an eager name is the same object. tests/unit/test_deferred.py checks the lists
against the installed packages and the interpreter's dataclasses (names, kinds,
identity) and the behaviour; the bundled
payload runs with it on its every path (tests/integration/test_bundle_paths.py). Only the
packages' own import statements are involved, so `host-recover bundle`, which imports
both packages whole to find their files, still ships everything they may load.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

CRYPTO = "tpm2_pytss.internal.crypto"
SERIALIZATION = "cryptography.hazmat.primitives.serialization"
SERIALIZATION_SOURCE = "cryptography.hazmat.primitives._serialization"
INSPECT = "inspect"

#: What tpm2_pytss.types, .utils and .cryptography import from internal.crypto: all
#: functions (tests/unit/test_deferred.py reads the import statements to keep this exact).
CRYPTO_FUNCTIONS = frozenset(
    {
        "_calculate_sym_unique",
        "_check_hmac",
        "_decrypt",
        "_ecc_sign_algorithm_to_scheme",
        "_encrypt",
        "_generate_seed",
        "_get_curve",
        "_get_digest",
        "_get_digest_size",
        "_get_signature_bytes",
        "_getname",
        "_hmac",
        "_int_to_buffer",
        "_kdfa",
        "_private_from_encoding",
        "_public_from_encoding",
        "_public_to_pem",
        "_rsa_decrypt_padding_to_scheme",
        "_rsa_sign_padding_to_scheme",
        "_secret_to_seed",
        "_symdef_to_crypt",
        "_verify_signature",
        "private_to_key",
        "public_to_key",
    }
)
#: Defined in ``_serialization`` and re-exported by ``serialization``: the names
#: tpm2_pytss.types uses when its classes are created.
SERIALIZATION_EAGER = frozenset(
    {
        "BestAvailableEncryption",
        "Encoding",
        "KeySerializationEncryption",
        "NoEncryption",
        "ParameterFormat",
        "PrivateFormat",
        "PublicFormat",
    }
)


#: What dataclasses uses of inspect: it calls ``inspect.signature`` for a class without a
#: docstring (tests/unit/test_deferred.py reads dataclasses.py to keep this exact).
INSPECT_FUNCTIONS = frozenset({"signature"})

#: The stand-ins: module → (names forwarded, names taken eagerly, from which module).
STANDINS: dict[str, tuple[frozenset[str], frozenset[str], str]] = {
    CRYPTO: (CRYPTO_FUNCTIONS, frozenset(), ""),
    SERIALIZATION: (frozenset(), SERIALIZATION_EAGER, SERIALIZATION_SOURCE),
    INSPECT: (INSPECT_FUNCTIONS, frozenset(), ""),
}
TPM2_PYTSS = (CRYPTO, SERIALIZATION)  # Tpm.open's import of tpm2_pytss
DATACLASSES = (INSPECT,)  # the boot entry's import of dataclasses


class DeferredModule(types.ModuleType):
    """Stands in for a module until one of its other names is used."""

    _hr_functions: frozenset[str]
    _hr_eager: frozenset[str]
    _hr_eager_from: str

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # __path__, __file__, ...: asked by the import system
            raise AttributeError(name)
        if name in self._hr_functions:
            return _forwarder(self, name)
        if name in self._hr_eager:
            return getattr(importlib.import_module(self._hr_eager_from), name)
        return getattr(load(self), name)


def _forwarder(mod: DeferredModule, name: str) -> Callable[..., Any]:
    def forward(*args: Any, **kwargs: Any) -> Any:
        return getattr(load(mod), name)(*args, **kwargs)

    forward.__name__ = forward.__qualname__ = name
    forward.__module__ = mod.__name__
    return forward


def load(mod: DeferredModule) -> types.ModuleType:
    """The real module behind ``mod``: imported the ordinary way on first use. A use
    while :func:`importing` still runs (tpm2-pytss calling one of the functions as it
    loads, or another thread) first takes the stand-in out, so that it is not returned
    again; the finder leaves that name alone from then on."""
    name = mod.__name__
    if sys.modules.get(name) is mod:
        _released.add(name)
        _forget(name, mod)
    return importlib.import_module(name)


def _forget(name: str, mod: types.ModuleType) -> None:
    """Take the stand-in ``mod`` out of ``sys.modules`` and off its parent package."""
    if sys.modules.get(name) is mod:
        del sys.modules[name]
    parent, _, child = name.rpartition(".")
    package = sys.modules.get(parent)
    if package is not None and vars(package).get(child) is mod:
        delattr(package, child)


class _Loader:
    def __init__(self, functions: frozenset[str], eager: frozenset[str], eager_from: str) -> None:
        self.functions, self.eager, self.eager_from = functions, eager, eager_from

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return DeferredModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        vars(module).update(
            _hr_functions=self.functions, _hr_eager=self.eager, _hr_eager_from=self.eager_from
        )


class _Finder:
    """On ``sys.meta_path`` while :func:`importing` runs; finds the chosen modules only."""

    def __init__(self, names: Iterable[str]) -> None:
        self.table = {name: STANDINS[name] for name in names}
        self.created: list[str] = []

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        entry = self.table.get(fullname)
        if entry is None or fullname in _released:
            return None
        if importlib.machinery.PathFinder.find_spec(fullname, path) is None:
            return None
        self.created.append(fullname)
        return importlib.machinery.ModuleSpec(fullname, _Loader(*entry))  # type: ignore[arg-type]


_deferred: set[str] = set()  # stood in for by importing() and taken out afterwards
_released: set[str] = set()  # used before importing() ended: not stood in for again


@contextlib.contextmanager
def importing(names: Iterable[str] = TPM2_PYTSS) -> Iterator[None]:
    """Imports inside the block create the modules ``names`` (keys of :data:`STANDINS`)
    deferred, if not loaded yet; afterwards none of them is in ``sys.modules`` until its
    first use imports it."""
    finder = _Finder(names)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in finder.created:
            mod = sys.modules.get(name)
            if isinstance(mod, DeferredModule):
                _forget(name, mod)
                _deferred.add(name)


def pending() -> list[str]:
    """The modules deferred by :func:`importing` and not imported since."""
    return sorted(name for name in _deferred if name not in sys.modules)
