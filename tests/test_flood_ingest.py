"""The ingest inbox that keeps a flood from slowing valid devices (ledger_node.ingest): cheap
classification, round-robin device lanes, a bounded suspect queue whose overflow is counted,
and demotion of a lane whose messages are mostly rejected. Functional, no timing."""

from __future__ import annotations

import pytest

from ledger_node.chain import Message
from ledger_node.ingest import SUSPECT, FairInbox, plausible_start
from ledger_node.quarantine import OVERLOAD
from tests.chainkit import Device
from trustfleet.batch import sign_batch
from trustfleet.topics import encode_batch

ENROLLED = {("test", "truck-1"), ("test", "truck-2"), ("test", "truck-3")}


def inbox(suspect_max: int = 1000) -> FairInbox:
    return FairInbox(lambda fleet, dev: (fleet, dev) in ENROLLED, good_max=10_000,
                     suspect_max=suspect_max, suspect_max_bytes=1 << 20,
                     max_message_bytes=4096)


def msg(dev: str, payload: bytes = b"\xd2\x84", fleet: str = "test", t: int = 0) -> Message:
    return Message(f"tf/v1/{fleet}/{dev}/up", payload, t)


def test_a_device_signed_envelope_or_batch_starts_plausibly_and_garbage_does_not() -> None:
    dev = Device("truck-1")
    env = dev.reading()
    assert plausible_start(env) and plausible_start(encode_batch([env, env]))
    batched = sign_batch([b"\xa0", b"\xa0"], "truck-1", 1, 0, dev.signer.kid, dev.signer.sign)
    assert plausible_start(batched[0]) and plausible_start(encode_batch(batched))
    assert plausible_start(env[1:])  # untagged COSE_Sign1: an array of four
    for junk in (b"", b"\xd2", b"\xff\x00", b"\xa1\x01\x02", b"hello", b"\xd8\x13\x84"):
        assert not plausible_start(junk), junk


@pytest.mark.parametrize("message", [
    msg("stranger"),                        # not enrolled
    msg("truck-1", fleet="other"),          # enrolled in another fleet
    msg("truck-1", b"\xff\xff"),            # cannot start an envelope
    msg("truck-1", b"\xd2" * 5000),         # larger than a message may be
    Message("tf/v1/test/truck-1/down", b"\xd2\x84", 0),
    Message("elsewhere", b"\xd2\x84", 0),
])
def test_input_that_cannot_be_a_valid_devices_is_suspect(message: Message) -> None:
    box = inbox()
    box.put(message)
    assert (box.good, box.suspect) == (0, 1)
    assert box.take_good(10).messages == []
    assert box.take_suspect(10).messages == [message]


def test_device_lanes_are_served_round_robin_each_in_order() -> None:
    box = inbox()
    for n in range(6):
        box.put(msg("truck-1", t=n))  # a backlog from one device
    box.put(msg("truck-2", t=100))
    box.put(msg("truck-3", t=200))
    first = box.take_good(3)
    assert sorted((m.topic.split("/")[3], m.received) for m in first.messages) == [
        ("truck-1", 0), ("truck-2", 100), ("truck-3", 200)]
    assert [m.received for m in box.take_good(10).messages] == [1, 2, 3, 4, 5]


def test_beyond_the_suspect_cap_messages_are_counted_not_queued() -> None:
    box = inbox(suspect_max=3)
    for n in range(10):
        box.put(msg("stranger", t=1000 + n))
    box.put(Message("elsewhere", b"\xff", 2000))
    assert box.suspect == 3
    tallies = {t.dev: t for t in box.take_shed()}
    assert set(tallies) == {"stranger", None}
    assert (tallies["stranger"].reason, tallies["stranger"].count) == (OVERLOAD, 7)
    assert (tallies["stranger"].first_seen, tallies["stranger"].last_seen) == (1003, 1009)
    assert tallies["stranger"].bytes == 7 * 2
    assert box.take_shed() == []
    box.put(msg("truck-1"))  # device lanes are not affected by the suspect cap
    assert box.good == 1


def test_a_lane_whose_messages_are_mostly_rejected_is_demoted_then_promoted_back() -> None:
    box = inbox()
    for _ in range(8):
        box.put(msg("truck-1"))
    taken = box.take_good(4)
    box.feedback(taken, {"tf/v1/test/truck-1/up": 4})  # all four rejected: forged
    assert box.lanes["tf/v1/test/truck-1/up"].suspect
    assert (box.good, box.suspect) == (0, 4)  # its queue went with it
    box.put(msg("truck-1"))
    assert box.suspect == 5
    for _ in range(3):  # accepted from now on: a few clean batches bring it back
        box.feedback(box.take_suspect(100), {})
        box.put(msg("truck-1"))
    assert not box.lanes["tf/v1/test/truck-1/up"].suspect
    assert (box.good, box.suspect) == (1, 0)


def test_garbage_on_a_devices_topic_never_demotes_that_devices_lane() -> None:
    box = inbox()
    box.put(msg("truck-1"))
    box.feedback(box.take_good(10), {})
    for _ in range(50):
        box.put(msg("truck-1", b"\xff\xfe"))  # classified suspect, shared lane
    taken = box.take_suspect(100)
    assert taken.lanes == {}
    box.feedback(taken, {"tf/v1/test/truck-1/up": 50})
    assert not box.lanes["tf/v1/test/truck-1/up"].suspect
    assert SUSPECT in box.lanes


def test_closing_wakes_a_full_device_lane_and_drops_nothing_already_queued() -> None:
    box = FairInbox(lambda fleet, dev: True, good_max=1, suspect_max=1, suspect_max_bytes=100,
                    max_message_bytes=100)
    box.put(msg("truck-1"))
    box.close()
    box.put(msg("truck-1"))  # would wait for room; returns at once once closed
    assert [m.topic for m in box.take_good(10).messages] == ["tf/v1/test/truck-1/up"]
