"""Checking fleet certificates: pure functions over DER bytes, no PKCS#11 (ledger nodes use them).

`check_certificate(cert, ca_cert, expected_id=..., expected_role=..., at_ms=...)` returns a
CertInfo or raises CertificateRejected whose `reason` is one of hsm.errors.CERT_REASONS. It never
raises anything else for any bytes in `cert_der` (hostile input is data, not a crash); a bad
argument (unknown role) is a ValueError, an unusable fleet CA certificate CaCertificateInvalid.

Checks, in this order (the first failure is the reason):
    cert_malformed      strict DER X.509 v3 (cryptography's parser), serial in [1, 2**159-1],
                        TBS and outer signature algorithms identical, no unknown critical
                        extension, exactly one subject CN that is a valid id
    cert_bad_algorithm  signature algorithm ecdsa-with-SHA256 without parameters, subject key
                        a canonical P-256 SubjectPublicKeyInfo
    cert_chain          issuer == CA subject, authorityKeyIdentifier == CA subjectKeyIdentifier,
                        CA signature over the TBS verifies (hsm.verify_es256)
    cert_malformed      signature in low-S form (a high-S twin is a malleated copy)
    cert_not_yet_valid  at_ms < notBefore
    cert_expired        at_ms > notAfter (notAfter is inclusive, RFC 5280 §4.1.2.5)
    cert_chain          the CA certificate valid at at_ms
    cert_key_usage      basicConstraints present with CA:FALSE; keyUsage present, critical,
                        digitalSignature only
    cert_role           extendedKeyUsage holds exactly one TrustFleet role OID (hsm.x509), equal
                        to expected_role, and no purpose beyond that role's (clientAuth for
                        device, node and operator; serverAuth for broker)
    cert_wrong_device   subject CN == expected_id (when given)
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from asn1crypto import x509 as ax
from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID

from hsm.errors import BadPublicKey, CaCertificateInvalid, CertificateRejected
from hsm.verify import P256_ORDER, kid_for, load_public_key, verify_es256
from hsm.x509 import (
    ES256_ALGORITHM_DER,
    MAX_SERIAL,
    ROLE_BY_OID,
    ROLE_OIDS,
    ROLE_PURPOSE,
    ROLES,
    SERVER_AUTH_OID,
    SUBJECT_ID_RE,
    Role,
    check_role,
    der_to_raw_signature,
)

_KNOWN_EXTENSIONS: Final = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    }
)
# A certificate's extendedKeyUsage may hold its role OID and that role's standard purpose.
_ALLOWED_EKU: Final[Mapping[Role, frozenset[str]]] = {
    role: frozenset({ROLE_OIDS[role], ROLE_PURPOSE[role]}) for role in ROLES
}


@dataclass(frozen=True)
class CertInfo:
    """What a checked certificate says. kid = SHA-256 of the SPKI; fingerprint = SHA-256 of DER."""

    subject_id: str
    role: Role
    spki_der: bytes
    kid: bytes
    not_before_ms: int
    not_after_ms: int
    serial: int
    fingerprint: bytes


@dataclass(frozen=True)
class _Parsed:
    cert: x509.Certificate
    spki_der: bytes
    subject_id: str
    not_before_ms: int
    not_after_ms: int


@dataclass(frozen=True)
class CaAnchor:
    """The fleet CA certificate's facts a check needs (from load_ca_anchor)."""

    subject: x509.Name
    key_id: bytes
    spki_der: bytes
    not_before_ms: int
    not_after_ms: int


def _reject(reason: str, message: str) -> NoReturn:
    raise CertificateRejected(reason, message)


def _ms(when: dt.datetime) -> int:
    return calendar.timegm(when.utctimetuple()) * 1000


def _parse(cert_der: bytes, *, end_entity: bool = True) -> _Parsed:
    """Structural checks (cert_malformed, cert_bad_algorithm for the signature algorithm).

    `end_entity`: the CN must be a valid subject id (a CA's CN is a free-form name).
    """
    if not isinstance(cert_der, bytes | bytearray | memoryview):
        _reject("cert_malformed", f"certificate must be DER bytes, not {type(cert_der).__name__}")
    der = bytes(cert_der)
    try:
        cert = x509.load_der_x509_certificate(der)
        version = cert.version
        serial = cert.serial_number
        raw = ax.Certificate.load(der)
        outer_alg = raw["signature_algorithm"].dump()
        inner_alg = raw["tbs_certificate"]["signature"].dump()
        spki_der = raw["tbs_certificate"]["subject_public_key_info"].dump()
        sig_unused_bits = raw["signature_value"].contents[:1]
        extensions = list(cert.extensions)
        common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        not_before_ms = _ms(cert.not_valid_before_utc)
        not_after_ms = _ms(cert.not_valid_after_utc)
    except Exception as exc:  # any parser complaint (or warning turned error) is malformed
        _reject("cert_malformed", f"not a DER X.509 certificate ({type(exc).__name__}: {exc})")
    if version != x509.Version.v3:
        _reject("cert_malformed", f"certificate version {version.name}; v3 required")
    if sig_unused_bits != b"\x00":  # else one certificate has several encodings
        _reject("cert_malformed", "the signature BIT STRING must have 0 unused bits (DER)")
    if not 1 <= serial <= MAX_SERIAL:
        _reject("cert_malformed", "serial number must be positive and at most 20 octets")
    if outer_alg != inner_alg:
        _reject("cert_malformed", "TBS and certificate signature algorithms differ")
    if outer_alg != ES256_ALGORITHM_DER:
        name = cert.signature_algorithm_oid.dotted_string
        _reject("cert_bad_algorithm", f"signature algorithm {name}; only ES256 is accepted")
    for ext in extensions:
        if ext.critical and ext.oid not in _KNOWN_EXTENSIONS:
            _reject("cert_malformed", f"unknown critical extension {ext.oid.dotted_string}")
    if len(common_names) != 1 or not isinstance(common_names[0].value, str):
        _reject("cert_malformed", "subject must hold exactly one common name")
    subject_id = common_names[0].value
    if end_entity and not SUBJECT_ID_RE.fullmatch(subject_id):
        _reject("cert_malformed", f"subject CN {subject_id!r} is not a valid id")
    return _Parsed(cert, spki_der, subject_id, not_before_ms, not_after_ms)


@functools.lru_cache(maxsize=16)
def load_ca_anchor(ca_cert_der: bytes) -> CaAnchor:
    """Parse and self-check the fleet CA certificate (cached); CaCertificateInvalid if unusable.

    Requires: an ES256 self-signed v3 certificate on a P-256 key, basicConstraints CA:TRUE,
    keyUsage keyCertSign, and a subjectKeyIdentifier.
    """
    try:
        parsed = _parse(ca_cert_der, end_entity=False)
        cert = parsed.cert
        load_public_key(parsed.spki_der)
        raw_sig = der_to_raw_signature(cert.signature)
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        key_id = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except (CertificateRejected, BadPublicKey, ValueError, x509.ExtensionNotFound) as exc:
        raise CaCertificateInvalid(f"the fleet CA certificate is unusable: {exc}") from exc
    if not verify_es256(parsed.spki_der, cert.tbs_certificate_bytes, raw_sig):
        raise CaCertificateInvalid("the fleet CA certificate's self-signature does not verify")
    if cert.issuer != cert.subject or not basic.ca or not usage.key_cert_sign:
        raise CaCertificateInvalid(
            "the fleet CA certificate must be self-issued with CA:TRUE and keyCertSign"
        )
    return CaAnchor(cert.subject, key_id, parsed.spki_der, parsed.not_before_ms,
                   parsed.not_after_ms)


def check_certificate(
    cert_der: bytes,
    ca_cert_der: bytes,
    *,
    expected_id: str | None,
    expected_role: str,
    at_ms: int,
) -> CertInfo:
    """Check an end-entity certificate against the fleet CA at ledger time `at_ms` (ms).

    See the module docstring for the checks and their order. Raises CertificateRejected with
    its `reason`; ValueError for an unknown expected_role; CaCertificateInvalid for a bad CA.
    """
    role_wanted = check_role(expected_role)
    if not isinstance(ca_cert_der, bytes | bytearray | memoryview):
        raise CaCertificateInvalid("the fleet CA certificate must be DER bytes")
    anchor = load_ca_anchor(bytes(ca_cert_der))
    try:
        return _check(cert_der, anchor, expected_id, role_wanted, at_ms)
    except CertificateRejected:
        raise
    except Exception as exc:  # contract: hostile bytes never raise anything else
        raise CertificateRejected(
            "cert_malformed", f"unreadable certificate ({type(exc).__name__}: {exc})"
        ) from exc


def _check(
    cert_der: bytes, anchor: CaAnchor, expected_id: str | None, role_wanted: Role, at_ms: int
) -> CertInfo:
    parsed = _parse(cert_der)
    cert = parsed.cert
    exts = cert.extensions
    try:
        load_public_key(parsed.spki_der)
    except BadPublicKey as exc:
        _reject("cert_bad_algorithm", f"subject key: {exc}")
    if cert.issuer != anchor.subject:
        _reject("cert_chain", f"issuer {cert.issuer.rfc4514_string()!r} is not the fleet CA")
    try:
        aki = exts.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        aki = None
    if aki != anchor.key_id:
        _reject("cert_chain", "authorityKeyIdentifier does not name the fleet CA's key")
    try:
        raw_sig = der_to_raw_signature(cert.signature)
    except ValueError as exc:
        _reject("cert_chain", f"signature is not a valid ECDSA-Sig-Value ({exc})")
    if not verify_es256(anchor.spki_der, cert.tbs_certificate_bytes, raw_sig):
        _reject("cert_chain", "the fleet CA's signature does not verify")
    if int.from_bytes(raw_sig[32:], "big") > P256_ORDER // 2:
        _reject("cert_malformed", "signature not in low-S form (a malleated copy?)")
    if at_ms < parsed.not_before_ms:
        _reject("cert_not_yet_valid", f"valid from {parsed.not_before_ms} ms, checked at {at_ms}")
    if at_ms > parsed.not_after_ms:
        _reject("cert_expired", f"valid until {parsed.not_after_ms} ms, checked at {at_ms}")
    if not anchor.not_before_ms <= at_ms <= anchor.not_after_ms:
        _reject("cert_chain", f"the fleet CA certificate is not valid at {at_ms} ms")
    _check_usage(exts)
    role = _role(exts)
    if role != role_wanted:
        _reject("cert_role", f"certificate is for a {role}, expected a {role_wanted}")
    if expected_id is not None and parsed.subject_id != expected_id:
        _reject(
            "cert_wrong_device", f"certificate is for {parsed.subject_id!r}, not {expected_id!r}"
        )
    return CertInfo(
        subject_id=parsed.subject_id,
        role=role,
        spki_der=parsed.spki_der,
        kid=kid_for(parsed.spki_der),
        not_before_ms=parsed.not_before_ms,
        not_after_ms=parsed.not_after_ms,
        serial=cert.serial_number,
        fingerprint=hashlib.sha256(bytes(cert_der)).digest(),
    )


def _check_usage(exts: x509.Extensions) -> None:
    try:
        basic = exts.get_extension_for_class(x509.BasicConstraints).value
        usage = exts.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound as exc:
        _reject("cert_key_usage", f"missing extension ({exc})")
    if basic.ca:
        _reject("cert_key_usage", "basicConstraints CA:TRUE on an end-entity certificate")
    ku = usage.value
    others = (
        ku.content_commitment, ku.key_encipherment, ku.data_encipherment, ku.key_agreement,
        ku.key_cert_sign, ku.crl_sign,
    )
    if not usage.critical or not ku.digital_signature or any(others):
        _reject("cert_key_usage", "keyUsage must be critical and digitalSignature only")


def _role(exts: x509.Extensions) -> Role:
    try:
        eku = exts.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        _reject("cert_role", "no extendedKeyUsage, so no TrustFleet role")
    oids = [oid.dotted_string for oid in eku]
    roles = [ROLE_BY_OID[oid] for oid in oids if oid in ROLE_BY_OID]
    if len(roles) != 1:
        _reject("cert_role", f"certificate names {len(roles)} TrustFleet roles; exactly 1 needed")
    if any(oid not in _ALLOWED_EKU[roles[0]] for oid in oids):
        purpose = "serverAuth" if ROLE_PURPOSE[roles[0]] == SERVER_AUTH_OID else "clientAuth"
        _reject("cert_role", f"extendedKeyUsage allows purposes beyond its role and {purpose}")
    return roles[0]


def describe_certificate(cert_der: bytes) -> dict[str, Any]:
    """Fields of a certificate for display; checks NOTHING beyond parsing. Never trust it.

    Raises CertificateRejected("cert_malformed" / "cert_bad_algorithm") if it cannot be read.
    """
    try:
        parsed = _parse(cert_der, end_entity=False)
        cert = parsed.cert
        try:
            eku = [o.dotted_string for o in cert.extensions.get_extension_for_class(
                x509.ExtendedKeyUsage).value]
        except x509.ExtensionNotFound:
            eku = []
        return {
            "subject": cert.subject.rfc4514_string(),
            "subject_id": parsed.subject_id,
            "roles": [ROLE_BY_OID[o] for o in eku if o in ROLE_BY_OID],
            "issuer": cert.issuer.rfc4514_string(),
            "serial": cert.serial_number,
            "not_before_ms": parsed.not_before_ms,
            "not_after_ms": parsed.not_after_ms,
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "kid": kid_for(parsed.spki_der).hex(),
            "fingerprint": hashlib.sha256(bytes(cert_der)).hexdigest(),
            "is_ca": _is_ca(cert),
        }
    except CertificateRejected:
        raise
    except Exception as exc:
        raise CertificateRejected("cert_malformed", f"unreadable certificate ({exc})") from exc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False
