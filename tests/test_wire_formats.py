"""The fixed wire formats of DESIGN.md §4: COSE_Sign1 envelopes, payloads, topics, batches."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm import SoftwareSigner, load_public_key, verify_es256
from trustfleet import cbor
from trustfleet.cose import decode_sign1, sign1
from trustfleet.errors import WireError
from trustfleet.payload import GENESIS_PREV, Reading, decode_payload, encode_payload
from trustfleet.topics import encode_batch, parse_up_topic, split_message, up_topic

SIGNER = SoftwareSigner.generate()


def reading(seq: int = 1, **changes: object) -> Reading:
    base = dict(dev="truck-1", seq=seq, prev=GENESIS_PREV, t=1_763_700_000_000, ts="gps",
                k="temp", d={"c": 4.3, "probe": "28-000000000001"})
    base.update(changes)
    return Reading(**base)  # type: ignore[arg-type]


def envelope(r: Reading | None = None) -> bytes:
    return sign1(encode_payload(r or reading()), SIGNER.kid, SIGNER.sign)


def test_envelope_round_trips_and_its_signature_verifies() -> None:
    data = envelope()
    msg = decode_sign1(data)
    assert msg.kid == SIGNER.kid
    assert decode_payload(msg.payload) == reading()
    assert verify_es256(SIGNER.public_key_der(), msg.to_be_signed(), msg.signature)


def test_envelope_is_a_tagged_cose_sign1_that_pycose_verifies() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from pycose.keys.curves import P256
    from pycose.keys.ec2 import EC2Key
    from pycose.messages import Sign1Message

    data = envelope()
    assert data[0] == 0xD2  # CBOR tag 18
    # pycose 1.1 predates cbor2 6, which decodes tagged arrays as tuples: hand it a list.
    protected, unprotected, payload, signature = cbor2.loads(data).value
    msg = Sign1Message.from_cose_obj([protected, dict(unprotected), payload, signature], True)
    pub = load_public_key(SIGNER.public_key_der())
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    nums = pub.public_numbers()
    msg.key = EC2Key(crv=P256, x=nums.x.to_bytes(32, "big"), y=nums.y.to_bytes(32, "big"))
    assert msg.verify_signature()


def test_payload_is_deterministic_cbor_with_sorted_keys() -> None:
    payload = encode_payload(reading())
    assert list(cbor2.loads(payload)) == ["d", "k", "t", "v", "ts", "dev", "seq", "prev"]
    assert cbor.dumps(cbor2.loads(payload)) == payload


def test_non_deterministic_payload_is_refused() -> None:
    m = reading().to_map()
    loose = cbor2.dumps(dict(reversed(list(m.items()))))
    with pytest.raises(WireError) as err:
        decode_payload(loose)
    assert err.value.reason == "non_deterministic_cbor"


@pytest.mark.parametrize("change, reason", [
    ({"seq": 0}, "bad_payload"), ({"prev": b"\x00" * 31}, "bad_payload"),
    ({"ts": "sundial"}, "bad_payload"), ({"dev": "a/b"}, "bad_payload"),
    ({"d": {"c": [1, {"x": 2}]}}, "bad_payload"), ({"t": -1}, "bad_payload"),
])
def test_invalid_payload_fields_are_refused_with_a_reason(change: dict[str, object],
                                                          reason: str) -> None:
    m = reading().to_map() | change
    with pytest.raises(WireError) as err:
        decode_payload(cbor.dumps(m))
    assert err.value.reason == reason


def test_unknown_payload_key_is_refused() -> None:
    with pytest.raises(WireError, match="unknown keys"):
        decode_payload(cbor.dumps(reading().to_map() | {"extra": 1}))


def test_trailing_garbage_after_an_envelope_is_bad_cbor() -> None:
    with pytest.raises(WireError) as err:
        decode_sign1(envelope() + b"\x00")
    assert err.value.reason == "bad_cbor"


@pytest.mark.parametrize("alg", [-35, -8, 0, "ES256"])
def test_other_algorithms_are_refused(alg: object) -> None:
    parts = list(cbor2.loads(envelope()).value)
    parts[0] = cbor.dumps({1: alg, 4: SIGNER.kid})
    with pytest.raises(WireError) as err:
        decode_sign1(cbor.dumps(cbor2.CBORTag(18, parts)))
    assert err.value.reason == "unsupported_alg"


def test_batch_framing_keeps_each_envelope_byte_exact() -> None:
    envs = [envelope(reading(seq=i)) for i in (1, 2, 3)]
    assert split_message(encode_batch(envs)) == envs
    assert split_message(envs[0]) == [envs[0]]
    untagged = cbor.dumps(list(cbor2.loads(envs[0]).value))
    assert split_message(untagged) == [untagged]


def test_oversized_message_is_too_large() -> None:
    with pytest.raises(WireError) as err:
        split_message(b"\x00" * (1 << 20 + 1))
    assert err.value.reason == "too_large"


def test_up_topics_parse_and_reject_wildcards_and_traversal() -> None:
    t = parse_up_topic(up_topic("demo", "truck-1"))
    assert t is not None and (t.fleet, t.device) == ("demo", "truck-1")
    for bad in ("tf/v1/demo/+/up", "tf/v1/demo/../up", "tf/v2/demo/x/up", "tf/v1/demo/x/receipt",
                "tf/v1/demo/x/up/more"):
        assert parse_up_topic(bad) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_anything_but_wire_error(data: bytes) -> None:
    try:
        for env in split_message(data):
            decode_payload(decode_sign1(env).payload)
    except WireError:
        pass


def test_signatures_are_written_low_s_and_a_malleated_twin_still_verifies_cryptographically(
) -> None:
    from trustfleet.cose import P256_ORDER, is_low_s

    for i in range(20):
        msg = decode_sign1(envelope(reading(seq=i + 1)))
        assert is_low_s(msg.signature)
        r, s = msg.signature[:32], int.from_bytes(msg.signature[32:], "big")
        twin = r + (P256_ORDER - s).to_bytes(32, "big")
        assert not is_low_s(twin)
        assert verify_es256(SIGNER.public_key_der(), msg.to_be_signed(), twin)
