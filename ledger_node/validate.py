"""Validation of one envelope against the chain state (DESIGN.md §6). Pure: no I/O.

A reading is accepted only if the envelope parses, the device is enrolled (and not revoked),
the kid is the device's key, the signature verifies and `seq` is new. A duplicate (same
device, seq and bytes) is acknowledged and ignored. A reading whose `prev` does not match
its predecessor, or that leaves a gap, is accepted and flagged. Everything else is rejected
with a machine-readable reason, which quarantine stores beside the raw bytes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import BrokenExecutor, Executor
from dataclasses import dataclass, field
from typing import Any, Final

from hsm import verify_es256
from trustfleet.batch import OpenedReading, is_batched, open_reading
from trustfleet.cose import is_low_s, sig_structure, sign1_parts
from trustfleet.errors import WireError
from trustfleet.payload import GENESIS_PREV, Reading, decode_payload
from trustfleet.topics import DeviceTopic

UNKNOWN_DEVICE: Final = "unknown_device"
REVOKED_DEVICE: Final = "revoked_device"
KID_MISMATCH: Final = "kid_mismatch"
TOPIC_MISMATCH: Final = "topic_mismatch"
BAD_SIGNATURE: Final = "bad_signature"
REPLAY_CONFLICT: Final = "replay_conflict"
ROTATED_KEY: Final = "rotated_key"
CERT_EXPIRED: Final = "cert_expired"
CERT_NOT_YET_VALID: Final = "cert_not_yet_valid"
BAD_TOPIC: Final = "bad_topic"

log = logging.getLogger(__name__)

FLAG_GAP: Final = "gap"
FLAG_PREV_MISMATCH: Final = "prev_mismatch"
FLAG_LATE: Final = "late"
FLAG_CLOCK_SKEW: Final = "clock_skew"
MAX_CLOCK_SKEW_MS: Final = 10 * 60 * 1000
"""Device time further than this from the block's ledger time is flagged (never refused:
device time is recorded, not trusted; an RTC reset to 1970 after a power cut shows here)."""


@dataclass
class DeviceState:
    """What the chain knows about one device; updated as blocks apply."""

    dev: str
    fleet: str
    key: bytes
    kid: bytes
    enrolled_height: int
    revoked_height: int | None = None
    last_seq: int = 0
    contiguous_seq: int = 0
    last_seen: int | None = None
    last_t: int | None = None
    readings: int = 0
    gaps: int = 0
    prev_mismatches: int = 0
    # Not stored: the SHA-256 of the envelope with seq == last_seq, filled in when a chain is
    # loaded, so the next reading's `prev` is checked without a lookup.
    last_hash: bytes | None = field(default=None, compare=False)
    # Also rebuilt from the log's administrative entries when a chain is loaded:
    cert_not_before: int | None = field(default=None, compare=False)
    cert_not_after: int | None = field(default=None, compare=False)
    revoked_time: int | None = field(default=None, compare=False)
    retired_kids: frozenset[bytes] = field(default=frozenset(), compare=False)


SeqLookup = Callable[[str, int], bytes | None]
"""Returns the SHA-256 of the envelope committed for (device, seq), or None."""


@dataclass(frozen=True)
class Accepted:
    reading: Reading
    envelope_hash: bytes
    flags: tuple[str, ...]


@dataclass(frozen=True)
class Duplicate:
    dev: str
    seq: int


@dataclass(frozen=True)
class Rejected:
    reason: str
    detail: str
    dev: str | None = None


Outcome = Accepted | Duplicate | Rejected


@dataclass(frozen=True)
class Candidate:
    """An envelope that parsed and passed the stateless checks; its signature is next."""

    data: bytes
    reading: Reading
    to_be_signed: bytes
    signature: bytes
    key: bytes
    chain_hash: bytes


def precheck(data: bytes, topic: DeviceTopic | None, devices: Mapping[str, DeviceState], *,
             at_ms: int | None = None, max_envelope: int = 64 * 1024) -> Candidate | Rejected:
    """Parse the envelope and check everything that needs no signature and no history.

    `at_ms` is the ledger time of the block: the device's certificate must be valid then.
    """
    try:
        msg = open_reading(data, max_size=max_envelope)
    except WireError as exc:
        return Rejected(exc.reason, exc.detail, topic.device if topic else None)
    return check_opened(msg, data, topic, devices, at_ms=at_ms)


def check_opened(msg: OpenedReading, data: bytes, topic: DeviceTopic | None,
                 devices: Mapping[str, DeviceState], *, at_ms: int | None = None
                 ) -> Candidate | Rejected:
    """The checks of `precheck` that follow parsing, on an envelope already opened."""
    reading = msg.reading
    dev = reading.dev
    if topic is None:
        return Rejected(BAD_TOPIC, "not sent on a tf/v1/{fleet}/{device}/up topic", dev)
    if topic.device != dev:
        return Rejected(TOPIC_MISMATCH, f"{dev!r} published on {topic.device!r}'s topic", dev)
    state = devices.get(dev)
    if state is None:
        return Rejected(UNKNOWN_DEVICE, f"device {dev!r} is not enrolled", dev)
    if state.fleet != topic.fleet:
        return Rejected(TOPIC_MISMATCH, f"device {dev!r} belongs to fleet {state.fleet!r}", dev)
    if state.revoked_height is not None:
        return Rejected(REVOKED_DEVICE, f"device {dev!r} was revoked", dev)
    if msg.kid in state.retired_kids:
        return Rejected(ROTATED_KEY, "signed with a key this device rotated away from", dev)
    if msg.kid != state.kid:
        return Rejected(KID_MISMATCH, "kid is not the enrolled key of this device", dev)
    if at_ms is not None and state.cert_not_after is not None and at_ms > state.cert_not_after:
        return Rejected(CERT_EXPIRED, f"device certificate expired at {state.cert_not_after}", dev)
    if at_ms is not None and state.cert_not_before is not None and at_ms < state.cert_not_before:
        return Rejected(CERT_NOT_YET_VALID, "device certificate is not valid yet", dev)
    if not is_low_s(msg.signature):
        return Rejected(BAD_SIGNATURE, "signature not in low-S form (malleated copy?)", dev)
    return Candidate(data, reading, msg.to_be_signed, msg.signature, state.key, msg.chain_hash)


# -- opening and verifying many envelopes, in worker processes or threads -----------------

KeyHint = tuple[str, bytes, bytes]
"""(device, key SPKI, kid) of the device an `up` topic names: the key its envelopes must
verify with if they pass `check_opened`."""

Opened = tuple[OpenedReading | WireError, bool | None]
"""An envelope opened (or why it does not open), and its signature check if already done
with the hinted key (None: not done)."""


def key_hint(topic: DeviceTopic | None, devices: Mapping[str, DeviceState], *,
             at_ms: int | None = None) -> KeyHint | None:
    """The key an envelope on `topic` will be checked with, if the topic's device can have a
    reading accepted at all (enrolled in that fleet, not revoked, certificate valid)."""
    if topic is None:
        return None
    state = devices.get(topic.device)
    if state is None or state.fleet != topic.fleet or state.revoked_height is not None:
        return None
    if at_ms is not None and (
            (state.cert_not_after is not None and at_ms > state.cert_not_after)
            or (state.cert_not_before is not None and at_ms < state.cert_not_before)):
        return None
    return topic.device, state.key, state.kid


def _open_one(data: bytes, hint: KeyHint | None, max_envelope: int,
              seen: dict[tuple[bytes, bytes, bytes], bool]) -> Opened:
    """Open one envelope; verify it with the hinted key when it would pass `check_opened` with
    that key as far as the envelope alone can tell (its device, its kid, low-S)."""
    try:
        msg = open_reading(data, max_size=max_envelope)
    except WireError as exc:
        return exc, None
    if hint is None or msg.reading.dev != hint[0] or msg.kid != hint[2] \
            or not is_low_s(msg.signature):
        return msg, None
    work = (hint[1], msg.to_be_signed, msg.signature)
    ok = seen.get(work)
    if ok is None:  # readings of one batch share one signature: checked once per chunk
        ok = seen[work] = verify_es256(*work)
    return msg, ok


_OpenedRow = tuple[Any, ...]


def open_chunk(items: Sequence[tuple[bytes, KeyHint | None]], max_envelope: int
               ) -> list[_OpenedRow]:
    """Worker side of `open_envelopes`: flat tuples, which cross a process boundary several
    times faster than the dataclasses they are rebuilt into."""
    seen: dict[tuple[bytes, bytes, bytes], bool] = {}
    rows: list[_OpenedRow] = []
    for data, hint in items:
        parts = sign1_parts(data, max_envelope)
        if parts is not None:  # a single envelope as devices write it: no dataclasses
            rows.append(_plain_row(data, parts, hint, seen))
            continue
        msg, ok = _open_one(data, hint, max_envelope, seen)
        if isinstance(msg, WireError):
            rows.append((msg.reason, msg.detail))
            continue
        r = msg.reading
        rows.append((r.dev, r.seq, r.prev, r.t, r.ts, r.k, r.d, r.v, msg.kid, msg.to_be_signed,
                     msg.signature, msg.chain_hash, msg.batched, ok))
    return rows


def _plain_row(data: bytes, parts: tuple[bytes, bytes, bytes, bytes], hint: KeyHint | None,
               seen: dict[tuple[bytes, bytes, bytes], bool]) -> _OpenedRow:
    """`open_chunk`'s row for an envelope `sign1_parts` took apart: the row `_open_one` and
    `open_reading` give (`decode_sign1` returns these parts for it), made directly."""
    protected, kid, payload, signature = parts
    try:
        r = decode_payload(payload)
    except WireError as exc:
        return exc.reason, exc.detail
    tbs = sig_structure(protected, payload)
    ok: bool | None = None
    if hint is not None and r.dev == hint[0] and kid == hint[2] and is_low_s(signature):
        work = (hint[1], tbs, signature)
        ok = seen.get(work)
        if ok is None:
            ok = seen[work] = verify_es256(*work)
    return (r.dev, r.seq, r.prev, r.t, r.ts, r.k, r.d, r.v, kid, tbs, signature,
            hashlib.sha256(data).digest(), False, ok)


def _from_row(row: _OpenedRow) -> Opened:
    if len(row) == 2:
        return WireError(row[0], row[1]), None
    (dev, seq, prev, t, ts, k, d, v, kid, tbs, signature, chain_hash, batched, ok) = row
    reading = Reading(dev=dev, seq=seq, prev=prev, t=t, ts=ts, k=k, d=d, v=v)
    return OpenedReading(reading, kid, tbs, signature, chain_hash, batched), ok


def open_envelopes(items: Sequence[tuple[bytes, KeyHint | None]],
                   executor: Executor | None = None, *, max_envelope: int = 64 * 1024,
                   chunk: int = 512, inline_below: int = 64) -> Iterator[Opened]:
    """Open many envelopes and check the signatures the hints allow, in parallel chunks when
    given an executor (threads or processes: the work is a module-level function over bytes).
    The chunks are handed to the executor at once; the iterator returned yields the results
    in the order of `items`, each as soon as its chunk is done, so that the caller works on
    the first ones while the workers work on the rest.

    The result for each envelope is a function of its bytes and its hint only, so it does not
    depend on the executor or the chunking. Chunks are consecutive runs of `items`, except
    when there are batched readings: then chunks keep one device's envelopes together (a
    batch signature shared by readings of one device is checked once per chunk), and the
    results come once all chunks are done. If the executor breaks (a worker process died),
    the rest is done here, with the same results."""
    if executor is None or len(items) < inline_below:
        return _open_inline(items, max_envelope)
    parts_count = max(2, -(-len(items) // chunk))
    size = -(-len(items) // parts_count)
    if not any(is_batched(data) for data, _ in items):
        parts = [list(range(i, min(i + size, len(items)))) for i in range(0, len(items), size)]
        ordered = True
    else:
        groups: dict[str | None, list[int]] = {}
        for i, (_, hint) in enumerate(items):
            groups.setdefault(hint[0] if hint else None, []).append(i)
        parts = [[]]
        for indices in groups.values():
            for start in range(0, len(indices), size):
                if len(parts[-1]) >= size:
                    parts.append([])
                parts[-1].extend(indices[start:start + size])
        ordered = False
    try:
        rows = executor.map(open_chunk, [[items[i] for i in part] for part in parts],
                            [max_envelope] * len(parts))
    except BrokenExecutor as exc:
        log.warning("verification workers failed (%s); opening envelopes in this thread", exc)
        return _open_inline(items, max_envelope)
    return _collect(items, parts, rows, ordered, max_envelope)


def _collect(items: Sequence[tuple[bytes, KeyHint | None]], parts: list[list[int]],
             rows: Iterator[list[_OpenedRow]], ordered: bool, max_envelope: int
             ) -> Iterator[Opened]:
    out: list[Opened | None] = [] if ordered else [None] * len(items)
    done = 0  # parts whose results are in
    try:
        for part, got in zip(parts, rows, strict=True):
            if ordered:
                for row in got:
                    yield _from_row(row)
            else:
                for i, row in zip(part, got, strict=True):
                    out[i] = _from_row(row)
            done += 1
    except BrokenExecutor as exc:
        log.warning("verification workers failed (%s); opening envelopes in this thread", exc)
        rest = [i for part in parts[done:] for i in part]
        if ordered:
            yield from _open_inline([items[i] for i in rest], max_envelope)
            return
        for i, opened in zip(rest, _open_inline([items[i] for i in rest], max_envelope),
                             strict=True):
            out[i] = opened
    if not ordered:
        yield from out  # type: ignore[misc]  # every slot is filled


def _open_inline(items: Sequence[tuple[bytes, KeyHint | None]], max_envelope: int
                 ) -> Iterator[Opened]:
    seen: dict[tuple[bytes, bytes, bytes], bool] = {}
    for data, hint in items:
        yield _open_one(data, hint, max_envelope, seen)


def warm_worker() -> int:
    """Run once in each worker at start: imports and key-parsing code paths are loaded."""
    return len(open_chunk([], 0))


def verify_many(work: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """Signature checks of (key, to_be_signed, signature) triples (module level: picklable)."""
    return [verify_es256(key, tbs, sig) for key, tbs, sig in work]


def verify_candidates(candidates: Sequence[Candidate],
                      executor: Executor | None = None, chunk: int = 256) -> list[bool]:
    """Signature checks for many candidates, in parallel chunks when given an executor.

    Readings of one batch share one signature, which is checked once. The results do not
    depend on the executor, so block application stays deterministic.
    """
    unique: dict[tuple[bytes, bytes, bytes], int] = {}
    for c in candidates:
        unique.setdefault((c.key, c.to_be_signed, c.signature), len(unique))
    work = list(unique)
    if executor is None or len(work) <= chunk:
        results = verify_many(work)
    else:
        parts = [work[i:i + chunk] for i in range(0, len(work), chunk)]
        results = [ok for result in executor.map(verify_many, parts) for ok in result]
    return [results[unique[(c.key, c.to_be_signed, c.signature)]] for c in candidates]


def decide(candidate: Candidate, verified: bool, state: DeviceState,
           lookup: SeqLookup, *, at_ms: int | None = None) -> Outcome:
    """The stateful part: signature result, duplicates, replays, gaps and `prev` links.

    The common case (the next seq of a device) needs no lookup: `state.last_hash` holds the
    hash of the device's highest committed envelope.
    """
    reading = candidate.reading
    dev = reading.dev
    if not verified:
        return Rejected(BAD_SIGNATURE, "ES256 signature does not verify with the device key", dev)
    envelope_hash = candidate.chain_hash
    if reading.seq <= state.last_seq:
        seen = lookup(dev, reading.seq)
        if seen == envelope_hash:
            return Duplicate(dev, reading.seq)
        if seen is not None:
            return Rejected(REPLAY_CONFLICT,
                            f"seq {reading.seq} already committed with other bytes", dev)
    return Accepted(reading, envelope_hash, _flags(reading, state, lookup, at_ms))


def validate_envelope(
    data: bytes,
    topic: DeviceTopic | None,
    devices: Mapping[str, DeviceState],
    lookup: SeqLookup,
    *,
    at_ms: int | None = None,
    max_envelope: int = 64 * 1024,
) -> Outcome:
    """Decide what happens to one envelope. Never raises for bad input."""
    candidate = precheck(data, topic, devices, at_ms=at_ms, max_envelope=max_envelope)
    if isinstance(candidate, Rejected):
        return candidate
    state = devices[candidate.reading.dev]
    return decide(candidate, verify_candidates([candidate])[0], state, lookup, at_ms=at_ms)


def clock_skewed(device_ms: int, ledger_ms: int | None) -> bool:
    return ledger_ms is not None and abs(device_ms - ledger_ms) > MAX_CLOCK_SKEW_MS


def _flags(reading: Reading, state: DeviceState, lookup: SeqLookup,
           at_ms: int | None = None) -> tuple[str, ...]:
    flags: list[str] = []
    if reading.seq > state.last_seq + 1:
        flags.append(FLAG_GAP)
    elif reading.seq <= state.last_seq:
        flags.append(FLAG_LATE)
    expected: bytes | None
    if reading.seq == 1:
        expected = GENESIS_PREV
    elif reading.seq == state.last_seq + 1 and state.last_hash is not None:
        expected = state.last_hash
    else:
        expected = lookup(reading.dev, reading.seq - 1)
    if expected is not None and expected != reading.prev:
        flags.append(FLAG_PREV_MISMATCH)
    if clock_skewed(reading.t, at_ms):
        flags.append(FLAG_CLOCK_SKEW)
    return tuple(flags)
