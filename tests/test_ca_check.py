"""check_certificate, the ledger's pure certificate check: every reason, with in-memory keys.

Each certificate the fleet must refuse is a twin of a good one with one thing wrong, signed by
the same CA key unless the point is the signature. The same checks against certificates made
inside real SoftHSM tokens are in test_ca_softhsm.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from asn1crypto import x509 as ax
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsm import CertInfo, FleetCA, SoftwareSigner, check_certificate, kid_for, make_csr
from hsm.ca import check_csr
from hsm.certcheck import describe_certificate
from hsm.errors import CERT_REASONS, CaCertificateInvalid, CertificateRejected, CsrRejected
from hsm.verify import P256_ORDER
from hsm.x509 import (
    ROLE_OIDS,
    build_certificate,
    build_name,
    der_to_raw_signature,
    end_entity_extensions,
    ext_authority_key_id,
    ext_basic_constraints,
    ext_extended_key_usage,
    ext_key_usage,
    ext_subject_key_id,
    key_identifier,
    raw_to_der_signature,
)

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY = 86_400_000
NB, NA = T0, T0 + 365 * DAY
INSIDE = T0 + 10 * DAY

CA_SIGNER = SoftwareSigner.generate()
CA_DER = FleetCA().create_ca_certificate(CA_SIGNER, "Demo Fleet CA", T0 - DAY, T0 + 3650 * DAY)
DEVICE = SoftwareSigner.generate()
GOOD_CSR = make_csr(DEVICE, "truck-1")
GOOD = FleetCA().issue(CA_SIGNER, CA_DER, GOOD_CSR, "device", NB, NA, 77)


def _check(cert: bytes, *, at_ms: int = INSIDE, expected_id: str | None = "truck-1",
           expected_role: str = "device", ca: bytes = CA_DER) -> CertInfo:
    return check_certificate(cert, ca, expected_id=expected_id, expected_role=expected_role,
                             at_ms=at_ms)


def _reason(cert: bytes, **kwargs: Any) -> str:
    with pytest.raises(CertificateRejected) as caught:
        _check(cert, **kwargs)
    assert caught.value.reason in CERT_REASONS
    return caught.value.reason


def _craft(*, signer: SoftwareSigner = CA_SIGNER, spki: bytes | None = None,
           issuer: Any = None, extensions: list[Any] | None = None, cn: str = "truck-1",
           serial: int = 78) -> bytes:
    """A certificate like GOOD with the given parts replaced (no FleetCA policy applied)."""
    spki = DEVICE.public_key_der() if spki is None else spki
    ca_name = ax.Certificate.load(CA_DER)["tbs_certificate"]["subject"]
    ca_kid = key_identifier(CA_SIGNER.public_key_der())
    return build_certificate(
        signer, serial=serial, issuer=ca_name if issuer is None else issuer,
        subject=build_name(cn), spki_der=spki, not_before_ms=NB, not_after_ms=NA,
        extensions=end_entity_extensions("device", spki, ca_kid) if extensions is None
        else extensions,
    )


def _exts(*, basic: Any = None, usage: Any = None, eku: Any = None, aki: bool = True) -> list[Any]:
    spki = DEVICE.public_key_der()
    exts = [
        basic or ext_basic_constraints(ca=False),
        usage or ext_key_usage({"digital_signature"}),
        eku or ext_extended_key_usage([ROLE_OIDS["device"]]),
        ext_subject_key_id(key_identifier(spki)),
    ]
    if aki:
        exts.append(ext_authority_key_id(key_identifier(CA_SIGNER.public_key_der())))
    return exts


def _resign(cert: bytes, edit: Callable[[Any], None], signer: SoftwareSigner = CA_SIGNER) -> bytes:
    """Re-sign `cert` after `edit` changes its asn1crypto Certificate in place."""
    parsed = ax.Certificate.load(cert)
    edit(parsed)
    tbs = parsed["tbs_certificate"]
    tbs_der = tbs.dump(force=True)
    parsed["signature_value"] = raw_to_der_signature(signer.sign(tbs_der))
    out: bytes = parsed.dump(force=True)
    return out


def test_good_certificate_is_accepted_with_all_its_facts() -> None:
    info = _check(GOOD)
    assert info.subject_id == "truck-1" and info.role == "device" and info.serial == 77
    assert info.spki_der == DEVICE.public_key_der()
    assert info.kid == DEVICE.kid == kid_for(DEVICE.public_key_der())
    assert (info.not_before_ms, info.not_after_ms) == (NB, NA)
    assert info.fingerprint == x509.load_der_x509_certificate(GOOD).fingerprint(hashes.SHA256())
    assert _check(GOOD, expected_id=None) == info
    with pytest.raises(AttributeError):
        info.role = "node"  # type: ignore[misc]


def test_validity_bounds_are_inclusive_to_the_millisecond() -> None:
    assert _check(GOOD, at_ms=NB).subject_id == "truck-1"
    assert _check(GOOD, at_ms=NA).subject_id == "truck-1"
    assert _reason(GOOD, at_ms=NB - 1) == "cert_not_yet_valid"
    assert _reason(GOOD, at_ms=NA + 1) == "cert_expired"


def test_wrong_role_and_wrong_device_id_are_refused() -> None:
    assert _reason(GOOD, expected_role="node") == "cert_role"
    assert _reason(GOOD, expected_role="operator") == "cert_role"
    assert _reason(GOOD, expected_id="truck-2") == "cert_wrong_device"
    with pytest.raises(ValueError, match="role"):
        _check(GOOD, expected_role="admin")


def test_certificate_from_another_ca_with_the_same_name_is_refused() -> None:
    other = SoftwareSigner.generate()
    other_ca = FleetCA().create_ca_certificate(other, "Demo Fleet CA", T0 - DAY, T0 + 3650 * DAY)
    cert = FleetCA().issue(other, other_ca, make_csr(DEVICE, "truck-1"), "device", NB, NA, 77)
    assert _reason(cert) == "cert_chain"  # AKI names the other key
    assert _reason(_craft(signer=other)) == "cert_chain"  # our AKI, but their signature
    assert _check(cert, ca=other_ca).subject_id == "truck-1"


def test_wrong_issuer_name_or_missing_aki_is_a_broken_chain() -> None:
    assert _reason(_craft(issuer=build_name("Some Other CA"))) == "cert_chain"
    assert _reason(_craft(extensions=_exts(aki=False))) == "cert_chain"


def test_ca_certificate_outside_its_validity_breaks_the_chain() -> None:
    short_ca = FleetCA().create_ca_certificate(CA_SIGNER, "Demo Fleet CA", T0 - DAY, T0 + DAY)
    assert _check(GOOD, ca=short_ca, at_ms=T0).serial == 77
    assert _reason(GOOD, ca=short_ca, at_ms=T0 + 2 * DAY) == "cert_chain"


@pytest.mark.parametrize("bit", [0, 9, 200, 300, 511])
def test_flipped_bit_in_the_signature_value_is_refused(bit: int) -> None:
    raw = bytearray(der_to_raw_signature(x509.load_der_x509_certificate(GOOD).signature))
    raw[bit // 8] ^= 1 << (bit % 8)
    parsed = ax.Certificate.load(GOOD)
    try:
        parsed["signature_value"] = raw_to_der_signature(bytes(raw))
    except ValueError:
        pytest.skip("flip left r or s out of range")
    assert _reason(parsed.dump(force=True)) == "cert_chain"


def test_flipped_bit_in_the_signed_part_or_the_encoding_is_refused() -> None:
    cert = x509.load_der_x509_certificate(GOOD)
    start = GOOD.index(cert.tbs_certificate_bytes)
    for offset in (start + 20, start + len(cert.tbs_certificate_bytes) - 5, len(GOOD) - 1):
        flipped = bytearray(GOOD)
        flipped[offset] ^= 0x01
        assert _reason(bytes(flipped)) in {"cert_chain", "cert_malformed"}


def test_high_s_twin_of_a_good_certificate_is_refused_as_malleated() -> None:
    raw = der_to_raw_signature(x509.load_der_x509_certificate(GOOD).signature)
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    parsed = ax.Certificate.load(GOOD)
    parsed["signature_value"] = encode_dss_signature(r, P256_ORDER - s)
    assert _reason(parsed.dump(force=True)) == "cert_malformed"


def test_end_entity_with_ca_true_or_cert_sign_usage_is_refused() -> None:
    assert _reason(_craft(extensions=_exts(basic=ext_basic_constraints(ca=True)))) == (
        "cert_key_usage"
    )
    cert_sign = ext_key_usage({"digital_signature", "key_cert_sign"})
    assert _reason(_craft(extensions=_exts(usage=cert_sign))) == "cert_key_usage"
    assert _reason(_craft(extensions=_exts(usage=ext_key_usage({"key_agreement"})))) == (
        "cert_key_usage"
    )
    not_critical = ext_key_usage({"digital_signature"}, critical=False)
    assert _reason(_craft(extensions=_exts(usage=not_critical))) == "cert_key_usage"
    # The CA certificate itself is no end entity (its CN is not even a device id).
    assert _reason(CA_DER, expected_id=None) == "cert_malformed"
    ca_named_like_a_device = FleetCA().create_ca_certificate(CA_SIGNER, "truck-1", NB, NA)
    assert _reason(ca_named_like_a_device, ca=ca_named_like_a_device) == "cert_key_usage"


def test_roles_must_be_exactly_one_trustfleet_oid_and_no_broader_purpose() -> None:
    two = ext_extended_key_usage([ROLE_OIDS["device"], ROLE_OIDS["operator"]])
    assert _reason(_craft(extensions=_exts(eku=two))) == "cert_role"
    none = ext_extended_key_usage(["1.3.6.1.5.5.7.3.2"])
    assert _reason(_craft(extensions=_exts(eku=none))) == "cert_role"
    anything = ext_extended_key_usage([ROLE_OIDS["device"], "2.5.29.37.0"])
    assert _reason(_craft(extensions=_exts(eku=anything))) == "cert_role"
    assert _check(_craft(extensions=_exts())).role == "device"  # clientAuth is optional


def test_p256_signed_certificate_for_a_p384_or_rsa_key_is_a_bad_algorithm() -> None:
    for key in (ec.generate_private_key(ec.SECP384R1()),
                rsa.generate_private_key(public_exponent=65537, key_size=2048)):
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert _reason(_craft(spki=spki)) == "cert_bad_algorithm"


def _foreign(key: Any, algorithm: Any) -> bytes:
    """A certificate made by cryptography's own builder, as another CA would make it."""
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "truck-1")])
    start = dt.datetime.fromtimestamp(NB / 1000, dt.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(
            x509.load_der_x509_certificate(CA_DER).subject
        ).public_key(key.public_key()).serial_number(5).not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=30))
    )
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)


def test_rsa_and_p384_certificates_are_a_bad_algorithm() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p384 = ec.generate_private_key(ec.SECP384R1())
    assert _reason(_foreign(rsa_key, hashes.SHA256())) == "cert_bad_algorithm"
    assert _reason(_foreign(p384, hashes.SHA384())) == "cert_bad_algorithm"
    assert _reason(_foreign(p384, hashes.SHA256())) == "cert_bad_algorithm"  # ES256 label, P-384


def test_tbs_algorithm_differing_from_the_outer_one_is_malformed() -> None:
    def relabel(parsed: Any) -> None:
        parsed["tbs_certificate"]["signature"] = {"algorithm": "sha384_ecdsa"}

    assert _reason(_resign(GOOD, relabel)) == "cert_malformed"


def test_unknown_critical_extension_and_bad_subject_are_malformed() -> None:
    odd = ax.Extension({"extn_id": "1.2.3.4.5", "critical": True, "extn_value": b"\x05\x00"})
    assert _reason(_craft(extensions=[*_exts(), odd])) == "cert_malformed"
    assert _reason(_craft(cn="truck 1")) == "cert_malformed"
    assert _reason(_craft(cn="truck-1/up")) == "cert_malformed"


def test_truncated_garbage_and_trailing_bytes_are_malformed() -> None:
    for bad in (b"", b"\x30", GOOD[:-1], GOOD[: len(GOOD) // 2], GOOD + b"\x00",
                b"\x00" * 300, b"-----BEGIN CERTIFICATE-----", make_csr(DEVICE, "truck-1")):
        assert _reason(bad) == "cert_malformed"
    assert _reason("not bytes") == "cert_malformed"  # type: ignore[arg-type]


def test_an_unusable_ca_certificate_is_its_own_error_not_a_rejection() -> None:
    for bad_ca in (b"", GOOD, CA_DER[:-2]):
        with pytest.raises(CaCertificateInvalid):
            _check(GOOD, ca=bad_ca)


def test_issue_checks_the_csr_signature_first() -> None:
    csr = bytearray(make_csr(DEVICE, "truck-1"))
    csr[-1] ^= 0x01
    with pytest.raises(CsrRejected) as caught:
        FleetCA().issue(CA_SIGNER, CA_DER, bytes(csr), "device", NB, NA, 1)
    assert caught.value.reason == "csr_signature"
    with pytest.raises(CsrRejected) as garbage:
        FleetCA().issue(CA_SIGNER, b"not a CA", b"\x30\x00", "admin", NB, NA, 1)
    assert garbage.value.reason == "csr_malformed"


def test_describe_shows_fields_without_checking() -> None:
    info = describe_certificate(GOOD)
    assert info["subject_id"] == "truck-1" and info["roles"] == ["device"]
    assert info["kid"] == DEVICE.kid.hex() and info["serial"] == 77
    assert describe_certificate(CA_DER)["is_ca"] is True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1200))
def test_random_bytes_only_ever_raise_the_typed_rejection(data: bytes) -> None:
    with pytest.raises(CertificateRejected) as caught:
        _check(data)
    assert caught.value.reason in CERT_REASONS


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_mutation_of_a_good_certificate_is_rejected_with_a_reason(data: st.DataObject) -> None:
    cert = bytearray(GOOD)
    kind = data.draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
    at = data.draw(st.integers(0, len(cert) - 1))
    if kind == "flip":
        cert[at] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "set":
        value = data.draw(st.integers(0, 255).filter(lambda v: v != cert[at]))
        cert[at] = value
    elif kind == "truncate":
        del cert[at:]
    elif kind == "insert":
        cert[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    else:
        del cert[at : at + data.draw(st.integers(1, 8))]
    with pytest.raises(CertificateRejected) as caught:
        _check(bytes(cert))
    assert caught.value.reason in CERT_REASONS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_or_mutated_csrs_only_ever_raise_the_typed_refusal(data: st.DataObject) -> None:
    good = GOOD_CSR
    if data.draw(st.booleans()):
        csr = data.draw(st.binary(max_size=400))
    else:
        mutated = bytearray(good)
        at = data.draw(st.integers(0, len(mutated) - 1))
        mutated[at] ^= 1 << data.draw(st.integers(0, 7))
        csr = bytes(mutated[: data.draw(st.integers(1, len(mutated)))])
    with pytest.raises(CsrRejected) as caught:
        check_csr(csr)
    assert caught.value.reason in {"csr_malformed", "csr_bad_algorithm", "csr_signature"}


def test_a_signature_bit_string_with_unused_bits_is_malformed() -> None:
    # Hypothesis found this: the byte before the signature's DER was not checked, so the
    # same certificate had several encodings that all verified.
    cert = bytearray(GOOD)
    sig_len = len(x509.load_der_x509_certificate(GOOD).signature)
    assert cert[-sig_len - 1] == 0  # the BIT STRING's unused-bits byte
    cert[-sig_len - 1] = 1
    assert _reason(bytes(cert)) == "cert_malformed"
