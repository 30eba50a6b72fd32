"""The ledger's fast paths for taking envelopes and payloads apart (trustfleet.cose,
trustfleet.payload) and for building the Sig_structure give exactly what the generic CBOR
path gives: the same value for every input they accept, the same error otherwise (they hand
everything else to the generic path)."""

from __future__ import annotations

import hashlib

import cbor2
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hsm import SoftwareSigner
from trustfleet import cbor, cose, payload
from trustfleet.cose import decode_sign1, sig_structure, sign1
from trustfleet.errors import WireError
from trustfleet.payload import Reading, decode_payload, encode_payload

SIGNER = SoftwareSigner.generate()

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=False, width=64), st.floats(width=32, allow_nan=False),
                    st.floats(width=16, allow_nan=False),
                    st.text(max_size=40))
values = st.dictionaries(st.text(min_size=1, max_size=8),
                         st.one_of(scalars, st.lists(scalars, max_size=5)), max_size=6)
readings = st.builds(
    Reading,
    dev=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True),
    seq=st.one_of(st.integers(1, 300), st.integers(1, (1 << 63) - 1)),
    prev=st.binary(min_size=32, max_size=32),
    t=st.one_of(st.integers(0, 70_000), st.integers(0, (1 << 53) - 1)),
    ts=st.sampled_from(["gps", "rtc", "ntp"]),
    k=st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True),
    d=values, v=st.just(1))


def typed(value: object) -> object:
    """A reading as its deterministic CBOR, which tells False from 0, 0.0 from 0 and -0.0,
    and a float16 from a float64; anything else as it is. (Python's == would not.)"""
    return cbor.dumps(value.to_map()) if isinstance(value, Reading) else value


def outcome(fn: object, data: bytes) -> tuple[object, ...]:
    try:
        return ("ok", typed(fn(data)))  # type: ignore[operator]
    except WireError as exc:
        return ("error", exc.reason, exc.detail)


def mutate(data: bytes, where: int, byte: int, how: int) -> bytes:
    i = where % (len(data) + 1)
    if how == 0:
        return data[:i] + bytes([byte]) + data[i + 1:]  # replace
    if how == 1:
        return data[:i] + bytes([byte]) + data[i:]  # insert
    if how == 2:
        return data[:i] + data[i + 1:]  # delete
    return data[:i]  # truncate


@settings(max_examples=300, deadline=None)
@given(readings, st.integers(0, 10_000), st.integers(0, 255), st.integers(0, 4))
def test_payload_fast_path_agrees_with_the_generic_decoder(r: Reading, where: int, byte: int,
                                                           how: int) -> None:
    data = encode_payload(r)
    fast, generic = payload._decode_fast(data), payload._decode_generic(data)
    assert typed(fast) == typed(generic) == typed(r) == data
    bent = data if how == 4 else mutate(data, where, byte, how)
    assert outcome(decode_payload, bent) == outcome(payload._decode_generic, bent)


@settings(max_examples=200, deadline=None)
@given(readings, st.integers(0, 10_000), st.integers(0, 255), st.integers(0, 4),
       st.booleans())
def test_envelope_fast_path_agrees_with_the_generic_decoder(r: Reading, where: int, byte: int,
                                                            how: int, untagged: bool) -> None:
    env = sign1(encode_payload(r), SIGNER.kid, SIGNER.sign)
    if untagged:
        env = env[1:]  # the same COSE_Sign1 without tag 18
    generic = cose._decode_sign1_generic(env, 64 * 1024)
    assert cose._sign1_fast(env, 64 * 1024) == generic == decode_sign1(env)
    bent = env if how == 4 else mutate(env, where, byte, how)
    for limit in (64 * 1024, len(bent) - 1):
        assert outcome(lambda b, n=limit: decode_sign1(b, max_size=n), bent) == \
            outcome(lambda b, n=limit: cose._decode_sign1_generic(b, n), bent)


@given(st.binary(max_size=70_000), st.binary(max_size=300))
@example(b"", b"")
@example(b"p" * 23, b"q" * 24)
@example(b"p" * 255, b"q" * 256)
@example(b"p" * 65_535, b"q" * 65_536)
def test_sig_structure_is_the_deterministic_cbor_of_the_generic_one(protected: bytes,
                                                                   body: bytes) -> None:
    assert sig_structure(protected, body) == cbor.dumps(["Signature1", protected, b"", body])


def test_non_shortest_heads_and_other_headers_take_the_generic_path() -> None:
    r = Reading(dev="truck-1", seq=30, prev=bytes(32), t=1_763_700_000_000, ts="gps", k="temp",
                d={"c": 4.5})
    data = encode_payload(r)
    # seq 30 as a two-byte integer: well-formed, not deterministic
    slow_seq = data.replace(b"\x63seq\x18\x1e", b"\x63seq\x19\x00\x1e")
    assert payload._decode_fast(slow_seq) is None
    assert outcome(decode_payload, slow_seq)[1] == "non_deterministic_cbor"
    env = sign1(data, SIGNER.kid, SIGNER.sign)
    # a protected header with one more field: still a valid envelope, decoded generically
    wide = cbor.dumps({1: -7, 4: SIGNER.kid, 3: "x"})
    parts = cbor2.loads(env).value
    other = cbor.dumps(cbor2.CBORTag(18, [wide, {}, parts[2], parts[3]]))
    assert cose._sign1_fast(other, 64 * 1024) is None
    assert decode_sign1(other).protected == wide
    assert hashlib.sha256(decode_sign1(env).to_be_signed()).digest() == \
        hashlib.sha256(cbor.dumps(["Signature1", parts[0], b"", parts[2]])).digest()
