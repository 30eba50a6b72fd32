"""FairInbox.put_many, which takes a socket read's messages at once: the same lanes, order,
counters and summaries as a `put` of each in turn, for any mix of valid, suspect and
over-cap input; one lock and at most one wake-up for a read; and the same back-pressure
when the device lanes are full (a message waits for room, and what follows it is classified
after the wait)."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

from ledger_node.chain import Message
from ledger_node.ingest import FairInbox

ENROLLED = {("test", "truck-1"), ("test", "truck-2"), ("test", "truck-3")}


def inbox(enrolled: set[tuple[str, str]] = ENROLLED, good_max: int = 10_000) -> FairInbox:
    return FairInbox(lambda fleet, dev: (fleet, dev) in enrolled, good_max=good_max,
                     suspect_max=25, suspect_max_bytes=3000, max_message_bytes=400)


def mixed(n: int, seed: int) -> list[Message]:
    """Valid messages of three devices, and suspect ones of every kind, some large enough
    to overflow the suspect lane's byte cap."""
    rng = random.Random(seed)
    kinds = [
        lambda t: Message(f"tf/v1/test/truck-{rng.randint(1, 3)}/up", b"\xd2\x84" + bytes(t % 50),
                          t),
        lambda t: Message("tf/v1/test/stranger/up", b"\xd2\x84", t),          # not enrolled
        lambda t: Message("tf/v1/other/truck-1/up", b"\xd2\x84", t),          # other fleet
        lambda t: Message("tf/v1/test/truck-2/up", b"\xff\xfe", t),           # no envelope
        lambda t: Message("tf/v1/test/truck-3/up", b"\xd2" * 401, t),         # too large
        lambda t: Message("tf/v1/test/truck-1/down", b"\xd2\x84", t),         # not `up`
        lambda t: Message("elsewhere", b"\x9f" + bytes(rng.randint(0, 300)), t),
    ]
    return [rng.choice(kinds[:1] * 6 + kinds[1:])(t) for t in range(n)]


def state(box: FairInbox) -> Any:
    return ({key: (list(lane.queue), lane.suspect) for key, lane in box.lanes.items()},
            list(box.good_ready), list(box.suspect_ready), box.good_count, box.suspect_count,
            box.suspect_bytes, box.shed, box.shed_total)


@pytest.mark.parametrize("seed", range(5))
def test_put_many_leaves_the_inbox_as_a_put_of_each_would(seed: int) -> None:
    msgs = mixed(300, seed)
    one, many = inbox(), inbox()
    for box in (one, many):  # a demoted lane: its input is suspect too
        box.put(Message("tf/v1/test/truck-3/up", b"\xd2\x84", -1))
        box.feedback(box.take_good(10), {"tf/v1/test/truck-3/up": 0})
        box.lanes["tf/v1/test/truck-3/up"].suspect = True
    rng = random.Random(seed)
    at = 0
    while at < len(msgs):  # reads of any size, including one message
        n = rng.choice([1, 2, 17, 80])
        for msg in msgs[at:at + n]:
            one.put(msg)
        many.put_many(msgs[at:at + n])
        at += n
        assert state(many) == state(one)
    assert one.shed_total > 0 and one.good_count > 0  # the mix did overflow the suspect cap
    assert one.take_shed() == many.take_shed()
    assert one.take_good(1000) == many.take_good(1000)
    assert one.take_suspect(1000) == many.take_suspect(1000)


class CountingLock:
    """A lock that counts how often it is waited for (Condition also tries it, not blocking,
    to see whether it is held)."""

    def __init__(self) -> None:
        self.inner, self.acquired = threading.Lock(), 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self.acquired += blocking
        return self.inner.acquire(blocking, timeout)

    def release(self) -> None:
        self.inner.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_a_read_takes_the_lock_once_and_wakes_the_apply_thread_at_most_once() -> None:
    box = inbox()
    lock: Any = CountingLock()
    notified: list[int] = []

    class CountingCondition(threading.Condition):
        def notify_all(self) -> None:
            notified.append(1)
            super().notify_all()

    box.lock, box.changed = lock, CountingCondition(lock)
    box._wake_good, box._wake_suspect = 5, True  # as the apply thread's wait() leaves them
    box.put_many(mixed(200, 9))
    assert lock.acquired == 1 and notified == [1]
    assert box.good_count + box.suspect_count + box.shed_total == 200


def test_when_device_lanes_are_full_put_many_waits_and_classifies_the_rest_after() -> None:
    enrolled = set(ENROLLED)
    box = inbox(enrolled, good_max=2)
    msgs = [Message("tf/v1/test/truck-1/up", b"\xd2\x84", t) for t in range(5)]
    done = threading.Event()

    def reader() -> None:
        box.put_many(msgs)
        done.set()

    thread = threading.Thread(target=reader, daemon=True)  # (a failure must not hang)
    thread.start()
    time.sleep(0.3)
    assert not done.is_set() and box.good_count == 2  # waiting for room, as put would
    enrolled.discard(("test", "truck-1"))  # revoked while the third message waits
    assert [m.received for m in box.take_good(10).messages] == [0, 1]
    thread.join(5)
    assert done.is_set()
    assert [m.received for m in box.take_good(10).messages] == [2]  # classified before
    assert [m.received for m in box.take_suspect(10).messages] == [3, 4]  # and after


def test_after_close_put_many_queues_and_counts_nothing() -> None:
    box = inbox(good_max=1)
    box.put(Message("tf/v1/test/truck-1/up", b"\xd2\x84", 0))
    box.close()
    box.put_many(mixed(50, 3))  # would wait for room; returns at once once closed
    assert (box.good_count, box.suspect_count, box.shed_total) == (1, 0, 0)
