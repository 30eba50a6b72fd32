"""Ingest scheduling: which received messages go into the next batch, so that a flood of bad
input cannot slow valid devices by more than a bounded factor (DESIGN.md §6, issue 5).

Every message is classified on arrival by cheap checks only (the topic, the size, the first
bytes; no decoding, no signature):

* **device lanes**: one FIFO per enrolled, unrevoked device, for messages on that device's
  own `up` topic whose first byte can start an envelope or a batch. The apply thread takes
  them round-robin across lanes (one busy device cannot hold back the others) and commits
  them first. They are bounded together by `good_max`; when full, `put` waits, which pushes
  back on the broker (it holds QoS 1 messages for us), exactly as a plain queue would.
* **suspect**: everything else (topics that are not `up` topics or name no enrolled device,
  payloads too large or whose first byte cannot start an envelope) shares one FIFO, and a
  device lane is *demoted* to suspect while most of its recent messages are rejected (a
  flood of forged envelopes on a device's topic; with the broker ACL of DESIGN §4 only the
  device itself can do that). The node applies suspect input in short slices between valid
  batches, so the wait it adds to a valid batch is at most one slice, and gives it at most a
  fixed share of the apply thread's time (LedgerNode.run), so that enough CPU (and GIL) is
  left to read the broker's stream, in which valid messages queue behind the flood. It is
  bounded by `suspect_max` messages and `suspect_max_bytes`; beyond that a message is not
  queued but *summarised*: counted (by topic device) under the quarantine reason
  `ingest_overload` (ledger_node.quarantine.OVERLOAD), never dropped silently.

Classification never rejects anything: a valid reading that lands in suspect is validated
like any other, only later (or, when shed, resent by its device, which got no receipt).

Concurrency: `put` and `put_many` run on paho's network thread; everything else on the apply
thread. One lock guards all state; no call holds it while doing I/O. `put_many` takes it once
for all the messages of one socket read (unless the device lanes are full), which matters
at tens of thousands of messages a second.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ledger_node.chain import Message
from ledger_node.quarantine import OVERLOAD, Tally
from trustfleet.batch import is_batched
from trustfleet.topics import DeviceTopic, parse_up_topic

__all__ = ["FairInbox", "Lane", "Taken", "plausible_start"]

EnrolledCheck = Callable[[str, str], bool]
"""(fleet, device) -> True if the device is enrolled in that fleet and not revoked."""

SUSPECT = ""
"""Key of the shared suspect lane (no topic is empty)."""

DEMOTE_AT, PROMOTE_AT, SMOOTHING = 0.5, 0.1, 0.5
TOPIC_CACHE = 100_000
MIN_REJECTS = 3


def plausible_start(payload: bytes) -> bool:
    """True if `payload` can begin a COSE_Sign1 (tag 18, or an untagged 4-array), a batched
    reading (trustfleet.batch) or a message of several (a non-empty array of byte strings,
    definite or indefinite): DESIGN.md §4."""
    if len(payload) < 2:
        return False
    b0 = payload[0]
    if b0 in (0xD2, 0xD8):  # tag 18 (0xD8 0x12 is its long form)
        return b0 == 0xD2 or payload[1] == 0x12
    return 0x81 <= b0 <= 0x99 or b0 == 0x9F or is_batched(payload)


@dataclass(frozen=True)
class Taken:
    """Messages taken for one batch, and how many came from each device lane (by topic)."""

    messages: list[Message]
    lanes: dict[str, int]


@dataclass
class Lane:
    """One device topic's queue and its recent record (fraction of messages rejected)."""

    key: str
    dev: str | None
    queue: deque[Message] = field(default_factory=deque)
    suspect: bool = False
    score: float = 0.0


class FairInbox:
    """Device lanes served round-robin, suspect input in idle time (see the module doc)."""

    def __init__(self, enrolled: EnrolledCheck, *, good_max: int, suspect_max: int,
                 suspect_max_bytes: int, max_message_bytes: int) -> None:
        self.enrolled = enrolled
        self.good_max, self.suspect_max = good_max, suspect_max
        self.suspect_max_bytes, self.max_message_bytes = suspect_max_bytes, max_message_bytes
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.lanes: dict[str, Lane] = {SUSPECT: Lane(SUSPECT, None, suspect=True)}
        self.good_ready: deque[str] = deque()  # lanes (not suspect) with messages, in turn
        self.suspect_ready: deque[str] = deque()
        self.good_count = self.suspect_count = self.suspect_bytes = 0
        self.shed: dict[str | None, list[int]] = {}  # dev -> [count, bytes, first, last]
        self.shed_total = 0
        self.closed = False
        self.interrupted = False
        # What a waiting apply thread wants to be woken for (wait()); put() notifies only
        # then, rather than on every message.
        self._wake_good: int | None = None
        self._wake_suspect = False
        self._topics: dict[str, DeviceTopic | None] = {}  # parse_up_topic, remembered

    # -- paho's thread --------------------------------------------------------------------
    def put(self, msg: Message) -> None:
        """Queue one message (see put_many)."""
        key = self._classify(msg)
        with self.lock:
            self._queue((msg,), (key,))

    def put_many(self, msgs: Sequence[Message]) -> None:
        """Queue `msgs` in order, exactly as `put` of each in turn would: classified, then
        queued in its lane or (suspect input beyond the cap) summarised. While the device
        lanes are full, a message for one waits for room, which pushes back on the broker."""
        done = 0
        while done < len(msgs):
            rest = msgs[done:] if done else msgs
            keys = [self._classify(msg) for msg in rest]  # without the lock, as put did
            with self.lock:
                done += self._queue(rest, keys)

    def _queue(self, msgs: Sequence[Message], keys: Sequence[str]) -> int:
        """Queue `msgs` (in lanes `keys`), with the lock held; how many were dealt with.
        After a wait for room it stops, so that the rest are classified again (the device
        they name may be revoked meanwhile), as a `put` of each after the wait would."""
        lanes = self.lanes
        for n, key in enumerate(keys, 1):
            msg = msgs[n - 1]
            lane = lanes.get(key)
            if lane is None:
                topic = parse_up_topic(key)
                lane = lanes[key] = Lane(key, topic.device if topic else None)
            waited = False
            while not lane.suspect and self.good_count >= self.good_max and not self.closed:
                self.changed.wait(0.5)
                waited = True
            if self.closed:
                return len(msgs)  # as a put after close: nothing queued, nothing counted
            size = len(msg.payload)
            if lane.suspect and (self.suspect_count >= self.suspect_max
                                 or self.suspect_bytes + size > self.suspect_max_bytes):
                self._shed(msg)
            else:
                if lane.suspect:
                    self.suspect_count += 1
                    self.suspect_bytes += size
                    ready = self.suspect_ready
                else:
                    self.good_count += 1
                    ready = self.good_ready
                if not lane.queue:
                    ready.append(key)
                lane.queue.append(msg)
                if (self._wake_good is not None and self.good_count >= self._wake_good) or \
                        (self._wake_suspect and lane.suspect):
                    self._wake_good, self._wake_suspect = None, False  # so: once per lock
                    self.changed.notify_all()
            if waited:
                return n
        return len(msgs)

    def _classify(self, msg: Message) -> str:
        if msg.topic in self._topics:
            topic = self._topics[msg.topic]
        else:
            if len(self._topics) >= TOPIC_CACHE:  # a flood of made-up topics: start over
                self._topics.clear()
            topic = self._topics[msg.topic] = parse_up_topic(msg.topic)
        if (topic is None or len(msg.payload) > self.max_message_bytes
                or not plausible_start(msg.payload) or not self.enrolled(topic.fleet,
                                                                         topic.device)):
            return SUSPECT
        return msg.topic

    def _shed(self, msg: Message) -> None:
        topic = parse_up_topic(msg.topic)
        dev = topic.device if topic else None
        got = self.shed.get(dev)
        size = len(msg.payload)
        if got is None:
            self.shed[dev] = [1, size, msg.received, msg.received]
        else:
            got[0] += 1
            got[1] += size
            got[3] = max(got[3], msg.received)
        self.shed_total += 1

    # -- the apply thread -----------------------------------------------------------------
    def wait(self, deadline: float, want_good: int, *, wake_on_suspect: bool) -> None:
        """Until `deadline`, `want_good` device-lane messages are queued, (if
        `wake_on_suspect`) suspect input is waiting, or `interrupt` was called."""
        with self.lock:
            while (self.good_count < want_good
                   and not (wake_on_suspect and self.suspect_count)
                   and not self.closed and not self.interrupted
                   and (left := deadline - time.monotonic()) > 0):
                self._wake_good, self._wake_suspect = want_good, wake_on_suspect
                self.changed.wait(left)
            self._wake_good, self._wake_suspect = None, False

    def take_good(self, limit: int) -> Taken:
        """Up to `limit` messages from device lanes, an equal share from each in turn."""
        out: list[Message] = []
        lanes: dict[str, int] = {}
        with self.lock:
            while len(out) < limit and self.good_ready:
                share = max(1, (limit - len(out)) // len(self.good_ready))
                for _ in range(len(self.good_ready)):
                    if len(out) >= limit:
                        break
                    key = self.good_ready.popleft()
                    lane = self.lanes[key]
                    n = min(share, len(lane.queue), limit - len(out))
                    out.extend(lane.queue.popleft() for _ in range(n))
                    lanes[key] = lanes.get(key, 0) + n
                    if lane.queue:
                        self.good_ready.append(key)
            self.good_count -= len(out)
            self.changed.notify_all()
        return Taken(out, lanes)

    def take_suspect(self, limit: int) -> Taken:
        """Up to `limit` suspect messages, round-robin over the shared lane and demoted ones."""
        out: list[Message] = []
        lanes: dict[str, int] = {}
        with self.lock:
            while len(out) < limit and self.suspect_ready:
                key = self.suspect_ready.popleft()
                lane = self.lanes[key]
                share = max(1, (limit - len(out)) // (len(self.suspect_ready) + 1))
                n = min(share, len(lane.queue))
                out.extend(lane.queue.popleft() for _ in range(n))
                if key != SUSPECT:
                    lanes[key] = lanes.get(key, 0) + n
                if lane.queue:
                    self.suspect_ready.append(key)
            self.suspect_count -= len(out)
            self.suspect_bytes -= sum(len(m.payload) for m in out)
            self.changed.notify_all()
        return Taken(out, lanes)

    def feedback(self, taken: Taken, rejected_topics: dict[str, int]) -> None:
        """Learn from one applied batch how many of each device lane's messages were rejected
        (rejections are counted by topic, and a lane's key is its topic); demote a lane that
        sends mostly bad input, promote it back once it stops.

        Only messages that came through a device lane count. Suspect input from the shared
        lane on a device's topic (garbage on its topic) never demotes that device's lane;
        in a suspect slice it can only count against a lane that is already demoted."""
        with self.lock:
            for key, n in taken.lanes.items():
                lane = self.lanes.get(key)
                if lane is None or n == 0:
                    continue
                bad = min(n, rejected_topics.get(key, 0))
                lane.score = SMOOTHING * lane.score + (1 - SMOOTHING) * bad / n
                if not lane.suspect and lane.score >= DEMOTE_AT and bad >= MIN_REJECTS:
                    self._move(lane, suspect=True)
                elif lane.suspect and lane.score <= PROMOTE_AT:
                    self._move(lane, suspect=False)

    def _move(self, lane: Lane, *, suspect: bool) -> None:
        n, size = len(lane.queue), sum(len(m.payload) for m in lane.queue)
        src, dst = ((self.good_ready, self.suspect_ready) if suspect
                    else (self.suspect_ready, self.good_ready))
        if n:
            src.remove(lane.key)
            dst.append(lane.key)
        sign = 1 if suspect else -1
        self.good_count -= sign * n
        self.suspect_count += sign * n
        self.suspect_bytes += sign * size
        lane.suspect = suspect
        self.changed.notify_all()

    def take_shed(self) -> list[Tally]:
        """What was summarised since the last call, as quarantine summary tallies."""
        with self.lock:
            shed, self.shed = self.shed, {}
        return [Tally(OVERLOAD, dev, v[0], v[1], v[2], v[3]) for dev, v in shed.items()]

    def interrupt(self) -> None:
        """End `wait` now and from now on (the node is stopping); the queues still work."""
        with self.lock:
            self.interrupted = True
            self.changed.notify_all()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.changed.notify_all()

    @property
    def good(self) -> int:
        return self.good_count

    @property
    def suspect(self) -> int:
        return self.suspect_count

    def qsize(self) -> int:
        return self.good_count + self.suspect_count
