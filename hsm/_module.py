"""Loading a PKCS#11 module: the only place `pkcs11.lib()` is called.

python-pkcs11 caches one `lib` per module path for the life of the process, and SoftHSM2
reads SOFTHSM2_CONF once, in C_Initialize. Re-initialising would switch the config, but
C_Finalize invalidates every open session of every signer in the process, so we never do
it: a process works with ONE SoftHSM config. We remember the SOFTHSM2_CONF that was in the
environment when each module was first loaded (`bound_config`) so that callers can refuse,
loudly, to use a second rig in the same process.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

import pkcs11
from pkcs11.exceptions import PKCS11Error

from hsm.errors import ModuleNotFound, translate

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Pkcs11Lib

_lock = threading.Lock()
_bound: dict[str, str] = {}  # module path -> SOFTHSM2_CONF at first load ("" if unset)


def load_module(path: str) -> Pkcs11Lib:
    """Load (once per process) and return the PKCS#11 module at `path`.

    Raises ModuleNotFound if the file is missing or not a PKCS#11 library, another HsmError
    if the module loads but fails to initialise (for SoftHSM: a bad SOFTHSM2_CONF).
    """
    if not os.path.isfile(path):
        raise ModuleNotFound(
            f"PKCS#11 module {path} does not exist; install it (`apt-get install softhsm2` "
            "for the test rig) or set TRUSTFLEET_PKCS11_MODULE to the module's path"
        )
    with _lock:
        try:
            lib = pkcs11.lib(path)
        except PKCS11Error as exc:
            if type(exc) is PKCS11Error and "loading" in str(exc):
                raise ModuleNotFound(
                    f"{path} is not a loadable PKCS#11 module ({exc}); point "
                    "TRUSTFLEET_PKCS11_MODULE at your vendor's .so"
                ) from exc
            conf = os.environ.get("SOFTHSM2_CONF", "<unset>")
            raise translate(
                exc, context=f"initialising {path} (for SoftHSM check SOFTHSM2_CONF={conf})"
            ) from exc
        _bound.setdefault(path, os.environ.get("SOFTHSM2_CONF", ""))
        return lib


def bound_config(path: str) -> str | None:
    """SOFTHSM2_CONF in effect when `path` was first loaded ("" if unset); None if not loaded."""
    with _lock:
        return _bound.get(path)
