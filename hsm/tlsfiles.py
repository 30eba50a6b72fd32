"""TLS identities in files, for MQTT over TLS: a P-256 key (mode 0600) and a fleet-CA certificate.

Why a second key: a device's or node's SIGNING key lives in its HSM token and signs readings
and block heads; it never leaves the token. Python's ssl module (and Mosquitto's OpenSSL)
take a TLS private key only from a file, not from a PKCS#11 token. So each MQTT client has a
separate TLS key in a file next to its data, with a certificate from the same fleet CA for
the same id (role device or node: their certificates carry id-kp-clientAuth). The TLS key
only opens the broker connection; it cannot sign readings the ledger accepts, because the
ledger checks every reading against the certificate enrolled for that device (its token key).
The broker's server certificate has role broker (serverAuth) and names the hosts clients
connect to in its subjectAltName.

    DIR/ID.key    PEM PKCS#8 P-256 private key, mode 0600 (made here; never sent anywhere)
    DIR/ID.pem    PEM certificate for it: CN = ID, the role asked for, from RIG's fleet CA
    RIG/ca.pem    the fleet CA certificate: every client's and the broker's trust anchor

`ensure_tls_files` is idempotent: it keeps a key that loads, and keeps a certificate that
passes hsm.certcheck now for that key, id and role (and, for a broker, names the same hosts)
and is not in its renewal window (hsm.certstore's policy); otherwise it makes a new key
(only if the old one is missing or unreadable) and/or asks the fleet CA for a new
certificate. Certificates are issued in a `python -m hsm._cachild issue-csr` child that
signs with the rig's fleet-ca token, under the rig's certificate lock (hsm.certstore).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hsm.certcheck import check_certificate, load_ca_anchor
from hsm.certstore import (
    BACKDATE_MS,
    DAY_MS,
    DEFAULT_CA_DAYS,
    DEFAULT_CA_NAME,
    DEFAULT_CERT_DAYS,
    _child,
    _ensure_ca_locked,
    _locked,
    _now,
    _renewal_due,
    _serial,
    _write_atomic,
    ca_certificate_path,
)
from hsm.errors import CertificateRejected
from hsm.rig import SoftHsmRig
from hsm.signer import SoftwareSigner
from hsm.x509 import (
    DEFAULT_ORGANIZATION,
    Role,
    check_alt_names,
    check_role,
    check_subject_id,
    der_to_pem,
    make_csr,
    pem_or_der_to_der,
)

BROKER_ID: Final = "mqtt-broker"
LOOPBACK_DNS: Final = ("localhost",)
LOOPBACK_IPS: Final = ("127.0.0.1",)
KEY_MODE: Final = 0o600


@dataclass(frozen=True)
class TlsIdentity:
    """What to make: a key and certificate for `subject_id` with `role`, in `directory`."""

    subject_id: str
    role: Role
    directory: Path
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()

    @property
    def key_path(self) -> Path:
        return self.directory / f"{self.subject_id}.key"

    @property
    def cert_path(self) -> Path:
        return self.directory / f"{self.subject_id}.pem"


@dataclass(frozen=True)
class TlsFiles:
    """The three files a TLS endpoint needs: trust anchor, own certificate, own key."""

    ca: Path
    cert: Path
    key: Path


def broker_identity(
    directory: Path,
    *,
    subject_id: str = BROKER_ID,
    dns_names: Sequence[str] = LOOPBACK_DNS,
    ip_addresses: Sequence[str] = LOOPBACK_IPS,
) -> TlsIdentity:
    """The broker's server identity; by default for a loopback broker (localhost, 127.0.0.1)."""
    return TlsIdentity(subject_id, "broker", directory, tuple(dns_names), tuple(ip_addresses))


def ensure_tls_files(
    rig: SoftHsmRig,
    identities: Sequence[TlsIdentity],
    *,
    days: int = DEFAULT_CERT_DAYS,
    now_ms: int | None = None,
) -> dict[str, TlsFiles]:
    """Make sure every identity has a usable key and certificate (module docstring).

    Creates the fleet CA on the rig if it has none. Returns {subject_id: TlsFiles}; ValueError
    for an invalid id, role or host name, or an id given twice.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    wanted: dict[str, TlsIdentity] = {}
    for ident in identities:
        check_subject_id(ident.subject_id)
        dns, ips = check_alt_names(check_role(ident.role), ident.dns_names, ident.ip_addresses)
        if ident.subject_id in wanted:
            raise ValueError(f"TLS identity {ident.subject_id!r} given twice")
        wanted[ident.subject_id] = dataclasses.replace(ident, dns_names=dns, ip_addresses=ips)
    now = _now(now_ms)
    with _locked(rig):
        ca_der, _ = _ensure_ca_locked(rig, DEFAULT_CA_NAME, DEFAULT_CA_DAYS, now)
        signers = {name: _ensure_key(ident.key_path) for name, ident in wanted.items()}
        stale = [
            name
            for name, ident in wanted.items()
            if not _usable(ident, signers[name].public_key_der(), ca_der, now)
        ]
        if stale:
            ca_end = load_ca_anchor(ca_der).not_after_ms
            jobs = [
                {
                    "name": name,
                    "csr": make_csr(signers[name], name).hex(),
                    "subject_id": name,
                    "role": wanted[name].role,
                    "not_before_ms": now - BACKDATE_MS,
                    "not_after_ms": min(now + days * DAY_MS, ca_end),
                    "serial": _serial(),
                    "dns_names": list(wanted[name].dns_names),
                    "ip_addresses": list(wanted[name].ip_addresses),
                }
                for name in stale
            ]
            reply = _child(
                rig,
                "issue-csr",
                {"ca_cert": ca_der.hex(), "organization": DEFAULT_ORGANIZATION, "jobs": jobs},
            )
            for name, hex_der in reply["certs"].items():
                _write_atomic(wanted[name].cert_path, der_to_pem(bytes.fromhex(hex_der)).encode())
    ca = ca_certificate_path(rig)
    return {name: TlsFiles(ca, ident.cert_path, ident.key_path) for name, ident in wanted.items()}


def _ensure_key(path: Path) -> SoftwareSigner:
    """The P-256 key in `path` (made if missing or unreadable), its file mode forced to 0600."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            if stat.S_IMODE(path.stat().st_mode) != KEY_MODE:
                os.chmod(path, KEY_MODE)
            return SoftwareSigner(key)
    except (OSError, ValueError, TypeError):
        pass
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, KEY_MODE)
    try:
        os.fchmod(fd, KEY_MODE)  # O_CREAT's mode does not apply to an existing leftover
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    return SoftwareSigner(key)


def _usable(ident: TlsIdentity, spki_der: bytes, ca_der: bytes, now: int) -> bool:
    try:
        der = pem_or_der_to_der(ident.cert_path.read_bytes())
        info = check_certificate(
            der, ca_der, expected_id=ident.subject_id, expected_role=ident.role, at_ms=now
        )
    except (OSError, ValueError, CertificateRejected):
        return False
    if info.spki_der != spki_der or _renewal_due(info.not_before_ms, info.not_after_ms, now):
        return False
    return _alt_names(der) == (set(ident.dns_names), set(ident.ip_addresses))


def _alt_names(der: bytes) -> tuple[set[str], set[str]]:
    """(DNS names, IP addresses) of a certificate's subjectAltName; empty sets if it has none."""
    try:
        san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except x509.ExtensionNotFound:
        return set(), set()
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return dns, ips
