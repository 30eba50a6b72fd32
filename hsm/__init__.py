"""TrustFleet's HSM boundary: ES256 signing inside PKCS#11 tokens, and verification.

    verify_es256, load_public_key, kid_for   pure verification helpers (hsm.verify)
    Signer, Pkcs11Signer, SoftwareSigner     signing (hsm.signer; read its concurrency rule)
    SoftHsmRig, TokenInfo, open_signer       SoftHSM2 test rigs (hsm.rig)
    errors                                   the HsmError tree (hsm.errors)

A process works with ONE SoftHSM config: set SOFTHSM2_CONF before the first PKCS#11 use.
"""

from hsm import errors
from hsm.rig import SoftHsmRig, TokenInfo, open_signer, signer_from_settings
from hsm.signer import Pkcs11Signer, Signer, SoftwareSigner, pin_from_env_or_file
from hsm.verify import kid_for, load_public_key, verify_es256

__all__ = [
    "Pkcs11Signer",
    "Signer",
    "SoftHsmRig",
    "SoftwareSigner",
    "TokenInfo",
    "errors",
    "kid_for",
    "load_public_key",
    "open_signer",
    "pin_from_env_or_file",
    "signer_from_settings",
    "verify_es256",
]
