"""Applying ordered batches to the chain: validate, append, cut and sign a block.

`Chain.apply(batch)` is deterministic in the batch and the committed log (DESIGN.md §5):
ledger time comes from the batch, iteration follows batch order, and no clock or randomness
is read. The only side effects are the store transaction and the node's signature. Where
envelopes are parsed and signatures checked (the executor: worker processes or none) and
what was opened ahead of time (`prefetch`) never change a block (tests/test_parallel_verify.py).

The block's transaction also stores the hash of every perfect subtree of 16 or more leaves its
entries complete (`merkle_nodes`, see ledger_node.subtrees), so that a proof against any head
is a few lookups and at most 15 entries hashed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from hsm import Signer, verify_es256
from hsm.certcheck import load_ca_anchor
from hsm.errors import CaCertificateInvalid
from ledger_node import entries as entry_types
from ledger_node.admin import (
    BUSINESS_TYPES,
    CONSORTIUM_TYPES,
    AdminRejected,
    apply_operator_entry,
    check_node_set_change,
    decode_operator_entry,
    decode_operator_entry_unchecked,
    is_operator_entry,
)
from ledger_node.block import ZERO_HASH, BlockHeader
from ledger_node.consortium.errors import DivergenceError, QuorumError
from ledger_node.contracts import ContractEvent, ReadingFact
from ledger_node.errors import LedgerError, TamperError
from ledger_node.merkle import CompactRange, leaf_hash
from ledger_node.quorum import node_set_from_genesis
from ledger_node.store import BlockRecord, QuarantineRow, ReadingRow, Store
from ledger_node.subtrees import append_leaves
from ledger_node.validate import (
    FLAG_GAP,
    FLAG_PREV_MISMATCH,
    MAX_CLOCK_SKEW_MS,
    MAX_ENVELOPE,
    ROW_FIELDS,
    DeviceState,
    Duplicate,
    KeyHint,
    OpenedRow,
    Rejected,
    SeqLookup,
    check_reading,
    decide,
    key_hint,
    open_envelopes,
    reopen,
)
from ledger_node.world import AUDIT, CONTRACT_EVENT, World, check_audit_entry, event_entry
from ledger_node.world_replay import replay_world
from trustfleet.errors import BAD_PAYLOAD, WireError
from trustfleet.topics import DeviceTopic, parse_up_topic, split_message

log = logging.getLogger(__name__)

QUARANTINE_RAW_LIMIT = 64 * 1024


class Message(NamedTuple):
    """One MQTT message as received; `received` is the node clock, used only for quarantine.
    (A NamedTuple: the node makes one per message, tens of thousands a second.)"""

    topic: str
    payload: bytes
    received: int


@dataclass(frozen=True)
class OrderedBatch:
    """What the orderer hands every node: ledger time, proposer, admin entries, messages."""

    time: int
    proposer: str
    admin: Sequence[bytes] = ()
    messages: Sequence[Message] = ()
    audit: Sequence[bytes] = ()
    """Audit entries the node itself appends (ledger_node.world.audit_entry)."""
    heartbeat: bool = False
    """Cut a block even if nothing else is in it, so contract timers fire at this time."""


@dataclass
class ApplyResult:
    """What one batch did: the block (if any entries), and what to tell devices."""

    header: BlockHeader | None
    header_bytes: bytes | None
    block_hash: bytes | None
    signature: bytes | None
    accepted: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)
    admin: list[AdminOutcome] = field(default_factory=list)
    events: list[ContractEvent] = field(default_factory=list)


ADMIN_ACCEPTED = "accepted"
ADMIN_DUPLICATE = "duplicate"
ADMIN_REJECTED = "rejected"


@dataclass(frozen=True)
class AdminOutcome:
    """What became of one administrative entry; `state` is the device state it leads to."""

    entry_hash: bytes
    kind: str
    status: str
    reason: str = ""
    detail: str = ""
    dev: str | None = None
    state: DeviceState | None = None


@dataclass
class _Opening:
    """The envelopes of a batch of messages being opened (validate.open_envelopes)."""

    messages: Sequence[Message]
    slots: list[tuple[Message, bytes, DeviceTopic | None, Rejected | None]]
    hints: dict[str, KeyHint | None]
    opened: Iterator[OpenedRow]


class Chain:
    """The chain state of one node and the rule that extends it.

    `executor`: where envelopes are opened and signatures checked (validate.open_envelopes);
    blocks are the same without one. `may_prefetch`, if set, is called in `apply` when the
    next batch may be handed to the workers (`prefetch`): once this batch's envelopes are
    handed to them, so that the next is queued behind it, and again once all of them are
    opened, in case the next batch was not ready then, so that the workers keep busy while
    this block is signed and written. The node uses it to cut its next batch ahead.
    """

    def __init__(self, store: Store, chain_id: str, node_id: str, signer: Signer,
                 executor: Executor | None = None) -> None:
        self.store = store
        self.executor = executor
        self.may_prefetch: Callable[[], None] | None = None
        self._next: _Opening | None = None
        self.chain_id = chain_id
        self.node_id = node_id
        self.signer = signer
        self.devices: dict[str, DeviceState] = store.load_devices()
        for state in self.devices.values():
            state.last_hash = store.reading_hash(state.dev, state.last_seq)
        self.ca_cert: bytes | None = None
        self._rebuild_admin_state()
        self.world: World = replay_world(store, self.ca_cert)
        tip = store.tip()
        if tip is None:
            self.height, self.tip_hash, self.time = -1, ZERO_HASH, 0
            self.range = CompactRange()
        else:
            self.height, self.tip_hash, self.time = tip.height, tip.hash, tip.time
            self.range = CompactRange.from_bytes(tip.frontier)
            if self.range.size != tip.size:
                raise LedgerError(f"tip frontier size {self.range.size} != tree size {tip.size}")
        self.last_header: bytes | None = None
        self.last_signature: bytes | None = None
        if tip is not None:
            stored = store.block_header(tip.height)
            if stored is not None:
                own = [sig for node, sig in stored[1] if node == node_id]
                self.last_header = stored[0]
                self.last_signature = own[0] if own else None

    @property
    def size(self) -> int:
        return self.range.size

    def prefetch(self, messages: Sequence[Message], at_ms: int) -> None:
        """Start opening the envelopes of the batch that comes next (these messages, in this
        order), so that the workers are busy with it while the current block is decided and
        written.

        Whatever the next block turns out to be, its contents are those `apply` alone would
        give: the results are used only for the same messages, and a worker's signature check
        only if it was made with the key `apply`'s own checks pick (validate.check_reading)."""
        if self.executor is not None and messages:
            self._next = self._open(messages, self.devices, at_ms)

    def _open(self, messages: Sequence[Message], view: Mapping[str, DeviceState],
              at_ms: int) -> _Opening:
        slots: list[tuple[Message, bytes, DeviceTopic | None, Rejected | None]] = []
        work: list[tuple[bytes, KeyHint | None]] = []
        topics: dict[str, DeviceTopic | None] = {}
        hints: dict[str, KeyHint | None] = {}
        for msg in messages:
            if msg.topic in topics:
                topic, hint = topics[msg.topic], hints[msg.topic]
            else:
                topic = topics[msg.topic] = parse_up_topic(msg.topic)
                hint = hints[msg.topic] = key_hint(topic, view, at_ms=at_ms)
            try:
                envelopes = split_message(msg.payload)
            except WireError as exc:
                slots.append((msg, msg.payload, topic, Rejected(exc.reason, exc.detail, None)))
                continue
            for data in envelopes:
                slots.append((msg, data, topic, None))
                work.append((data, hint))
        return _Opening(messages, slots, hints,
                        open_envelopes(work, self.executor, max_envelope=MAX_ENVELOPE))

    def apply(self, batch: OrderedBatch, *, expect: bytes | None = None) -> ApplyResult:
        """Apply one ordered batch; commit a block if it produced any entry.

        `expect`: the hash the block must have (a block fetched from peers, re-applied to
        check it: ledger_node.block_sync). If the block computed differs, DivergenceError is
        raised before it is signed or written; the in-memory world may then be ahead of the
        store, so the chain must not be used further (a node stops)."""
        time = max(batch.time, self.time)
        pending: dict[tuple[str, int], bytes] = {}
        devices: dict[str, DeviceState] = {}

        def lookup(dev: str, seq: int) -> bytes | None:
            got = pending.get((dev, seq))
            return got if got is not None else self.store.reading_hash(dev, seq)

        def state_of(dev: str) -> DeviceState:
            if dev not in devices:
                devices[dev] = replace(self.devices[dev])
            return devices[dev]

        view = _Overlay(self.devices, devices)
        new_entries: list[tuple[str, bytes]] = []
        readings: list[ReadingRow] = []
        facts: list[ReadingFact] = []  # what contracts see of them, if any contract exists
        quarantine: list[QuarantineRow] = []
        result = ApplyResult(None, None, None, None)
        first = self.range.size
        height = self.height + 1

        for entry in batch.admin:
            done = self._admin(entry, view, height, time, first + len(new_entries),
                               empty_chain=first == 0 and not new_entries)
            result.admin.append(done)
            if done.state is not None:
                devices[done.state.dev] = done.state
            if done.status == ADMIN_ACCEPTED:
                new_entries.append((done.kind, entry))
            elif done.status == ADMIN_REJECTED:
                quarantine.append(quarantine_row(Message("admin", entry, batch.time), entry,
                                              done.reason, done.detail, done.dev))
                result.rejected[done.reason] = result.rejected.get(done.reason, 0) + 1
        for entry in batch.audit:
            try:
                check_audit_entry(entry_types.decode_admin(entry))
            except (ValueError, WireError) as exc:
                log.error("audit entry refused (a node bug): %s", exc)
                continue
            self.world.audit(first + len(new_entries), entry)
            new_entries.append((AUDIT, entry))

        # Each envelope is parsed and checked without history (validate.check_reading), its
        # signature checked, then, in batch order, checked against the device's history
        # (validate.decide). With an executor, parsing and signatures run in parallel chunks
        # (validate.open_envelopes): workers open the envelopes and check each signature with
        # the key its topic's device would need; results stream back in batch order while
        # this loop goes on. A signature the workers did not check is checked here.
        ahead, self._next = self._next, None
        if ahead is not None and len(ahead.messages) == len(batch.messages) and all(
                a is b for a, b in zip(ahead.messages, batch.messages, strict=True)):
            opening = ahead  # opened while the previous block was written
        else:
            opening = self._open(batch.messages, view, time)
        rows, hints = opening.opened, opening.hints
        if self.may_prefetch is not None:
            self.may_prefetch()
        reading_leaves: dict[int, bytes] = {}  # leaf hashes the workers made, by position

        def refuse(msg: Message, raw: bytes, why: Rejected) -> None:
            quarantine.append(quarantine_row(msg, raw, why.reason, why.detail, why.dev))
            result.rejected[why.reason] = result.rejected.get(why.reason, 0) + 1

        # What check_reading said of (topic, device, kid, low-S) in this batch: the key the
        # signature must verify with, or why not. It reads only what readings never change
        # (fleet, revocation, keys, certificate dates); admin entries were applied above.
        checked: dict[tuple[str, str, bytes, bool], bytes | Rejected] = {}
        with_facts = self.world.active
        skew_from, skew_to = time - MAX_CLOCK_SKEW_MS, time + MAX_CLOCK_SKEW_MS
        for msg, raw, topic, failed in opening.slots:
            if failed is not None:
                refuse(msg, raw, failed)
                continue
            row = next(rows)
            if len(row) != ROW_FIELDS:  # it did not open: (reason, detail)
                refuse(msg, raw, Rejected(row[0], row[1], topic.device if topic else None))
                continue
            dev, seq, prev, t, ts, k, d, d_json, kid, chain_hash, leaf, low_s, ok, tbs, sig = row
            memo = (msg.topic, dev, kid, low_s)
            key = checked.get(memo)
            if key is None:
                state = check_reading(dev, kid, low_s, topic, view, time)
                key = checked[memo] = state if isinstance(state, Rejected) else state.key
            if isinstance(key, Rejected):
                refuse(msg, raw, key)
                continue
            hint = hints[msg.topic]
            if ok is None or hint is None or hint[1] != key:
                if tbs is None:
                    tbs, sig = reopen(raw, MAX_ENVELOPE)
                ok = verify_es256(key, tbs, sig)
            current = devices.get(dev) or state_of(dev)
            flags: tuple[str, ...]
            if ok and seq == current.last_seq + 1 and prev == current.last_hash \
                    and skew_from <= t <= skew_to:
                # The common case, the device's next reading in order, for which `decide`
                # gives no flags, and its `_advance`, without the four calls they make
                # (Python calls are most of this loop's cost per reading).
                # tests/test_chain_fast_path.py holds the two ways equal.
                flags = ()
                current.readings += 1
                current.last_seen = time
                current.last_seq, current.last_t, current.last_hash = seq, t, chain_hash
                if seq == current.contiguous_seq + 1:
                    current.contiguous_seq = seq
            else:
                decided = decide(dev, seq, prev, t, chain_hash, ok, current, lookup, at_ms=time)
                if not isinstance(decided, tuple):
                    if isinstance(decided, Duplicate):
                        result.duplicates += 1
                        result.touched.add(dev)
                    else:
                        refuse(msg, raw, decided)
                    continue
                flags = decided
                _advance(current, seq, t, time, flags, chain_hash, lookup)
            idx = first + len(new_entries)
            reading_leaves[len(new_entries)] = leaf
            new_entries.append((entry_types.KIND_READING, raw))
            pending[(dev, seq)] = chain_hash
            readings.append((idx, dev, seq, chain_hash, t, ts, k, d_json, ",".join(flags),
                             height, time))
            if with_facts:
                facts.append(ReadingFact(idx, dev, seq, t, k, d, time))
            result.accepted += 1
            result.touched.add(dev)

        if self.may_prefetch is not None:  # the workers are done with this batch
            self.may_prefetch()

        # Contracts see the block's readings in log order, then its ledger time; the events
        # they emit are appended after everything else (ledger_node.world).
        events: list[tuple[int, ContractEvent]] = []
        if new_entries or batch.heartbeat:
            world = self.world
            for fact in facts:
                world.reading(fact)
            world.tick(time)
            for event in world.take_events():
                idx = first + len(new_entries)
                new_entries.append((CONTRACT_EVENT, event_entry(event)))
                world.record_event(event, idx, time)
                events.append((idx, event))
                result.events.append(event)
        if not new_entries and not batch.heartbeat:
            if quarantine:
                self.store.add_quarantine(quarantine)
            return result

        new_range, nodes = append_leaves(self.range, [
            reading_leaves.get(i) or leaf_hash(data) for i, (_, data) in enumerate(new_entries)])
        header = BlockHeader(chain=self.chain_id, height=height, time=time, prev=self.tip_hash,
                             first=first, count=len(new_entries), size=new_range.size,
                             root=new_range.root(), proposer=batch.proposer)
        header_bytes = header.encode()
        block_hash = hashlib.sha256(header_bytes).digest()
        if expect is not None and block_hash != expect:
            raise DivergenceError(height, block_hash, expect, "re-applying the block's entries "
                                  "gives another header")
        signature = self.signer.sign(header_bytes)
        self.store.commit_block(BlockRecord(
            height=height, hash=block_hash, header=header_bytes, time=time, first=first,
            count=len(new_entries), size=new_range.size, frontier=new_range.to_bytes(),
            sigs=[(self.node_id, signature)], entries=new_entries, readings=readings,
            devices=list(devices.values()), quarantine=quarantine, nodes=nodes,
            world=self.world.delta(height, events)))
        self.devices.update(devices)
        self.range = new_range
        self.height, self.tip_hash, self.time = height, block_hash, time
        self.last_header, self.last_signature = header_bytes, signature
        result.header, result.header_bytes = header, header_bytes
        result.block_hash, result.signature = block_hash, signature
        return result


    def _admin(self, entry: bytes, view: Mapping[str, DeviceState], height: int, time: int,
               index: int, *, empty_chain: bool) -> AdminOutcome:
        """Check one administrative entry at ledger time `time`; never raises for bad input."""
        entry_hash = hashlib.sha256(entry).digest()
        try:
            kind = entry_types.admin_kind(entry)
        except (ValueError, WireError) as exc:
            return AdminOutcome(entry_hash, "unknown", ADMIN_REJECTED, BAD_PAYLOAD, str(exc))
        if kind == entry_types.GENESIS:
            if not empty_chain:
                return AdminOutcome(entry_hash, kind, ADMIN_REJECTED, BAD_PAYLOAD,
                                    "a genesis entry can only start an empty chain")
            ca = entry_types.decode_admin(entry).get("ca")
            if ca is not None:
                try:
                    load_ca_anchor(ca)
                except (CaCertificateInvalid, TypeError) as exc:
                    return AdminOutcome(entry_hash, kind, ADMIN_REJECTED, "bad_fleet_ca",
                                        f"genesis names an unusable fleet CA: {exc}")
            problem = _node_set_problem(entry_types.decode_admin(entry), time)
            if problem:
                return AdminOutcome(entry_hash, kind, ADMIN_REJECTED, "bad_node_set", problem)
            self.ca_cert = ca
            return AdminOutcome(entry_hash, kind, ADMIN_ACCEPTED)
        if entry[:1] and 0xA0 <= entry[0] <= 0xBF:
            return AdminOutcome(entry_hash, kind, ADMIN_REJECTED, BAD_PAYLOAD,
                                "only a genesis entry may be written by a node")
        try:
            op = decode_operator_entry(entry, self.ca_cert, time)
            # three owners: the node set (ledger_node.quorum; in force from the next block),
            # the business world (shipments, contracts), the device registry (admin)
            if op.type in CONSORTIUM_TYPES:
                genesis = self.store.entry(0)
                check_node_set_change(op, entry_types.decode_admin(genesis) if genesis else None,
                                      time)
                return AdminOutcome(entry_hash, kind, ADMIN_ACCEPTED)
            if op.type in BUSINESS_TYPES:
                self.world.operator(op, index, height, time)
                return AdminOutcome(entry_hash, kind, ADMIN_ACCEPTED)
            applied = apply_operator_entry(op, view, self.ca_cert or b"", height, time)
        except AdminRejected as exc:
            return AdminOutcome(entry_hash, kind, ADMIN_REJECTED, exc.reason, exc.detail,
                                dev=_dev_of(entry))
        status = ADMIN_DUPLICATE if applied.duplicate else ADMIN_ACCEPTED
        return AdminOutcome(entry_hash, kind, status, dev=applied.state.dev,
                            state=None if applied.duplicate else applied.state)

    def _rebuild_admin_state(self) -> None:
        """Certificate validity, retired keys and revocation times, replayed from the log."""
        genesis = self.store.entry(0)
        if genesis is None:
            return
        self.ca_cert = entry_types.decode_admin(genesis).get("ca")
        rebuilt: dict[str, DeviceState] = {}
        for data, height, time in self.store.admin_entries():
            if self.ca_cert is None or not is_operator_entry(data):
                continue
            try:
                op = decode_operator_entry(data, self.ca_cert, time)
                applied = apply_operator_entry(op, rebuilt, self.ca_cert, height, time)
            except AdminRejected as exc:
                raise TamperError(f"block {height}", "committed operator entry no longer "
                                  f"checks: {exc}") from None
            rebuilt[applied.state.dev] = applied.state
        for dev, derived in rebuilt.items():
            state = self.devices.get(dev)
            if state is not None:
                state.cert_not_before = derived.cert_not_before
                state.cert_not_after = derived.cert_not_after
                state.retired_kids = derived.retired_kids
                state.revoked_time = derived.revoked_time


def _node_set_problem(genesis: Mapping[str, object], time: int) -> str:
    """Why a consortium genesis entry's node set is unusable ("" if it is, or if the entry
    names none: a solo chain). See ledger_node.quorum."""
    if "nodes" not in genesis:
        return ""
    try:
        node_set_from_genesis(genesis, time)
    except QuorumError as exc:
        return str(exc)
    return ""


def _dev_of(entry: bytes) -> str | None:
    """The device a (possibly invalid) operator entry names, for its quarantine row."""
    try:
        dev = decode_operator_entry_unchecked(entry).get("dev")
    except WireError:
        return None
    return dev if isinstance(dev, str) else None


class _Overlay(dict[str, DeviceState]):
    """Committed device states, with the ones this batch changed laid over them."""

    def __init__(self, base: dict[str, DeviceState], changed: dict[str, DeviceState]) -> None:
        super().__init__()
        self.base, self.changed = base, changed

    def get(self, key: str, default: DeviceState | None = None) -> DeviceState | None:  # type: ignore[override]
        return self.changed.get(key) or self.base.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.changed or key in self.base


def _advance(state: DeviceState, seq: int, t: int, time: int, flags: tuple[str, ...],
             envelope_hash: bytes, find: SeqLookup) -> None:
    """Update a device's derived state for one accepted reading."""
    state.readings += 1
    state.last_seen = time
    if seq > state.last_seq:
        state.last_seq = seq
        state.last_t = t
        state.last_hash = envelope_hash
    if FLAG_GAP in flags:
        state.gaps += 1
    if FLAG_PREV_MISMATCH in flags:
        state.prev_mismatches += 1
    if seq == state.contiguous_seq + 1:
        state.contiguous_seq = seq
        # Readings that arrived early (after a gap) may continue the run.
        while state.contiguous_seq < state.last_seq and \
                find(state.dev, state.contiguous_seq + 1) is not None:
            state.contiguous_seq += 1


def quarantine_row(msg: Message, raw: bytes, reason: str, detail: str,
                   dev: str | None) -> QuarantineRow:
    """What the store keeps of a refused message: its reason, digest and first bytes."""
    return QuarantineRow(received=msg.received, reason=reason, detail=detail[:500],
                         topic=msg.topic[:256], dev=dev, size=len(raw),
                         sha256=hashlib.sha256(raw).digest(), raw=raw[:QUARANTINE_RAW_LIMIT])
