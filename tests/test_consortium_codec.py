"""What goes through etcd: batches, signature posts and progress, decoded strictly."""

from __future__ import annotations

import contextlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_node.chain import Message, OrderedBatch
from ledger_node.consortium.codec import (
    Keys,
    Progress,
    decode_batch,
    decode_progress,
    decode_sigs,
    encode_batch,
    encode_progress,
    encode_sigs,
)
from ledger_node.consortium.errors import BatchDecodeError
from trustfleet import cbor

BATCH = OrderedBatch(time=1_763_700_000_123, proposer="node-2", admin=(b"\xa1ae\x01",),
                     messages=(Message("tf/v1/f/d/up", b"\xd2\x84", 5),
                               Message("tf/v1/f/e/up", b"x" * 300, 6)),
                     audit=(b"\xa1aa\x02",), heartbeat=True)


def _doc(**changes: object) -> dict[str, object]:
    doc: dict[str, object] = {"v": 1, "time": 5, "proposer": "node-1", "admin": [],
                              "audit": [], "messages": [], "heartbeat": False}
    doc.update(changes)
    return doc


def test_a_batch_decodes_to_what_was_proposed_with_the_batch_time_as_received() -> None:
    got = decode_batch(encode_batch(BATCH))
    assert (got.time, got.proposer, tuple(got.admin), tuple(got.audit), got.heartbeat) == \
        (BATCH.time, "node-2", BATCH.admin, BATCH.audit, True)
    assert [(m.topic, m.payload, m.received) for m in got.messages] == \
        [(m.topic, m.payload, BATCH.time) for m in BATCH.messages]
    assert encode_batch(got) == encode_batch(BATCH)  # every node decodes the same batch


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "bad_cbor"),
    (b"\xff\xff", "bad_cbor"),
    (cbor.dumps(_doc()) + b"\x00", "bad_cbor"),
    (cbor.dumps([1, 2]), "bad_batch"),
    (cbor.dumps(_doc(v=2)), "unsupported_version"),
    (cbor.dumps({**_doc(), "extra": 1}), "bad_batch"),
    (cbor.dumps({k: v for k, v in _doc().items() if k != "audit"}), "bad_batch"),
    (cbor.dumps(_doc(time=-1)), "bad_batch"),
    (cbor.dumps(_doc(time=True)), "bad_batch"),
    (cbor.dumps(_doc(time=1.5)), "bad_batch"),
    (cbor.dumps(_doc(time=1 << 60)), "bad_batch"),
    (cbor.dumps(_doc(proposer="no/slash")), "bad_name"),
    (cbor.dumps(_doc(proposer=7)), "bad_name"),
    (cbor.dumps(_doc(heartbeat=1)), "bad_batch"),
    (cbor.dumps(_doc(admin=["text"])), "bad_batch"),
    (cbor.dumps(_doc(messages=[["t", "not bytes"]])), "bad_batch"),
    (cbor.dumps(_doc(messages=[["t"]])), "bad_batch"),
    (cbor.dumps(_doc(messages=[["t" * 300, b"x"]])), "bad_batch"),
    (cbor.dumps(_doc(messages={"t": b"x"})), "bad_batch"),
    (cbor2.dumps(_doc()), "non_deterministic_cbor"),  # keys not in deterministic order
])
def test_malformed_batches_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(BatchDecodeError) as exc:
        decode_batch(data)
    assert exc.value.reason == reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_hostile_bytes_raise_only_the_typed_error(data: bytes) -> None:
    with contextlib.suppress(BatchDecodeError):
        decode_batch(data)
    for decoder in (decode_sigs, decode_progress):
        with contextlib.suppress(BatchDecodeError):
            decoder(data)


@settings(max_examples=100, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.binary(max_size=20)
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20))
def test_hostile_cbor_values_raise_only_the_typed_error(value: object) -> None:
    data = cbor.dumps(value)
    for decoder in (decode_batch, decode_sigs, decode_progress):
        with contextlib.suppress(BatchDecodeError):
            decoder(data)


def test_signature_posts_round_trip_and_refuse_bad_items() -> None:
    sigs = [(3, b"header-3", bytes(64)), (4, b"header-4", b"\x01" * 64)]
    got = decode_sigs(encode_sigs("node-3", sigs))
    assert got.node == "node-3" and list(got.sigs) == sigs
    for bad in ([[1, b"h", b"short"]], [[-1, b"h", bytes(64)]], [["1", b"h", bytes(64)]],
                [[1, b"h" * 5000, bytes(64)]], [[1, b"h"]]):
        with pytest.raises(BatchDecodeError):
            decode_sigs(cbor.dumps({"v": 1, "node": "node-3", "sigs": bad}))
    with pytest.raises(BatchDecodeError):
        decode_sigs(cbor.dumps({"v": 1, "node": "node-3", "sigs": [[1, b"h", bytes(64)]]
                                * 10_001}))


def test_progress_round_trips() -> None:
    p = Progress("node-4", 1234, 56)
    assert decode_progress(encode_progress(p)) == p
    with pytest.raises(BatchDecodeError):
        decode_progress(cbor.dumps({"v": 1, "node": "node-4", "revision": -1, "height": 0}))


def test_keys_sort_out_what_a_watch_sees() -> None:
    k = Keys("/trustfleet", "main")
    assert k.log == b"/trustfleet/main/log"
    assert k.kind(k.log) == ("log", "")
    assert k.kind(k.sigs("node-2")) == ("sigs", "node-2")
    assert k.kind(k.applied("node-3")) == ("applied", "node-3")
    assert k.kind(b"/trustfleet/other/log") == ("other", "")
    assert k.kind(b"/trustfleet/main/logs") == ("other", "")
