"""DER certificates and CSRs signed through the Signer protocol (in-memory keys; no HSM needed)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from asn1crypto import x509 as ax
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hsm import FleetCA, SoftwareSigner, check_certificate, make_csr, verify_es256
from hsm.errors import BadPublicKey, CaCertificateInvalid, CsrRejected
from hsm.verify import P256_ORDER
from hsm.x509 import (
    ROLE_ARC,
    ROLE_OIDS,
    der_to_pem,
    der_to_raw_signature,
    key_identifier,
    pem_or_der_to_der,
    raw_to_der_signature,
)

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY = 86_400_000
OPENSSL = shutil.which("openssl")


@pytest.fixture(scope="module")
def ca_signer() -> SoftwareSigner:
    return SoftwareSigner.generate()


@pytest.fixture(scope="module")
def ca_der(ca_signer: SoftwareSigner) -> bytes:
    return FleetCA().create_ca_certificate(ca_signer, "Demo Fleet CA", T0, T0 + 3650 * DAY)


@pytest.fixture(scope="module")
def device() -> SoftwareSigner:
    return SoftwareSigner.generate()


def _issue(ca_signer: SoftwareSigner, ca_der: bytes, device: SoftwareSigner, role: str) -> bytes:
    csr = make_csr(device, "truck-7")
    return FleetCA().issue(ca_signer, ca_der, csr, role, T0, T0 + 365 * DAY, 0x1234)


def test_csr_is_standard_der_with_cn_and_o_and_its_signature_verifies(
    device: SoftwareSigner,
) -> None:
    der = make_csr(device, "truck-7")
    csr = x509.load_der_x509_csr(der)
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "truck-7"
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "TrustFleet"
    assert csr.signature_algorithm_oid.dotted_string == "1.2.840.10045.4.3.2"
    raw = der_to_raw_signature(csr.signature)
    assert verify_es256(device.public_key_der(), csr.tbs_certrequest_bytes, raw)


@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command")
def test_openssl_accepts_the_csr_and_verifies_the_chain(
    ca_signer: SoftwareSigner, ca_der: bytes, device: SoftwareSigner, tmp_path: Path
) -> None:
    csr = tmp_path / "req.pem"
    csr.write_text(der_to_pem(make_csr(device, "truck-7"), "CERTIFICATE REQUEST"))
    out = subprocess.run(
        ["openssl", "req", "-verify", "-noout", "-in", str(csr)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    (tmp_path / "ca.pem").write_text(der_to_pem(ca_der))
    (tmp_path / "ee.pem").write_text(der_to_pem(_issue(ca_signer, ca_der, device, "node")))
    attime = str((T0 + DAY) // 1000)
    out = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-attime", attime, "-purpose", "sslclient",
         "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "ee.pem")],
        capture_output=True, text=True,
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr


def test_ca_certificate_has_ca_constraints_usage_and_key_identifier(
    ca_signer: SoftwareSigner, ca_der: bytes
) -> None:
    cert = x509.load_der_x509_certificate(ca_der)
    assert cert.issuer == cert.subject
    assert cert.subject.rfc4514_string() == "CN=Demo Fleet CA,O=TrustFleet"
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert ski == key_identifier(ca_signer.public_key_der())
    assert ski == hashlib.sha256(ca_signer.public_key_der()[-65:]).digest()[:20]  # RFC 7093
    assert cert.not_valid_before_utc.timestamp() * 1000 == T0


def test_end_entity_certificate_carries_role_oid_usage_and_key_ids(
    ca_signer: SoftwareSigner, ca_der: bytes, device: SoftwareSigner
) -> None:
    cert = x509.load_der_x509_certificate(_issue(ca_signer, ca_der, device, "operator"))
    exts = cert.extensions
    assert cert.serial_number == 0x1234
    assert cert.subject.rfc4514_string() == "CN=truck-7,O=TrustFleet"
    assert cert.issuer == x509.load_der_x509_certificate(ca_der).subject
    basic = exts.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and not basic.value.ca
    usage = exts.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    eku = [o.dotted_string for o in exts.get_extension_for_class(x509.ExtendedKeyUsage).value]
    assert eku == [f"{ROLE_ARC}.3", ExtendedKeyUsageOID.CLIENT_AUTH.dotted_string]
    assert ROLE_OIDS["operator"] == f"{ROLE_ARC}.3"
    aki = exts.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki == key_identifier(ca_signer.public_key_der())
    ski = exts.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert ski == key_identifier(device.public_key_der())


def test_certificate_times_are_floored_to_the_second_and_2050_uses_generalized_time(
    ca_signer: SoftwareSigner, device: SoftwareSigner
) -> None:
    start, end = T0 + 999, 2_524_608_000_000  # 2050-01-01T00:00:00Z
    ca = FleetCA().create_ca_certificate(ca_signer, "Long CA", start, end + 10 * DAY)
    cert = FleetCA().issue(ca_signer, ca, make_csr(device, "truck-7"), "device", T0 + 1999, end, 9)
    validity = ax.Certificate.load(cert)["tbs_certificate"]["validity"]
    assert validity["not_before"].name == "utc_time"
    assert validity["not_after"].name == "general_time"
    info = check_certificate(cert, ca, expected_id="truck-7", expected_role="device", at_ms=end)
    assert (info.not_before_ms, info.not_after_ms) == (T0 + 1000, end)


def test_same_inputs_give_the_same_tbs_and_signatures_are_low_s(
    ca_signer: SoftwareSigner, ca_der: bytes, device: SoftwareSigner
) -> None:
    certs = [x509.load_der_x509_certificate(_issue(ca_signer, ca_der, device, "device"))
             for _ in range(20)]
    assert len({c.tbs_certificate_bytes for c in certs}) == 1
    for cert in certs:
        s = int.from_bytes(der_to_raw_signature(cert.signature)[32:], "big")
        assert s <= P256_ORDER // 2


def test_raw_and_der_signatures_convert_both_ways_and_non_canonical_der_is_refused() -> None:
    raw = (5).to_bytes(32, "big") + (P256_ORDER - 7).to_bytes(32, "big")
    der = raw_to_der_signature(raw)
    assert der_to_raw_signature(der) == (5).to_bytes(32, "big") + (7).to_bytes(32, "big")
    padded = bytes.fromhex("3007020200050201" + "07")  # r with a needless 0x00 pad
    with pytest.raises(ValueError):
        der_to_raw_signature(padded)
    with pytest.raises(ValueError):
        der_to_raw_signature(encode_dss_signature(0, 7))
    with pytest.raises(ValueError):
        der_to_raw_signature(encode_dss_signature(P256_ORDER, 7))
    with pytest.raises(ValueError):
        raw_to_der_signature(raw[:63])


def test_pem_round_trip_and_plain_der_passes_through(ca_der: bytes) -> None:
    pem = der_to_pem(ca_der)
    assert pem.startswith("-----BEGIN CERTIFICATE-----\n")
    assert all(len(line) <= 64 for line in pem.splitlines())
    assert pem_or_der_to_der(pem.encode()) == ca_der
    assert pem_or_der_to_der(ca_der) == ca_der
    with pytest.raises(ValueError):
        pem_or_der_to_der(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n")


def test_issue_refuses_bad_ids_roles_times_and_a_signer_that_is_not_the_ca(
    ca_signer: SoftwareSigner, ca_der: bytes, device: SoftwareSigner
) -> None:
    ca = FleetCA()
    csr = make_csr(device, "truck-7")
    with pytest.raises(ValueError, match="id"):
        make_csr(device, "truck/7")
    with pytest.raises(ValueError, match="role"):
        ca.issue(ca_signer, ca_der, csr, "admin", T0, T0 + DAY, 1)
    with pytest.raises(ValueError, match="validity"):
        ca.issue(ca_signer, ca_der, csr, "device", T0 - DAY, T0 + DAY, 1)
    with pytest.raises(ValueError, match="validity"):
        ca.issue(ca_signer, ca_der, csr, "device", T0, T0 + 4000 * DAY, 1)
    with pytest.raises(ValueError, match="serial"):
        ca.issue(ca_signer, ca_der, csr, "device", T0, T0 + DAY, 0)
    with pytest.raises(CaCertificateInvalid, match="signer"):
        ca.issue(device, ca_der, csr, "device", T0, T0 + DAY, 1)
    with pytest.raises(CaCertificateInvalid):
        ca.issue(ca_signer, ca_der[:-3], csr, "device", T0, T0 + DAY, 1)
    with pytest.raises(CsrRejected) as wrong:
        ca.issue(ca_signer, ca_der, csr, "device", T0, T0 + DAY, 1, expected_id="truck-8")
    assert wrong.value.reason == "csr_wrong_id"
    with pytest.raises(CsrRejected) as other_key:
        ca.issue(ca_signer, ca_der, csr, "device", T0, T0 + DAY, 1,
                 expected_spki=ca_signer.public_key_der())
    assert other_key.value.reason == "csr_wrong_key"


class _P384Signer:
    """Looks like a Signer but holds a P-384 key: the CA must refuse it before signing."""

    def __init__(self) -> None:
        public = ec.generate_private_key(ec.SECP384R1()).public_key()
        self._spki = public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)

    def sign(self, message: bytes) -> bytes:
        raise AssertionError("must not be asked to sign")

    def public_key_der(self) -> bytes:
        return self._spki

    @property
    def kid(self) -> bytes:
        return hashlib.sha256(self._spki).digest()


def test_ca_and_csr_need_p256_signers() -> None:
    with pytest.raises(BadPublicKey):
        make_csr(_P384Signer(), "truck-7")
    with pytest.raises(BadPublicKey):
        FleetCA().create_ca_certificate(_P384Signer(), "CA", T0, T0 + DAY)
