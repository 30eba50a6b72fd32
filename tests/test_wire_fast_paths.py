"""The ledger's fast paths for taking envelopes and payloads apart (trustfleet.cose,
trustfleet.payload) and for building the Sig_structure give exactly what the generic CBOR
path gives: the same value for every input they accept, the same error otherwise (they hand
everything else to the generic path)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import cbor2
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hsm import SoftwareSigner
from trustfleet import cbor, cose, payload
from trustfleet.cose import decode_sign1, sig_structure, sign1
from trustfleet.errors import WireError
from trustfleet.payload import Reading, decode_payload, encode_payload

SIGNER = SoftwareSigner.generate()

# integers at the edges of each head size (RFC 8949 §3.1) and of the payload's ranges
EDGES = [0, 1, 23, 24, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**53 - 1, 2**63 - 1,
         2**64 - 1, 2**64]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.sampled_from(EDGES + [-1 - n for n in EDGES]),
                    st.floats(allow_nan=False, width=64), st.floats(width=32, allow_nan=False),
                    st.floats(width=16, allow_nan=False),
                    st.sampled_from([0.0, -0.0, 4.5, 4.01, 52.37, 65504.0, 1e300, 2.0**-149]),
                    st.text(max_size=40), st.text(min_size=250, max_size=256))
keys = st.one_of(st.text(min_size=1, max_size=8), st.text(min_size=20, max_size=32))
values = st.one_of(
    st.dictionaries(keys, st.one_of(scalars, st.lists(scalars, max_size=5)), max_size=6),
    st.dictionaries(keys, scalars, min_size=20, max_size=32),  # the most `d` may hold
    st.dictionaries(keys, st.lists(scalars, min_size=60, max_size=64), max_size=1))
readings = st.builds(
    Reading,
    dev=st.one_of(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True),
                  st.sampled_from(["a", "A" * 23, "9" * 24, "b-._" * 16])),
    seq=st.one_of(st.integers(1, 300), st.integers(1, (1 << 63) - 1),
                  st.sampled_from([n for n in EDGES if 1 <= n < 2**63])),
    prev=st.binary(min_size=32, max_size=32),
    t=st.one_of(st.integers(0, 70_000), st.integers(0, (1 << 53) - 1),
                st.sampled_from([n for n in EDGES if n < 2**53])),
    ts=st.sampled_from(["gps", "rtc", "ntp"]),
    k=st.one_of(st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True),
                st.sampled_from(["t", "a" * 23, "z" * 24, "k_9" * 10 + "ab"])),
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


def bench(k: str, d: dict[str, object]) -> Reading:
    """A reading like the node benchmark's (ledger_node.bench)."""
    return Reading(dev="bench-0001", seq=12345, prev=bytes(32), t=1_763_700_000_000, ts="gps",
                   k=k, d=d)


FIXED = {  # the node benchmark's payloads, and ones at the edges of every size
    "double": bench("temp", {"c": 4.01}),
    "half_and_int": bench("temp", {"c": 4.5, "rh": 61}),
    "gps": bench("gps", {"lat": 52.37, "lon": 4.89, "alt": 3.5, "sats": 9}),
    "edges": Reading(dev="D" * 64, seq=2**63 - 1, prev=bytes(range(32)), t=2**53 - 1, ts="ntp",
                     k="k" * 32, d={"n": None, "\u00e9": -0.0, "\u4e2d\u6587": "\U0001f600" * 6,
                                    "b": True, "f": False, "i": -(2**64), "s": 1.5e-45,
                                    "w": 1e300, "x": [2**64, -1, "y" * 24]}),
    "small": Reading(dev="a", seq=1, prev=bytes(32), t=0, ts="rtc", k="a", d={}),
    "heads_24": Reading(dev="a" * 24, seq=24, prev=bytes(32), t=24, ts="gps", k="b" * 24,
                        d={"k" * 23: "v" * 24, "n": -25, "u": 256, "z": 65_536}),
}


def one_byte_changes(data: bytes) -> Iterator[bytes]:
    """Every byte replaced by every other value, every byte deleted, every cut, and bytes
    that start CBOR items (heads of each size, tags, floats, breaks) inserted everywhere."""
    inserts = bytes([0x00, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1F, 0x20, 0x38, 0x58, 0x5F, 0x60,
                     0x61, 0x77, 0x78, 0x7F, 0x80, 0x9F, 0xA0, 0xA1, 0xBF, 0xC0, 0xC2, 0xD8,
                     0xF4, 0xF5, 0xF6, 0xF7, 0xF9, 0xFA, 0xFB, 0xFF])
    for i in range(len(data) + 1):
        yield data[:i]
        for b in inserts:
            yield data[:i] + bytes([b]) + data[i:]
        if i < len(data):
            yield data[:i] + data[i + 1:]
            for b in range(256):
                if b != data[i]:
                    yield data[:i] + bytes([b]) + data[i + 1:]


@pytest.mark.parametrize("name", FIXED)
def test_every_one_byte_change_of_a_payload_decodes_as_the_generic_decoder_does(name: str
                                                                              ) -> None:
    data = encode_payload(FIXED[name])
    assert typed(payload._decode_fast(data)) == data  # the fast path takes the original
    for bent in one_byte_changes(data):
        assert outcome(decode_payload, bent) == outcome(payload._decode_generic, bent), bent
        fast = payload._decode_fast(bent)
        assert fast is None or typed(fast) == bent, bent  # only ever a deterministic encoding


SEQ, T, K, DEV = b"\x63seq\x18\x1e", b"\x61t\x05", b"\x61k\x64temp", b"\x63dev\x67truck-1"
V_TS, C = b"\x61v\x01\x62ts\x63gps", b"\x61c\x61x"


@pytest.mark.parametrize("part, bent, reason", [
    (SEQ, b"\x63seq\x19\x00\x1e", "non_deterministic_cbor"),  # 30 in two bytes
    (SEQ, b"\x63seq\x1b" + bytes(7) + b"\x1e", "non_deterministic_cbor"),
    (SEQ, b"\x63seq\x1b\x80" + bytes(7), "bad_payload"),  # 2**63
    (SEQ, b"\x63seq\x00", "bad_payload"),
    (SEQ, b"\x63seq\x20", "bad_payload"),  # -1
    (T, b"\x61t\x18\x05", "non_deterministic_cbor"),
    (T, b"\x61t\x1b\x00\x00\x00\x00\xff\xff\xff\xff", "non_deterministic_cbor"),
    (T, b"\x61t\x1b\x00\x20" + bytes(6), "bad_payload"),  # 2**53
    (T, b"\x61t\xf9\x45\x00", "bad_payload"),  # 5.0
    (K, b"\x61k\x78\x04temp", "non_deterministic_cbor"),
    (K, b"\x61k\x44temp", "bad_payload"),  # bytes, not text
    (K, b"\x61k\x64Temp", "bad_payload"),
    (DEV, b"\x63dev\x78\x07truck-1", "non_deterministic_cbor"),
    (DEV, b"\x63dev\x67truck/1", "bad_payload"),
    (V_TS, b"\x61v\x02\x62ts\x63gps", "bad_payload"),
    (V_TS, b"\x61v\xf5\x62ts\x63gps", "bad_payload"),  # true, which Python calls 1
    (V_TS, b"\x61v\x01\x62ts\x63xyz", "bad_payload"),
    (V_TS, b"\x61v\x01\x42ts\x63gps", "bad_payload"),  # a byte-string key
    (C, b"\x61c\xd8\x24\x61x", "bad_payload"),  # tag 36: cbor2 makes an email Message
    (C, b"\x61c\xc1\x01", "bad_payload"),  # tag 1: a datetime
    (C, b"\x61c\xc2\x41\x01", "non_deterministic_cbor"),  # a bignum that fits a head
    (C, b"\x61c\xfb\x80" + bytes(7), "non_deterministic_cbor"),  # -0.0 as a double
    (C, b"\x61c\xfa\x3f\xc0\x00\x00", "non_deterministic_cbor"),  # 1.5 as a single
    (C, b"\x61c\xf9\x7e\x00", "bad_payload"),  # NaN
    (C, b"\x61c\x7f\x61x\xff", "non_deterministic_cbor"),  # an indefinite-length text
])
def test_hostile_payloads_are_refused_as_the_generic_decoder_refuses_them(part: bytes,
                                                                          bent: bytes,
                                                                          reason: str) -> None:
    data = encode_payload(Reading(dev="truck-1", seq=30, prev=bytes(32), t=5, ts="gps",
                                  k="temp", d={"c": "x"}))
    assert data.count(part) == 1
    bad = data.replace(part, bent)
    assert payload._decode_fast(bad) is None
    assert outcome(decode_payload, bad)[:2] == outcome(payload._decode_generic, bad)[:2] == \
        ("error", reason)


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
