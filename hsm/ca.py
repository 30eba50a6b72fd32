"""The fleet CA: a self-signed CA certificate and end-entity certificates, signed by any Signer.

In a fleet the CA's Signer is a Pkcs11Signer on its own token (label CA_TOKEN_LABEL), so the CA
key never leaves it; hsm.certstore drives that for SoftHSM rigs. FleetCA itself does no I/O and
is deterministic: serial numbers and validity times (ms since the epoch, floored to the second)
come from the caller, and ECDSA signatures are written low-S.

    CA certificate     subject = issuer = O=<organization>, CN=<name>; basicConstraints
                       CA:TRUE pathlen:0 (critical); keyUsage keyCertSign, cRLSign (critical);
                       subjectKeyIdentifier; authorityKeyIdentifier (= its own SKI)
    end-entity         subject O=<organization>, CN=<id from the CSR>; basicConstraints CA:FALSE
                       (critical); keyUsage digitalSignature (critical); extendedKeyUsage
                       <role OID> + clientAuth (role encoding: hsm.x509); SKI; AKI = CA's SKI
    broker             as end-entity, but extendedKeyUsage <broker OID> + serverAuth, and a
                       subjectAltName with the DNS names / IP addresses clients connect to

Only the CN and the public key are taken from a CSR; everything else is the CA's decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NoReturn

from asn1crypto import csr as acsr
from asn1crypto import x509 as ax
from cryptography import x509
from cryptography.x509.oid import NameOID

from hsm.certcheck import load_ca_anchor
from hsm.errors import BadPublicKey, CaCertificateInvalid, CsrRejected
from hsm.signer import Signer
from hsm.verify import load_public_key, verify_es256
from hsm.x509 import (
    DEFAULT_ORGANIZATION,
    ES256_ALGORITHM_DER,
    SUBJECT_ID_RE,
    build_certificate,
    build_name,
    check_alt_names,
    check_role,
    der_to_raw_signature,
    end_entity_extensions,
    ext_authority_key_id,
    ext_basic_constraints,
    ext_key_usage,
    ext_subject_key_id,
    key_identifier,
)

CA_TOKEN_LABEL: Final = "fleet-ca"


@dataclass(frozen=True)
class CsrInfo:
    """A CSR whose self-signature verified: the subject id and its P-256 SPKI (DER)."""

    subject_id: str
    spki_der: bytes


def _refuse(reason: str, message: str) -> NoReturn:
    raise CsrRejected(reason, message)


def check_csr(csr_der: bytes) -> CsrInfo:
    """Parse a PKCS#10 CSR and verify its ES256 self-signature; CsrRejected with a reason if not."""
    try:
        csr = x509.load_der_x509_csr(bytes(csr_der))
        raw = acsr.CertificationRequest.load(bytes(csr_der))
        algorithm = raw["signature_algorithm"].dump()
        spki_der: bytes = raw["certification_request_info"]["subject_pk_info"].dump()
        common_names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        tbs = csr.tbs_certrequest_bytes
        signature = csr.signature
    except Exception as exc:  # any parser complaint is a malformed request
        _refuse("csr_malformed", f"not a DER PKCS#10 request ({type(exc).__name__}: {exc})")
    if algorithm != ES256_ALGORITHM_DER:
        _refuse("csr_bad_algorithm", "CSR signature algorithm is not ecdsa-with-SHA256")
    try:
        load_public_key(spki_der)
    except BadPublicKey as exc:
        _refuse("csr_bad_algorithm", f"CSR key: {exc}")
    try:
        raw_sig = der_to_raw_signature(signature)
    except ValueError as exc:
        _refuse("csr_signature", f"CSR signature is not a valid ECDSA-Sig-Value ({exc})")
    if not verify_es256(spki_der, tbs, raw_sig):
        _refuse("csr_signature", "the CSR's signature does not verify with its own key")
    if len(common_names) != 1 or not isinstance(common_names[0].value, str):
        _refuse("csr_malformed", "CSR subject must hold exactly one common name")
    subject_id = common_names[0].value
    if not SUBJECT_ID_RE.fullmatch(subject_id):
        _refuse("csr_malformed", f"CSR subject CN {subject_id!r} is not a valid id")
    return CsrInfo(subject_id, spki_der)


@dataclass(frozen=True)
class FleetCA:
    """Issues the fleet's certificates. `organization` goes into every subject's O."""

    organization: str = DEFAULT_ORGANIZATION

    def create_ca_certificate(
        self, ca_signer: Signer, name: str, not_before: int, not_after: int, serial: int = 1
    ) -> bytes:
        """A self-signed CA certificate (DER) for `ca_signer`'s key; times in ms since the epoch.

        Re-creating it later with the same key and name (e.g. to extend its validity) keeps
        every certificate it issued valid: issuer, AKI and signature key are unchanged.
        """
        if not name or len(name) > 64:
            raise ValueError("the CA name must be 1-64 characters")
        spki = ca_signer.public_key_der()
        load_public_key(spki)  # BadPublicKey unless P-256
        subject = build_name(name, self.organization)
        return build_certificate(
            ca_signer,
            serial=serial,
            issuer=subject,
            subject=subject,
            spki_der=spki,
            not_before_ms=not_before,
            not_after_ms=not_after,
            extensions=[
                ext_basic_constraints(ca=True, path_len=0),
                ext_key_usage({"key_cert_sign", "crl_sign"}),
                ext_subject_key_id(key_identifier(spki)),
                ext_authority_key_id(key_identifier(spki)),
            ],
        )

    def issue(
        self,
        ca_signer: Signer,
        ca_cert_der: bytes,
        csr_der: bytes,
        role: str,
        not_before: int,
        not_after: int,
        serial: int,
        *,
        expected_id: str | None = None,
        expected_spki: bytes | None = None,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> bytes:
        """An end-entity certificate (DER) for the key and CN of `csr_der`, signed by the CA.

        Checks first that the CSR's own signature verifies (CsrRejected otherwise), and, when
        given, that its CN is `expected_id` and its key `expected_spki`. Requires `ca_signer`
        to hold the key of `ca_cert_der` (CaCertificateInvalid), role in ROLES and
        not_before <= not_after within the CA certificate's validity (ValueError).
        `dns_names` / `ip_addresses` (the subjectAltName) are required for the broker role and
        refused for the others (ValueError; hsm.x509.check_alt_names).
        """
        request = check_csr(csr_der)
        if expected_id is not None and request.subject_id != expected_id:
            _refuse("csr_wrong_id", f"CSR is for {request.subject_id!r}, not {expected_id!r}")
        if expected_spki is not None and request.spki_der != bytes(expected_spki):
            _refuse("csr_wrong_key", "CSR key is not the expected key")
        checked_role = check_role(role)
        check_alt_names(checked_role, dns_names, ip_addresses)
        anchor = load_ca_anchor(bytes(ca_cert_der))
        if ca_signer.public_key_der() != anchor.spki_der:
            raise CaCertificateInvalid(
                "the CA signer's key is not the key of the CA certificate; "
                "use the fleet-ca token that made it (or run ca-init again)"
            )
        start, end = not_before // 1000 * 1000, not_after // 1000 * 1000
        if not anchor.not_before_ms <= start <= end <= anchor.not_after_ms:
            raise ValueError(
                "the validity period must lie within the CA certificate's "
                f"({anchor.not_before_ms} .. {anchor.not_after_ms} ms) and start before it ends"
            )
        issuer = ax.Certificate.load(bytes(ca_cert_der))["tbs_certificate"]["subject"]
        return build_certificate(
            ca_signer,
            serial=serial,
            issuer=issuer,
            subject=build_name(request.subject_id, self.organization),
            spki_der=request.spki_der,
            not_before_ms=not_before,
            not_after_ms=not_after,
            extensions=end_entity_extensions(
                checked_role,
                request.spki_der,
                anchor.key_id,
                dns_names=dns_names,
                ip_addresses=ip_addresses,
            ),
        )
