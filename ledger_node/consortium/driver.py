"""The consortium side of a ledger node (`ordering = "etcd"`): propose, follow, sign, finalise.

Threads (the node's ingest loop, `LedgerNode.run`, is the proposer):
  * the proposer (the node's run loop): `propose()` stamps a batch with the node's clock
    (never decreasing), splits it under `etcd_max_batch_bytes`, and puts each part at the
    chain's `log` key: etcd's revision is the order;
  * the watcher: one etcd watch over the chain's keys from the applied revision + 1; it only
    queues events (bounded: a slow applier pushes back on etcd, not on memory);
  * the applier: the only user of the writer store and the HSM signer. In revision order it
    applies each batch with `Chain.apply` (every entry re-validated: the proposer is not
    trusted), storing the revision in the block's transaction (ConsortiumStore); it posts its
    signatures over the new headers at `sigs/{node}`, checks the others' signatures against
    the node set (ledger_node.quorum), keeps them in `block_sigs`, and tracks finality:
    a block is final when a quorum signed it; receipts for the batches this node proposed go
    out when their block is final, carrying the quorum certificate;
  * housekeeping: posts this node's progress at `applied/{node}` and compacts etcd up to the
    revision every node has applied (or `etcd_retain_revisions` behind the head, so a node
    that is down does not stop compaction for good: it catches up from its peers).

A peer's signature over another header than ours at a height is recorded as a disagreement;
when a quorum signed another header, this node has diverged: it stops applying and signing,
and its status shows both headers (consortium_evidence). Two different headers signed by one
node at one height are kept as equivocation evidence. Ledger time: a batch stamped further
from this node's clock than `max_clock_skew_ms` (checked when the batch arrives live, not
while catching up) is applied — the log is the log — but not signed (a `time_refused`
alert), so it is final only if enough other nodes vouch for it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ledger_node.block import block_hash
from ledger_node.chain import ApplyResult, Message, OrderedBatch, quarantine_row
from ledger_node.consortium.codec import (
    SIGS_DIR,
    Keys,
    Progress,
    batch_size_estimate,
    decode_batch,
    decode_progress,
    decode_sigs,
    encode_batch,
    encode_progress,
    encode_sigs,
)
from ledger_node.consortium.cstore import (
    DISAGREEMENT,
    DIVERGENCE,
    EQUIVOCATION,
    TIME_REFUSED,
    ConsortiumStore,
    changes_node_set,
    node_set_history_of,
)
from ledger_node.consortium.errors import (
    BatchDecodeError,
    ConsortiumError,
    DivergenceError,
    EtcdCompacted,
    EtcdError,
)
from ledger_node.consortium.etcd import EtcdClient, WatchEvent, prefix_end
from ledger_node.ordering import wall_clock_ms
from ledger_node.quorum import NodeSet, NodeSetHistory
from trustfleet.errors import TOO_LARGE
from trustfleet.receipt import Receipt
from trustfleet.topics import receipt_topic

if TYPE_CHECKING:
    from ledger_node.node import AdminSubmission, LedgerNode

log = logging.getLogger("trustfleet.consortium")

QUEUE_EVENTS = 256
PUT_RETRIES = 5
PROGRESS_EVERY_S = 2.0
COMPACT_EVERY_S = 10.0
MAX_PENDING_HEIGHTS = 100_000
POST_EVERY_S = 0.02


@dataclass
class _Proposal:
    futures: list[Future[AdminSubmission]] = field(default_factory=list)


@dataclass
class _Queued:
    event: WatchEvent | None
    header_revision: int
    received_ms: int
    compacted: EtcdCompacted | None = None


class Consortium:
    """See the module doc. `node` is the LedgerNode whose chain, store and signer it drives."""

    def __init__(self, node: LedgerNode, client: EtcdClient | None = None) -> None:
        cfg = node.cfg
        self.node = node
        self.cfg = cfg
        store = node.store
        if not isinstance(store, ConsortiumStore):
            raise ConsortiumError("the consortium needs the node's ConsortiumStore")
        self.store: ConsortiumStore = store
        self.keys = Keys(cfg.etcd_prefix, cfg.chain)
        self.etcd = client or EtcdClient(cfg.etcd_endpoint_list)
        self.node_sets: NodeSetHistory | None = None
        self.stop_event = threading.Event()
        self._events: queue.Queue[_Queued] = queue.Queue(QUEUE_EVENTS)
        self._sig_events: queue.SimpleQueue[_Queued] = queue.SimpleQueue()
        self._resume = threading.Event()
        self._resume_at = 0
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stamp = 0
        self._mine: dict[int, _Proposal] = {}
        self._done: dict[int, ApplyResult] = {}
        self._to_post: list[tuple[int, bytes, bytes]] = []
        self._next_post = 0.0
        self._votes: dict[int, set[str]] = {}
        self._against: dict[int, dict[bytes, set[str]]] = {}
        self._receipts: dict[int, dict[str, tuple[str, int, int]]] = {}
        self._early: dict[int, list[tuple[str, bytes, bytes]]] = {}
        self._deferred: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.final_height = -1
        self.applied_revision = self.store.applied_revision()
        self.halted: DivergenceError | None = None
        self.peers: dict[str, Progress] = {}
        self.proposed = 0
        self.refused_time = 0
        self.last_error = ""
        self.compacted_to = 0
        self._load_node_set()

    # -- start and stop -------------------------------------------------------------------------

    @property
    def node_set(self) -> NodeSet | None:
        """The node set in force for the next block (None before genesis)."""
        return self.node_sets.latest if self.node_sets is not None else None

    def _set_at(self, height: int) -> NodeSet | None:
        """The node set that certifies block `height` (ledger_node.quorum.NodeSetHistory)."""
        return self.node_sets.at(height) if self.node_sets is not None else None

    def _load_node_set(self) -> None:
        """(Re)read the node set history from the store: at start, after genesis, and after
        a block that carries a `node_set_changed` entry (in force from the next block)."""
        genesis = self.store.entry(0)
        tip = self.store.tip()
        if genesis is None:
            return
        self.node_sets = node_set_history_of(self.store.conn)
        if tip is not None:  # below final_height, votes no longer count (_vote)
            for h in range(max(0, tip.height - 200, self.final_height + 1), tip.height + 1):
                self._count_votes(h)

    def start(self) -> None:
        """Start watching from the applied revision + 1, and applying."""
        self._resume_at = self.applied_revision + 1
        self._resume.set()
        for name, target in (("etcd-watch", self._watch_loop),
                             ("etcd-watch-sigs", self._watch_sigs_loop),
                             ("consortium-apply", self._apply_loop),
                             ("consortium-housekeeping", self._housekeeping_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self.stop_event.set()
        self.etcd.close()
        for t in self._threads:  # the watcher may sit in a read until its idle timeout
            t.join(timeout=1 if t.name.startswith("etcd-watch") else 30)

    def log_is_empty(self) -> bool:
        """True if nothing was ever proposed on this chain (the log key was never written)."""
        _, kvs = self.etcd.get_range(self.keys.log)
        return not kvs

    def defer(self, action: Callable[[], None]) -> None:
        """Run `action` on the applier thread (store writes from other threads go here)."""
        self._deferred.put(action)

    # -- proposing (the node's run loop) --------------------------------------------------------

    def propose(self, admin: Sequence[bytes], messages: Sequence[Message],
                audit: Sequence[bytes] = (), *, heartbeat: bool = False,
                futures: Sequence[Future[AdminSubmission]] = ()) -> list[int]:
        """Put one batch (in parts under the size limit) on the log; returns the revisions.

        A message too large for any part is quarantined here (too_large); admin futures are
        answered when their batch is applied (or with the error if it cannot be proposed)."""
        limit = self.cfg.etcd_max_batch_bytes
        parts: list[list[Message]] = [[]]
        size = sum(len(a) + 16 for a in admin) + sum(len(a) + 16 for a in audit) + 256
        too_large: list[Message] = []
        for msg in messages:
            cost = batch_size_estimate(msg.topic, msg.payload)
            if cost + 256 > limit:
                too_large.append(msg)
                continue
            if size + cost > limit and parts[-1]:
                parts.append([])
                size = 256
            parts[-1].append(msg)
            size += cost
        if too_large:
            self._quarantine_too_large(too_large, limit)
        revisions: list[int] = []
        for i, part in enumerate(parts):
            first = i == 0
            if not part and not first:
                continue
            batch = OrderedBatch(time=self._next_stamp(), proposer=self.cfg.node_id,
                                 admin=tuple(admin) if first else (), messages=tuple(part),
                                 audit=tuple(audit) if first else (),
                                 heartbeat=heartbeat and first)
            if not (batch.admin or batch.messages or batch.audit or batch.heartbeat):
                continue
            try:
                rev = self._put(encode_batch(batch))
            except EtcdError as exc:
                self.last_error = str(exc)
                log.error("could not propose a batch of %d message(s): %s (devices resend "
                          "what is not receipted)", len(part), exc)
                if first:
                    for f in futures:
                        f.set_exception(exc)
                continue
            revisions.append(rev)
            self.proposed += 1
            proposal = _Proposal(list(futures) if first else [])
            with self._lock:
                done = self._done.pop(rev, None)
                if done is None:
                    self._mine[rev] = proposal
            if done is not None:
                self._answer(proposal, done)
        return revisions

    def _next_stamp(self) -> int:
        with self._lock:
            self._stamp = max(self._stamp, wall_clock_ms(), self.node.chain.time)
            return self._stamp

    def _put(self, value: bytes) -> int:
        delay = 0.2
        for attempt in range(PUT_RETRIES):
            try:
                return self.etcd.put(self.keys.log, value)
            except EtcdError:
                if attempt == PUT_RETRIES - 1 or self.stop_event.is_set():
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise EtcdError("unreachable")

    def _quarantine_too_large(self, msgs: list[Message], limit: int) -> None:
        rows = [quarantine_row(m, m.payload, TOO_LARGE, f"{len(m.payload)} bytes: larger than a "
                               f"consortium batch may be ({limit})", None) for m in msgs]
        self.defer(lambda: self.store.add_quarantine(rows))

    # -- watching (watcher thread) --------------------------------------------------------------

    def _watch_loop(self) -> None:
        backoff = 0.2
        while not self.stop_event.is_set():
            if not self._resume.wait(timeout=0.5):
                continue
            start = self._resume_at
            try:
                for wb in self.etcd.watch(self.keys.log, start):
                    now = wall_clock_ms()
                    for ev in wb.events:
                        self._enqueue(_Queued(ev, wb.header_revision, now))
                        start = ev.revision + 1
                    if self.stop_event.is_set():
                        return
                self._resume_at = start
                backoff = 0.2
            except EtcdCompacted as exc:
                self._resume.clear()  # the applier catches up from peers, then resumes us
                self._enqueue(_Queued(None, 0, wall_clock_ms(), exc))
            except EtcdError as exc:
                self._resume_at = start
                self.last_error = str(exc)
                log.warning("etcd watch: %s; retrying in %.1f s", exc, backoff)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _watch_sigs_loop(self) -> None:
        """Signature posts have their own watch, so that finality does not wait behind the
        batches this node has still to apply (signatures for blocks it has not applied yet
        are kept until it has)."""
        start = self.applied_revision + 1
        backoff = 0.2
        while not self.stop_event.is_set():
            try:
                for wb in self.etcd.watch(self.keys.root + SIGS_DIR.encode(), start):
                    now = wall_clock_ms()
                    for ev in wb.events:
                        self._sig_events.put(_Queued(ev, wb.header_revision, now))
                        start = ev.revision + 1
                    if self.stop_event.is_set():
                        return
                backoff = 0.2
            except EtcdCompacted as exc:
                log.warning("signatures before revision %d were compacted away: those blocks' "
                            "certificates come from later blocks or peers", exc.compact_revision)
                start = exc.compact_revision
            except EtcdError as exc:
                self.last_error = str(exc)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _enqueue(self, item: _Queued) -> None:
        while not self.stop_event.is_set():
            try:
                self._events.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    # -- applying (applier thread) --------------------------------------------------------------

    def _apply_loop(self) -> None:
        try:
            while not self.stop_event.is_set():
                self._run_deferred()
                self._take_signatures()
                try:
                    item = self._events.get(timeout=0.02)
                except queue.Empty:
                    self._post_sigs()
                    continue
                if self.halted is not None:
                    continue
                if item.compacted is not None:
                    self._catch_up(item.compacted)
                elif item.event is not None:
                    self._on_event(item)
                if self._events.empty() or time.monotonic() >= self._next_post:
                    self._post_sigs()  # at once when idle, at least every POST_EVERY_S
        except Exception:
            log.exception("the consortium applier failed; stopping the node")
            self.node.stop_event.set()
            raise

    def _take_signatures(self) -> None:
        while self.halted is None:
            try:
                item = self._sig_events.get_nowait()
            except queue.Empty:
                return
            if item.event is not None:
                self._on_event(item)

    def _run_deferred(self) -> None:
        while True:
            try:
                action = self._deferred.get_nowait()
            except queue.Empty:
                return
            action()

    def _on_event(self, item: _Queued) -> None:
        ev = item.event
        assert ev is not None
        kind, who = self.keys.kind(ev.key)
        if kind == "log" and not ev.deleted:
            if ev.revision > self.applied_revision:
                self._apply_batch(ev, item)
        elif kind == "sigs" and not ev.deleted:
            try:
                posted = decode_sigs(ev.value)
            except BatchDecodeError as exc:
                log.warning("ignoring a malformed signature post at %s: %s", who, exc)
                return
            if posted.node != who:
                log.warning("ignoring signatures of %r posted under %r", posted.node, who)
                return
            for height, header, sig in posted.sigs:
                self._on_signature(posted.node, height, header, sig)

    def _apply_batch(self, ev: WatchEvent, item: _Queued) -> None:
        try:
            batch = decode_batch(ev.value)
        except BatchDecodeError as exc:
            log.warning("revision %d: not a batch (%s); skipped by every node alike",
                        ev.revision, exc)
            self.store.mark_applied(ev.revision)
            self.applied_revision = ev.revision
            return
        started = time.perf_counter()
        height_before = self.node.chain.height
        self.store.pending_revision = ev.revision
        result = self.node.chain.apply(batch)
        if self.store.pending_revision is not None:  # nothing written: advance alone
            self.store.mark_applied(ev.revision)
        self.applied_revision = ev.revision
        self.node._account(result, started)
        if result.header is not None:
            if self.node_set is None and height_before < 0:
                self._load_node_set()
            elif changes_node_set(result):
                self._load_node_set()
                log.info("block %d changes the node set: from block %d it is %s",
                         result.header.height, result.header.height + 1,
                         ", ".join(self.node_set.keys) if self.node_set else "?")
            self._signed_block(result, batch, item)
        with self._lock:
            proposal = self._mine.pop(ev.revision, None)
            if proposal is None and batch.proposer == self.cfg.node_id:
                self._done[ev.revision] = result
                while len(self._done) > 1000:
                    self._done.pop(next(iter(self._done)))
        if proposal is not None:
            self._answer(proposal, result)

    def _answer(self, proposal: _Proposal, result: ApplyResult) -> None:
        """Admin futures, and receipts (when final) for what this node proposed."""
        from ledger_node.node import AdminSubmission

        height = result.header.height if result.header is not None else None
        for done, outcome in zip(proposal.futures, result.admin, strict=False):
            if not done.done():
                done.set_result(AdminSubmission(
                    status=outcome.status, kind=outcome.kind, device=outcome.dev,
                    reason=outcome.reason, detail=outcome.detail,
                    height=height if outcome.status == "accepted" else None))
        if result.touched:
            self.defer(lambda: self._queue_receipts(result.touched))

    def _queue_receipts(self, devices: set[str]) -> None:
        at = self.node.chain.height
        pending = self._receipts.setdefault(at, {})
        for dev in devices:
            state = self.node.chain.devices.get(dev)
            if state is not None:
                pending[dev] = (state.fleet, state.contiguous_seq, state.last_seq)
        self._publish_final_receipts()

    def _signed_block(self, result: ApplyResult, batch: OrderedBatch, item: _Queued) -> None:
        header = result.header
        assert header is not None and result.header_bytes is not None
        assert result.signature is not None
        h = header.height
        if h in self._early:
            for node, hb, sig in self._early.pop(h):
                self._on_signature(node, h, hb, sig)
        refused = self._time_problem(batch.time, header.time, item)
        if refused:
            self.refused_time += 1
            log.warning("block %d: not signing: %s", h, refused)
            self.store.add_evidence(TIME_REFUSED, batch.proposer, h, wall_clock_ms(), refused,
                                    (result.header_bytes, None))
            return
        self._to_post.append((h, result.header_bytes, result.signature))
        self._vote(h, self.cfg.node_id)

    def _time_problem(self, stamped: int, header_time: int, item: _Queued) -> str:
        """Why this node will not sign a block with these times ("" if it will)."""
        skew = self.cfg.max_clock_skew_ms
        live = item.header_revision - (item.event.revision if item.event else 0) <= 200
        now = item.received_ms
        if header_time > now + skew:
            return (f"ledger time {header_time} is {header_time - now} ms ahead of this "
                    f"node's clock (max_clock_skew_ms {skew})")
        if live and stamped < now - skew:
            return (f"the batch was stamped {stamped}, {now - stamped} ms behind this node's "
                    f"clock when it arrived (max_clock_skew_ms {skew})")
        return ""

    # -- signatures and finality ----------------------------------------------------------------

    def _post_sigs(self) -> None:
        self._next_post = time.monotonic() + POST_EVERY_S
        if not self._to_post or self.halted is not None:
            return
        posting, self._to_post = self._to_post[-500:], []
        try:
            self.etcd.put(self.keys.sigs(self.cfg.node_id),
                          encode_sigs(self.cfg.node_id, posting))
        except EtcdError as exc:
            self.last_error = str(exc)
            log.warning("could not post %d signature(s): %s; retrying", len(posting), exc)
            self._to_post = posting + self._to_post

    def _on_signature(self, node: str, height: int, header: bytes, sig: bytes) -> None:
        if height > self.node.chain.height:
            # Not applied yet: the node set in force there may still change; check it then.
            if len(self._early) < MAX_PENDING_HEIGHTS or height in self._early:
                self._early.setdefault(height, []).append((node, header, sig))
            return
        ns = self._set_at(height)
        assert ns is not None  # the block is applied, so genesis is: the history is loaded
        if node not in ns.keys:
            log.warning("signature by %r, which is not in the node set: ignored", node)
            return
        if not ns.verify(node, header, sig):
            log.warning("signature by %r over block %d does not verify: ignored", node, height)
            return
        other = self.store.seen(node, height, header, sig)
        if other is not None:
            log.error("EQUIVOCATION: node %r signed two different headers at height %d",
                      node, height)
            self.store.add_evidence(EQUIVOCATION, node, height, wall_clock_ms(),
                                    f"node {node!r} signed two different headers at height "
                                    f"{height}", other, (header, sig))
        if node == self.cfg.node_id:
            return
        ours = self.store.header(height)
        if ours is None:
            return
        if header == ours:
            self.store.add_signatures(height, [(node, sig)])
            self._vote(height, node)
            return
        theirs = block_hash(header)
        against = self._against.setdefault(height, {}).setdefault(theirs, set())
        if node not in against:
            against.add(node)
            log.error("block %d: node %r signed header %s…, this node computed %s…", height,
                      node, theirs.hex()[:16], block_hash(ours).hex()[:16])
            self.store.add_evidence(DISAGREEMENT, node, height, wall_clock_ms(),
                                    f"node {node!r} signed another header at height {height}",
                                    (ours, None), (header, sig))
        if len(against) >= ns.quorum:
            self._diverged(height, ours, header)

    def _diverged(self, height: int, ours: bytes, theirs: bytes) -> None:
        err = DivergenceError(height, block_hash(ours), block_hash(theirs),
                              "a quorum signed the other header: this node stops signing")
        self.halted = err
        self._to_post.clear()
        log.critical("DIVERGED at block %d: %s", height, err)
        self.store.add_evidence(DIVERGENCE, self.cfg.node_id, height, wall_clock_ms(), str(err),
                                (ours, None), (theirs, None))

    def _count_votes(self, height: int) -> None:
        ns = self._set_at(height)
        block = self.store.block_header(height)
        if ns is None or block is None:
            return
        header, sigs = block
        for node, sig in sigs:
            if ns.verify(node, header, sig):
                self._vote(height, node, publish=False)

    def _vote(self, height: int, node: str, *, publish: bool = True) -> None:
        ns = self._set_at(height)
        if ns is None or node not in ns.keys or height <= self.final_height:
            return
        votes = self._votes.setdefault(height, set())
        votes.add(node)
        if len(votes) >= ns.quorum:
            self.final_height = height
            for h in [h for h in self._votes if h <= height]:
                del self._votes[h]
            for h in [h for h in self._against if h < height - 1000]:
                del self._against[h]
            if publish:
                self._publish_final_receipts()

    def _publish_final_receipts(self) -> None:
        final = self.final_height
        ready = sorted(h for h in self._receipts if h <= final)
        if not ready or final < 0:
            return
        stored = self.store.block_header(final)
        if stored is None:
            return
        header, sigs = stored
        merged: dict[str, tuple[str, int, int]] = {}
        for h in ready:
            merged.update(self._receipts.pop(h))
        block = block_hash(header)
        for dev in sorted(merged):
            fleet, seq, last = merged[dev]
            receipt = Receipt(dev=dev, seq=seq, last=last, height=final, block=block,
                              header=header, sigs=[{"node": n, "sig": s} for n, s in sigs],
                              final=True)
            self.node.client.publish(receipt_topic(fleet, dev), receipt.encode(), qos=1,
                                     retain=True)

    # -- catching up ----------------------------------------------------------------------------

    def _catch_up(self, exc: EtcdCompacted) -> None:
        from ledger_node.block_sync import SyncError, catch_up, read_peers

        log.warning("%s, past this node's revision %d: catching up from peers", exc,
                    self.applied_revision)
        delay = 1.0
        while not self.stop_event.is_set():
            try:
                if self.cfg.peers_file is None:
                    raise SyncError("no peers_file is configured to catch up from")
                report = catch_up(self.node.chain, self.store, read_peers(self.cfg.peers_file),
                                  self.cfg.node_set_file, stop=self.stop_event)
            except DivergenceError as err:
                self.halted = err
                log.critical("catching up: %s; this node stops applying", err)
                return
            except ConsortiumError as err:
                self.last_error = str(err)
                log.error("catching up failed: %s; retrying in %.0f s", err, delay)
                self.stop_event.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            self.applied_revision = self.store.applied_revision()
            self._load_node_set()  # the blocks caught up may have changed the node set
            log.info("caught up: %s; following etcd from revision %d", report,
                     self.applied_revision + 1)
            if self.applied_revision + 1 > exc.compact_revision:
                break
            exc = EtcdCompacted(exc.compact_revision)  # the peer is behind etcd: again
            self.stop_event.wait(delay)
        self._resume_at = self.applied_revision + 1
        self._resume.set()

    # -- housekeeping ---------------------------------------------------------------------------

    def _housekeeping_loop(self) -> None:
        last_posted = -1
        next_compact = time.monotonic() + COMPACT_EVERY_S
        while not self.stop_event.wait(PROGRESS_EVERY_S):
            rev = self.applied_revision
            try:
                if rev != last_posted and self.halted is None:
                    self.etcd.put(self.keys.applied(self.cfg.node_id), encode_progress(
                        Progress(self.cfg.node_id, rev, self.node.chain.height)))
                    last_posted = rev
                if time.monotonic() >= next_compact:
                    next_compact = time.monotonic() + COMPACT_EVERY_S
                    self._compact()
            except EtcdError as exc:
                self.last_error = str(exc)
                log.warning("housekeeping: %s", exc)

    def _compact(self) -> None:
        """Compact etcd up to what every node has applied (or retain_revisions behind)."""
        current, kvs = self.etcd.get_range(self.keys.applied_dir,
                                           prefix_end(self.keys.applied_dir))
        ns = self.node_set
        members = set(ns.keys) if ns is not None else set()
        applied: list[int] = []
        for kv in kvs:
            try:
                p = decode_progress(kv.value)
            except BatchDecodeError:
                continue
            if p.node in members and kv.key == self.keys.applied(p.node):
                applied.append(p.revision)
                self.peers[p.node] = p
        # Until every node has reported, keep everything for them... up to a point.
        floor = 0 if not applied or len(applied) < len(members) else min(applied)
        target = max(floor, current - self.cfg.etcd_retain_revisions)
        target = min(target, self.applied_revision)
        if target > self.compacted_to + 100 and self.etcd.compact(target):
            log.info("compacted etcd up to revision %d", target)
        self.compacted_to = max(self.compacted_to, target)

    # -- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        ns = self.node_set
        return {"ordering": "etcd", "applied_revision": self.applied_revision,
                "final_height": self.final_height, "proposed_batches": self.proposed,
                "node_set": sorted(ns.keys) if ns else [],
                "quorum": ns.quorum if ns else None,
                "diverged": None if self.halted is None else {
                    "height": self.halted.height, "ours": self.halted.ours.hex(),
                    "quorum": self.halted.theirs.hex(), "detail": str(self.halted)},
                "time_refused": self.refused_time, "last_error": self.last_error,
                "peers": {n: {"revision": p.revision, "height": p.height}
                          for n, p in sorted(self.peers.items())},
                "compacted_to": self.compacted_to}

