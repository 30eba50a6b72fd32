"""The fleet CA on a SoftHSM rig: its certificate, and certificates for the rig's tokens.

    RIG/ca.pem           the fleet CA certificate (PEM; public; give it to ledger nodes)
    RIG/certs/LABEL.der  the end-entity certificate of token LABEL (CN = LABEL), a cache
    RIG/certs/.lock      serialises CA and certificate changes across processes

The CA key is generated in the rig's token CA_TOKEN_LABEL ("fleet-ca"), sensitive and never
extractable. Every signature runs in a `python -m hsm._cachild` child with the rig's
SOFTHSM2_CONF (one SoftHSM config per process; see hsm.rig), so the caller never loads the
PKCS#11 module and may manage several rigs.

Policy: certificates start BACKDATE_MS before "now" (small clock differences between hosts),
serial numbers are 127-bit random, end-entity certificates end no later than the CA's, and a
certificate (the CA's included) is renewed when it is missing, unusable, for another key, or
in its renewal window: the last RENEW_BEFORE_MS (30 days), or the last third of its lifetime if
that is shorter. Renewing the CA certificate keeps its key and name, so certificates it issued
stay valid.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from hsm import errors
from hsm.ca import CA_TOKEN_LABEL
from hsm.certcheck import check_certificate, load_ca_anchor
from hsm.errors import CaCertificateInvalid, CertificateRejected, HsmError, TokenNotFound
from hsm.rig import SoftHsmRig
from hsm.x509 import DEFAULT_ORGANIZATION, check_role, check_subject_id, der_to_pem
from hsm.x509 import pem_or_der_to_der as _pem_or_der

DAY_MS: Final = 86_400_000
DEFAULT_CA_NAME: Final = "TrustFleet Fleet CA"
DEFAULT_CA_DAYS: Final = 3650
DEFAULT_CERT_DAYS: Final = 365
RENEW_BEFORE_MS: Final = 30 * DAY_MS
BACKDATE_MS: Final = 3_600_000
_PACKAGE_ROOT: Final = Path(__file__).resolve().parent.parent
_TIMEOUT_S: Final = 120.0


def ca_certificate_path(rig: SoftHsmRig) -> Path:
    return rig.directory / "ca.pem"


def certificate_path(rig: SoftHsmRig, label: str) -> Path:
    return rig.directory / "certs" / f"{check_subject_id(label)}.der"


def load_ca_certificate(rig: SoftHsmRig) -> bytes:
    """The rig's fleet CA certificate (DER); CaCertificateInvalid if ca-init never ran."""
    path = ca_certificate_path(rig)
    try:
        return _pem_or_der(path.read_bytes())
    except FileNotFoundError:
        raise CaCertificateInvalid(
            f"{path} does not exist; run `trustfleet hsm ca-init --dir {rig.directory}`"
        ) from None
    except ValueError as exc:
        raise CaCertificateInvalid(f"{path}: {exc}") from exc


def ensure_ca(
    rig: SoftHsmRig,
    *,
    name: str = DEFAULT_CA_NAME,
    days: int = DEFAULT_CA_DAYS,
    now_ms: int | None = None,
) -> tuple[bytes, bool]:
    """Make sure the rig has a fleet-ca token and a usable RIG/ca.pem; idempotent.

    Returns (CA certificate DER, whether a certificate was made now). An existing certificate
    for the token's key, valid now and not in its renewal window, is kept as it is (`name`
    and `days` apply only when one is made).
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    with _locked(rig):
        return _ensure_ca_locked(rig, name, days, _now(now_ms))


def issue_for_token(
    rig: SoftHsmRig,
    label: str,
    role: str,
    *,
    subject_id: str | None = None,
    days: int = DEFAULT_CERT_DAYS,
    now_ms: int | None = None,
) -> bytes:
    """A new certificate (DER) for token `label`'s key: a CSR signed in that token, issued by
    the fleet-ca token. Requires the CA (ensure_ca) and the token (with its key) to exist."""
    check_role(role)
    if days < 1:
        raise ValueError("days must be at least 1")
    subject = check_subject_id(subject_id or label)
    with _locked(rig):
        ca_der = load_ca_certificate(rig)
        return _issue_locked(rig, ca_der, {label: (role, subject)}, days, _now(now_ms))[label]


def ensure_certificates(
    rig: SoftHsmRig,
    labels: Mapping[str, str],
    *,
    days: int = DEFAULT_CERT_DAYS,
    now_ms: int | None = None,
) -> dict[str, bytes]:
    """Certificates for tokens `labels` (label -> role; CN = label), cached in RIG/certs/.

    Idempotent: creates the fleet CA (ensure_ca) and the tokens if missing, and issues a
    certificate only where the cached one is missing, fails check_certificate now, is for
    another key, or is in its renewal window (module docstring). Returns {label: DER}.
    """
    wanted = {check_subject_id(label): check_role(role) for label, role in labels.items()}
    if CA_TOKEN_LABEL in wanted:
        raise ValueError(f"{CA_TOKEN_LABEL!r} holds the CA key; it gets no end-entity certificate")
    now = _now(now_ms)
    with _locked(rig):
        ca_der, _ = _ensure_ca_locked(rig, DEFAULT_CA_NAME, DEFAULT_CA_DAYS, now)
        stale = [
            label for label, role in wanted.items() if not _usable(rig, label, role, ca_der, now)
        ]
        if stale:
            rig.ensure_tokens(stale)
            jobs = {label: (wanted[label], label) for label in stale}
            for label, der in _issue_locked(rig, ca_der, jobs, days, now).items():
                _write_atomic(certificate_path(rig, label), der)
        return {label: certificate_path(rig, label).read_bytes() for label in wanted}


# --- internals (every *_locked function requires _locked(rig) held) -----------------------


def _now(now_ms: int | None) -> int:
    return int(time.time() * 1000) if now_ms is None else now_ms


@contextlib.contextmanager
def _locked(rig: SoftHsmRig) -> Iterator[None]:
    folder = rig.directory / "certs"
    folder.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _ensure_ca_locked(rig: SoftHsmRig, name: str, days: int, now: int) -> tuple[bytes, bool]:
    path = ca_certificate_path(rig)
    cached_key = rig.pubkeys_dir / f"{CA_TOKEN_LABEL}.der"
    if path.exists() and cached_key.exists():
        with contextlib.suppress(CaCertificateInvalid):
            der = load_ca_certificate(rig)
            anchor = load_ca_anchor(der)
            if (
                anchor.spki_der == cached_key.read_bytes()
                and anchor.not_before_ms <= now
                and not _renewal_due(anchor.not_before_ms, anchor.not_after_ms, now)
            ):
                return der, False
    rig.ensure_token(CA_TOKEN_LABEL)
    reply = _child(
        rig,
        "ca-cert",
        {
            "name": name,
            "organization": DEFAULT_ORGANIZATION,
            "not_before_ms": now - BACKDATE_MS,
            "not_after_ms": now + days * DAY_MS,
            "serial": _serial(),
        },
    )
    der = bytes.fromhex(reply["cert"])
    _write_atomic(path, der_to_pem(der).encode())
    return der, True


def _usable(rig: SoftHsmRig, label: str, role: str, ca_der: bytes, now: int) -> bool:
    path = certificate_path(rig, label)
    if not path.exists():
        return False
    try:
        info = check_certificate(
            path.read_bytes(), ca_der, expected_id=label, expected_role=role, at_ms=now
        )
        current_key = rig.public_key_der(label)
        due = _renewal_due(info.not_before_ms, info.not_after_ms, now)
        return not due and info.spki_der == current_key
    except (CertificateRejected, TokenNotFound):
        return False


def _issue_locked(
    rig: SoftHsmRig, ca_der: bytes, jobs: Mapping[str, tuple[str, str]], days: int, now: int
) -> dict[str, bytes]:
    """Issue certificates for {label: (role, subject_id)} in one child; returns {label: DER}."""
    ca_end = load_ca_anchor(ca_der).not_after_ms
    start = now - BACKDATE_MS
    end = min(now + days * DAY_MS, ca_end)
    reply = _child(
        rig,
        "issue",
        {
            "ca_cert": ca_der.hex(),
            "organization": DEFAULT_ORGANIZATION,
            "jobs": [
                {
                    "label": label,
                    "subject_id": subject,
                    "role": role,
                    "not_before_ms": start,
                    "not_after_ms": end,
                    "serial": _serial(),
                }
                for label, (role, subject) in jobs.items()
            ],
        },
    )
    return {label: bytes.fromhex(hex_der) for label, hex_der in reply["certs"].items()}


def _renewal_due(not_before_ms: int, not_after_ms: int, now: int) -> bool:
    window = min(RENEW_BEFORE_MS, (not_after_ms - not_before_ms) // 3)
    return not_after_ms - now <= window


def _serial() -> int:
    return secrets.randbits(127) + 1


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _child(rig: SoftHsmRig, command: str, request: dict[str, Any]) -> dict[str, Any]:
    """Run one hsm._cachild command with the rig's SOFTHSM2_CONF; re-raise its typed error."""
    env = {**os.environ, **rig.env()}
    paths = [str(_PACKAGE_ROOT), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    proc = subprocess.run(
        [sys.executable, "-m", "hsm._cachild", command],
        input=json.dumps({"dir": str(rig.directory), "module": rig.module_path, **request}),
        capture_output=True,
        text=True,
        env=env,
        timeout=_TIMEOUT_S,
        check=False,
    )
    try:
        reply: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise HsmError(
            f"CA helper `{command}` failed (exit {proc.returncode}): {proc.stderr[-800:]}"
        ) from None
    if "error" not in reply:
        return reply
    name, message = reply["error"], reply["message"]
    if name == "ValueError":
        raise ValueError(message)
    cls = getattr(errors, name, HsmError)
    if not (isinstance(cls, type) and issubclass(cls, HsmError)):
        cls = HsmError
    if "reason" in reply and cls in (errors.CsrRejected, errors.CertificateRejected):
        raise cls(reply["reason"], message)
    raise cls(message)
