"""ES256 verification and the in-memory signer (no HSM needed)."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm import Signer, SoftwareSigner, kid_for, load_public_key, verify_es256
from hsm.errors import BadPublicKey
from hsm.verify import P256_ORDER

MESSAGE = b'{"v":1,"dev":"truck-1","seq":1}'
N = P256_ORDER
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
DER = serialization.Encoding.DER


@pytest.fixture(scope="module")
def signer() -> SoftwareSigner:
    return SoftwareSigner.generate()


@pytest.fixture(scope="module")
def signature(signer: SoftwareSigner) -> bytes:
    return signer.sign(MESSAGE)


def _with_rs(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _p384_spki() -> bytes:
    return ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(DER, SPKI)


def _rsa_spki() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(DER, SPKI)


def _compressed_spki(signer: SoftwareSigner) -> bytes:
    point = load_public_key(signer.public_key_der()).public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    # Same key, compressed point: 0x03/0x02 prefix, 33 bytes; SPKI header for P-256.
    header = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200")
    return header + point


def test_good_signature_verifies_with_spki_bytes_and_with_key_object(
    signer: SoftwareSigner, signature: bytes
) -> None:
    assert len(signature) == 64
    assert verify_es256(signer.public_key_der(), MESSAGE, signature)
    assert verify_es256(load_public_key(signer.public_key_der()), MESSAGE, signature)
    assert verify_es256(bytearray(signer.public_key_der()), MESSAGE, bytearray(signature))


@pytest.mark.parametrize("bit", [0, 7, 255, 256, 511])
def test_signature_with_one_flipped_bit_is_rejected(
    signer: SoftwareSigner, signature: bytes, bit: int
) -> None:
    flipped = bytearray(signature)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert not verify_es256(signer.public_key_der(), MESSAGE, bytes(flipped))


def test_signature_over_another_message_is_rejected(
    signer: SoftwareSigner, signature: bytes
) -> None:
    assert not verify_es256(signer.public_key_der(), MESSAGE + b" ", signature)


def test_signature_from_another_key_is_rejected(signature: bytes) -> None:
    assert not verify_es256(SoftwareSigner.generate().public_key_der(), MESSAGE, signature)


@pytest.mark.parametrize("length", [0, 32, 63, 65, 72])
def test_signature_of_wrong_length_is_rejected(
    signer: SoftwareSigner, signature: bytes, length: int
) -> None:
    bad = (signature * 2)[:length]
    assert not verify_es256(signer.public_key_der(), MESSAGE, bad)


def test_der_encoded_signature_is_rejected_because_es256_is_raw_r_s(
    signer: SoftwareSigner, signature: bytes
) -> None:
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    assert not verify_es256(signer.public_key_der(), MESSAGE, encode_dss_signature(r, s))


@pytest.mark.parametrize(
    "case", ["r=0", "s=0", "r=n", "s=n", "s=n+1", "r=2^256-1", "all-zero", "all-ff"]
)
def test_signature_with_r_or_s_out_of_range_is_rejected(
    signer: SoftwareSigner, signature: bytes, case: str
) -> None:
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    bad = {
        "r=0": _with_rs(0, s),
        "s=0": _with_rs(r, 0),
        "r=n": _with_rs(N, s),
        "s=n": _with_rs(r, N),
        "s=n+1": _with_rs(r, N + 1),
        "r=2^256-1": _with_rs(2**256 - 1, s),
        "all-zero": bytes(64),
        "all-ff": b"\xff" * 64,
    }[case]
    assert not verify_es256(signer.public_key_der(), MESSAGE, bad)


def test_s_replaced_by_n_minus_s_still_verifies_so_signatures_are_not_identifiers(
    signer: SoftwareSigner, signature: bytes
) -> None:
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    assert verify_es256(signer.public_key_der(), MESSAGE, _with_rs(r, N - s))


@pytest.mark.parametrize(
    "make_key",
    [
        lambda s: b"",
        lambda s: b"\x30\x03\x02\x01\x00",
        lambda s: s.public_key_der()[:-1],
        lambda s: s.public_key_der() + b"\x00",
        lambda s: _rsa_spki(),
        lambda s: _p384_spki(),
        lambda s: _compressed_spki(s),
    ],
    ids=["empty", "garbage-der", "truncated", "trailing-byte", "rsa", "p384", "compressed"],
)
def test_malformed_or_wrong_kind_of_key_returns_false_and_load_raises_bad_public_key(
    signer: SoftwareSigner, signature: bytes, make_key: object
) -> None:
    key = make_key(signer)  # type: ignore[operator]
    assert not verify_es256(key, MESSAGE, signature)
    with pytest.raises(BadPublicKey):
        load_public_key(key)


def test_non_p256_key_object_and_wrong_types_return_false(signature: bytes) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    assert not verify_es256(p384, MESSAGE, signature)
    assert not verify_es256(None, MESSAGE, signature)  # type: ignore[arg-type]
    assert not verify_es256("not bytes", MESSAGE, signature)  # type: ignore[arg-type]
    assert not verify_es256(b"k", MESSAGE, None)  # type: ignore[arg-type]
    assert not verify_es256(b"k", 5, signature)  # type: ignore[arg-type]


def test_parsed_keys_are_cached_by_spki_bytes(signer: SoftwareSigner) -> None:
    spki = signer.public_key_der()
    assert load_public_key(spki) is load_public_key(bytes(bytearray(spki)))


def test_kid_is_sha256_of_spki(signer: SoftwareSigner) -> None:
    spki = signer.public_key_der()
    assert kid_for(spki) == hashlib.sha256(spki).digest() == signer.kid


def test_software_signer_satisfies_signer_protocol_and_refuses_non_p256_keys() -> None:
    assert isinstance(SoftwareSigner.generate(), Signer)
    with pytest.raises(BadPublicKey):
        SoftwareSigner(ec.generate_private_key(ec.SECP384R1()))


@settings(max_examples=300, database=None, deadline=None)
@given(key=st.binary(max_size=120), message=st.binary(max_size=64), sig=st.binary(max_size=80))
def test_random_bytes_never_raise(key: bytes, message: bytes, sig: bytes) -> None:
    assert verify_es256(key, message, sig) is False


@settings(max_examples=300, database=None, deadline=None)
@given(sig=st.binary(min_size=64, max_size=64), message=st.binary(max_size=64))
def test_random_64_byte_signatures_against_a_real_key_are_rejected(
    signer: SoftwareSigner, sig: bytes, message: bytes
) -> None:
    assert verify_es256(signer.public_key_der(), message, sig) is False


@settings(max_examples=300, database=None, deadline=None)
@given(position=st.integers(min_value=0, max_value=90), value=st.integers(0, 255))
def test_mutated_spki_never_raises(
    signer: SoftwareSigner, signature: bytes, position: int, value: int
) -> None:
    key = bytearray(signer.public_key_der())
    changed = key[position] != value
    key[position] = value
    result = verify_es256(bytes(key), MESSAGE, signature)
    assert result is (not changed)
