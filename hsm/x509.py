"""X.509 encoding for keys that never leave a token: DER certificates and CSRs signed by any Signer.

cryptography's CertificateBuilder wants a private key object, and ours lives in an HSM. So we
build the TBSCertificate (and a CSR's CertificationRequestInfo) with asn1crypto, hand its DER to
`Signer.sign` (ES256: ECDSA P-256 over SHA-256, raw r||s) and wrap the result as a DER
ECDSA-Sig-Value. Signatures are written in low-S form, so a certificate has one encoding and one
fingerprint (a high-S twin is refused by hsm.certcheck).

Role encoding (read by ledger nodes through hsm.certcheck; fixed):
    The role of an end-entity certificate is the ONE TrustFleet role OID in its
    extendedKeyUsage extension. The arc is 2.25.300662157249472328311360792306733035711, an
    ITU-T X.667 UUID OID (UUID e2316cd8-894d-403e-98d2-b11a580030bf), which needs no
    registration and cannot collide:
        ARC.1.1  device     signs readings (edge agent)
        ARC.1.2  node       signs block heads (ledger node)
        ARC.1.3  operator   signs administrative entries (enrol, revoke, rotate)
        ARC.1.4  broker     the MQTT broker's TLS server certificate (a key in a file)
    The extension also carries one standard purpose: id-kp-clientAuth (1.3.6.1.5.5.7.3.2) for
    device, node and operator, so the certificate can authenticate its holder to the MQTT
    broker; id-kp-serverAuth (1.3.6.1.5.5.7.3.1) for broker, whose certificate also carries a
    subjectAltName (the DNS names and IP addresses clients connect to; TLS clients check the
    server against it, never against the CN). The subject carries no role: CN = the id, O = the
    fleet organisation.

Times are ms since the Unix epoch (ledger time); X.509 stores whole seconds, so they are
floored to the second. UTCTime is used before 2050, GeneralizedTime from 2050 (RFC 5280).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, get_args

from asn1crypto import csr as acsr
from asn1crypto import keys as akeys
from asn1crypto import x509 as ax
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from hsm.signer import Signer
from hsm.verify import P256_ORDER, SIGNATURE_LEN, load_public_key

Role = Literal["device", "node", "operator", "broker"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)

ROLE_ARC: Final = "2.25.300662157249472328311360792306733035711.1"
ROLE_OIDS: Final[Mapping[Role, str]] = {
    "device": f"{ROLE_ARC}.1",
    "node": f"{ROLE_ARC}.2",
    "operator": f"{ROLE_ARC}.3",
    "broker": f"{ROLE_ARC}.4",
}
ROLE_BY_OID: Final[Mapping[str, Role]] = {oid: role for role, oid in ROLE_OIDS.items()}
CLIENT_AUTH_OID: Final = "1.3.6.1.5.5.7.3.2"
SERVER_AUTH_OID: Final = "1.3.6.1.5.5.7.3.1"
# The one standard extendedKeyUsage purpose each role's certificate carries beside its role OID.
ROLE_PURPOSE: Final[Mapping[Role, str]] = {
    "device": CLIENT_AUTH_OID,
    "node": CLIENT_AUTH_OID,
    "operator": CLIENT_AUTH_OID,
    "broker": SERVER_AUTH_OID,
}
# Roles whose certificates name the hosts they serve (subjectAltName): TLS servers.
SERVER_ROLES: Final[frozenset[Role]] = frozenset({"broker"})
ECDSA_WITH_SHA256_OID: Final = "1.2.840.10045.4.3.2"
# AlgorithmIdentifier { ecdsa-with-SHA256 } with parameters absent (RFC 5758 §3.2).
ES256_ALGORITHM_DER: Final = bytes.fromhex("300a06082a8648ce3d040302")
DEFAULT_ORGANIZATION: Final = "TrustFleet"

# Subject ids (device, node, operator): usable as an MQTT topic level and a PKCS#11 label.
SUBJECT_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")
_DNS_NAME_RE: Final = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
MAX_SERIAL: Final = (1 << 159) - 1  # positive and at most 20 octets (RFC 5280 §4.1.2.2)
_MIN_SECONDS: Final = -631152000  # 1950-01-01T00:00:00Z, earliest UTCTime
_MAX_SECONDS: Final = 253402300799  # 9999-12-31T23:59:59Z
_UTC_TIME_END: Final = 2524608000  # 2050-01-01T00:00:00Z


def check_subject_id(subject_id: str) -> str:
    """Return `subject_id` if it is a valid device/node/operator id, else raise ValueError."""
    if not isinstance(subject_id, str) or not SUBJECT_ID_RE.fullmatch(subject_id):
        raise ValueError(
            f"id {subject_id!r} must be 1-64 characters of letters, digits, '.', '_', ':', "
            "'@' or '-', starting with a letter or digit"
        )
    return subject_id


def check_role(role: str) -> Role:
    """Return `role` as a Role if it is one, else raise ValueError naming the roles."""
    for known in ROLES:
        if role == known:
            return known
    raise ValueError(f"role {role!r} must be one of {', '.join(ROLES)}")


# --- signatures ---------------------------------------------------------------------------


def raw_to_der_signature(raw: bytes) -> bytes:
    """Raw ES256 r||s (64 bytes) -> DER ECDSA-Sig-Value, with s made low (s <= n/2)."""
    if len(raw) != SIGNATURE_LEN:
        raise ValueError(f"expected a 64-byte r||s signature, got {len(raw)} bytes")
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
        raise ValueError("r and s must lie in [1, n-1]")
    if s > P256_ORDER // 2:
        s = P256_ORDER - s
    return encode_dss_signature(r, s)


def der_to_raw_signature(der: bytes) -> bytes:
    """Strict DER ECDSA-Sig-Value -> raw r||s.

    ValueError unless canonical DER with r and s in [1, n-1].
    """
    r, s = decode_dss_signature(bytes(der))
    if encode_dss_signature(r, s) != bytes(der):
        raise ValueError("ECDSA-Sig-Value is not in canonical DER")
    if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
        raise ValueError("ECDSA r or s out of range for P-256")
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _sign_der(signer: Signer, tbs_der: bytes) -> bytes:
    return raw_to_der_signature(signer.sign(tbs_der))


# --- names, times, key ids -----------------------------------------------------------------


def build_name(common_name: str, organization: str | None = DEFAULT_ORGANIZATION) -> Any:
    """An X.501 Name: O=organization (if given), CN=common_name, both UTF8String."""
    attrs = {"common_name": common_name}
    if organization:
        attrs["organization_name"] = organization
    return ax.Name.build(attrs)


def _time(ms: int) -> Any:
    seconds = ms // 1000
    if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
        raise ValueError(f"time {ms} ms is outside the X.509 range 1950-01-01 .. 9999-12-31")
    when = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return ax.Time({"utc_time" if seconds < _UTC_TIME_END else "general_time": when})


def key_identifier(spki_der: bytes) -> bytes:
    """Subject key identifier: leftmost 160 bits of SHA-256 of subjectPublicKey (RFC 7093 §2 1)."""
    bits = akeys.PublicKeyInfo.load(bytes(spki_der))["public_key"]
    return hashlib.sha256(bits.contents[1:]).digest()[:20]


# --- extensions ------------------------------------------------------------------------------


def ext_basic_constraints(*, ca: bool, path_len: int | None = None) -> Any:
    value: dict[str, Any] = {"ca": ca}
    if path_len is not None:
        value["path_len_constraint"] = path_len
    return ax.Extension({"extn_id": "basic_constraints", "critical": True, "extn_value": value})


def ext_key_usage(usages: Iterable[str], *, critical: bool = True) -> Any:
    """asn1crypto names: digital_signature, key_cert_sign, crl_sign, ..."""
    return ax.Extension({"extn_id": "key_usage", "critical": critical, "extn_value": set(usages)})


def ext_subject_key_id(key_id: bytes) -> Any:
    return ax.Extension({"extn_id": "key_identifier", "critical": False, "extn_value": key_id})


def ext_authority_key_id(key_id: bytes) -> Any:
    return ax.Extension(
        {
            "extn_id": "authority_key_identifier",
            "critical": False,
            "extn_value": {"key_identifier": key_id},
        }
    )


def ext_extended_key_usage(oids: Iterable[str]) -> Any:
    return ax.Extension(
        {"extn_id": "extended_key_usage", "critical": False, "extn_value": list(oids)}
    )


def ext_subject_alt_name(dns_names: Iterable[str], ip_addresses: Iterable[str]) -> Any:
    """subjectAltName with dNSName and iPAddress entries (non-critical: the subject has a CN)."""
    names = [ax.GeneralName(name="dns_name", value=name) for name in dns_names]
    names += [ax.GeneralName(name="ip_address", value=address) for address in ip_addresses]
    return ax.Extension(
        {"extn_id": "subject_alt_name", "critical": False, "extn_value": names}
    )


def check_alt_names(
    role: Role, dns_names: Iterable[str], ip_addresses: Iterable[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Validated (dns_names, ip_addresses) for a certificate of `role`; ValueError if wrong.

    A server role (broker) needs at least one name; the other roles take none."""
    dns = tuple(dns_names)
    ips = tuple(str(ipaddress.ip_address(address)) for address in ip_addresses)
    if role not in SERVER_ROLES:
        if dns or ips:
            raise ValueError(f"a {role} certificate names no hosts (subjectAltName)")
        return dns, ips
    if not dns and not ips:
        raise ValueError(f"a {role} certificate needs at least one DNS name or IP address")
    for name in dns:
        if not _DNS_NAME_RE.fullmatch(name):
            raise ValueError(f"{name!r} is not a DNS host name")
    return dns, ips


def end_entity_extensions(
    role: Role,
    spki_der: bytes,
    issuer_key_id: bytes,
    *,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
) -> list[Any]:
    """What FleetCA puts in every end-entity certificate (see the module docstring)."""
    dns, ips = check_alt_names(role, dns_names, ip_addresses)
    extensions = [
        ext_basic_constraints(ca=False),
        ext_key_usage({"digital_signature"}),
        ext_extended_key_usage([ROLE_OIDS[role], ROLE_PURPOSE[role]]),
        ext_subject_key_id(key_identifier(spki_der)),
        ext_authority_key_id(issuer_key_id),
    ]
    if dns or ips:
        extensions.append(ext_subject_alt_name(dns, ips))
    return extensions


# --- certificates and CSRs -------------------------------------------------------------------


def build_certificate(
    signer: Signer,
    *,
    serial: int,
    issuer: Any,
    subject: Any,
    spki_der: bytes,
    not_before_ms: int,
    not_after_ms: int,
    extensions: Iterable[Any],
) -> bytes:
    """A DER v3 certificate whose TBS `signer` signs with ES256. Low level: no policy checks.

    Requires 1 <= serial <= MAX_SERIAL and not_before_ms <= not_after_ms. `issuer`/`subject`
    are asn1crypto Names (build_name), `spki_der` any DER SubjectPublicKeyInfo. FleetCA adds the
    policy; tests use this directly to craft certificates the fleet must refuse.
    """
    if not isinstance(serial, int) or not 1 <= serial <= MAX_SERIAL:
        raise ValueError(f"serial must be an integer in [1, 2**159 - 1], got {serial!r}")
    if not_before_ms > not_after_ms:
        raise ValueError("not_before must not be after not_after")
    tbs = ax.TbsCertificate(
        {
            "version": "v3",
            "serial_number": serial,
            "signature": {"algorithm": "sha256_ecdsa"},
            "issuer": issuer,
            "validity": {"not_before": _time(not_before_ms), "not_after": _time(not_after_ms)},
            "subject": subject,
            "subject_public_key_info": akeys.PublicKeyInfo.load(bytes(spki_der)),
            "extensions": list(extensions),
        }
    )
    tbs_der = tbs.dump()
    cert = ax.Certificate(
        {
            "tbs_certificate": tbs,
            "signature_algorithm": {"algorithm": "sha256_ecdsa"},
            "signature_value": _sign_der(signer, tbs_der),
        }
    )
    der: bytes = cert.dump()
    return der


def make_csr(
    signer: Signer, device_id: str, *, organization: str = DEFAULT_ORGANIZATION
) -> bytes:
    """A DER PKCS#10 CSR for `signer`'s key, signed inside its token: CN=device_id, O=organization.

    The CA decides the role; the CSR only proves possession of the key and names the id.
    """
    check_subject_id(device_id)
    spki = signer.public_key_der()
    load_public_key(spki)  # BadPublicKey unless a canonical P-256 key
    info = acsr.CertificationRequestInfo(
        {
            "version": "v1",
            "subject": build_name(device_id, organization),
            "subject_pk_info": akeys.PublicKeyInfo.load(spki),
            "attributes": [],
        }
    )
    request = acsr.CertificationRequest(
        {
            "certification_request_info": info,
            "signature_algorithm": {"algorithm": "sha256_ecdsa"},
            "signature": _sign_der(signer, info.dump()),
        }
    )
    der: bytes = request.dump()
    return der


# --- PEM ----------------------------------------------------------------------------------------


def der_to_pem(der: bytes, label: str = "CERTIFICATE") -> str:
    """PEM text for DER bytes (64-character lines)."""
    b64 = base64.b64encode(der).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""])


def pem_or_der_to_der(data: bytes, label: str = "CERTIFICATE") -> bytes:
    """DER bytes from a file's contents: the first PEM block with `label`, or the bytes as-is."""
    begin, end = f"-----BEGIN {label}-----".encode(), f"-----END {label}-----".encode()
    start = data.find(begin)
    if start < 0:
        return bytes(data)
    stop = data.find(end, start)
    if stop < 0:
        raise ValueError(f"PEM block {label} has no END line")
    try:
        return base64.b64decode(b"".join(data[start + len(begin) : stop].split()), validate=True)
    except ValueError as exc:
        raise ValueError(f"PEM block {label} is not valid base64") from exc
