"""TrustFleet's HSM boundary: ES256 signing inside PKCS#11 tokens, and verification.

    verify_es256, load_public_key, kid_for   pure verification helpers (hsm.verify)
    Signer, Pkcs11Signer, SoftwareSigner     signing (hsm.signer; read its concurrency rule)
    SoftHsmRig, TokenInfo, open_signer       SoftHSM2 test rigs (hsm.rig)
    errors                                   the HsmError tree (hsm.errors)
    make_csr, FleetCA                        CSRs and certificates signed by any Signer
                                             (hsm.x509: DER and the role OIDs; hsm.ca)
    check_certificate, CertInfo              pure certificate check for ledger nodes
                                             (hsm.certcheck)
    ensure_ca, ensure_certificates           the fleet CA on a rig (hsm.certstore)

A process works with ONE SoftHSM config: set SOFTHSM2_CONF before the first PKCS#11 use.
"""

from hsm import errors
from hsm.ca import CA_TOKEN_LABEL, FleetCA
from hsm.certcheck import CertInfo, check_certificate
from hsm.certstore import ensure_ca, ensure_certificates, issue_for_token, load_ca_certificate
from hsm.rig import SoftHsmRig, TokenInfo, open_signer, signer_from_settings
from hsm.signer import Pkcs11Signer, Signer, SoftwareSigner, pin_from_env_or_file
from hsm.verify import kid_for, load_public_key, verify_es256
from hsm.x509 import ROLES, Role, make_csr

__all__ = [
    "CA_TOKEN_LABEL",
    "ROLES",
    "CertInfo",
    "FleetCA",
    "Pkcs11Signer",
    "Role",
    "Signer",
    "SoftHsmRig",
    "SoftwareSigner",
    "TokenInfo",
    "check_certificate",
    "ensure_ca",
    "ensure_certificates",
    "errors",
    "issue_for_token",
    "kid_for",
    "load_ca_certificate",
    "load_public_key",
    "make_csr",
    "open_signer",
    "pin_from_env_or_file",
    "signer_from_settings",
    "verify_es256",
]
