"""The ledger node process: MQTT ingest -> ordering -> block application -> receipts, plus API.

Threads and what they own:
  * paho's network thread: receives `up` messages and puts them in the ingest inbox
    (ledger_node.ingest: device lanes served round-robin, suspect input in idle time);
  * the apply thread (`run`): the only user of the writer store and of the HSM signer;
  * uvicorn's thread: serves the API from read-only store connections.
A message is acknowledged to the broker when it is queued (or, when suspect input overflows,
counted in the quarantine summary); a device learns it is committed only from a receipt, and
resends what is not receipted, so a crash loses nothing.

At start the node checks its tip (ledger_node.tipcheck) and refuses to run on a damaged store.

With `ordering = "etcd"` (a consortium: docs/consortium.md) the run loop proposes its batches
to etcd instead of applying them, and the consortium's applier thread
(ledger_node.consortium.driver) becomes the apply thread: it applies every node's batches in
etcd's order and sends receipts once their block is final.
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hsm import Signer
from ledger_node import entries
from ledger_node.chain import ApplyResult, Chain, Message
from ledger_node.config import NodeConfig
from ledger_node.consortium.cstore import ConsortiumStore
from ledger_node.errors import ConfigError
from ledger_node.ingest import FairInbox, Taken
from ledger_node.metrics import BlockStats
from ledger_node.mqtt_ingest import IngestClient
from ledger_node.notify import WebhookSender
from ledger_node.ordering import SoloOrderer, wall_clock_ms
from ledger_node.quarantine import OVERLOAD
from ledger_node.store import QuarantineRow, Store
from ledger_node.tipcheck import check_tip
from ledger_node.validate import OPEN_CHUNK
from ledger_node.workers import start_verify_pool
from ledger_node.world import audit_entry
from trustfleet.broker import broker_url, client_tls_context
from trustfleet.receipt import Receipt
from trustfleet.topics import UP_SUBSCRIPTION, events_topic, receipt_topic

if TYPE_CHECKING:
    from ledger_node.consortium.driver import Consortium
    from ledger_node.quorum import NodeSet

log = logging.getLogger("trustfleet.node")
REJECT_LOG_S = 10.0
GC_YOUNG_THRESHOLD = 200_000
"""Net allocations between young-generation collections in the node (see `LedgerNode.run`)."""


@dataclass
class NodeStats:
    started: float = field(default_factory=time.monotonic)
    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    received: int = 0
    shed: int = 0
    window: deque[tuple[float, int]] = field(default_factory=deque)
    window_s: float = 10.0

    def record(self, accepted: int) -> None:
        now = time.monotonic()
        self.window.append((now, accepted))
        while self.window and self.window[0][0] < now - self.window_s:
            self.window.popleft()

    @property
    def rate(self) -> float:
        """Accepted readings per second over the last `window_s` seconds."""
        span = min(self.window_s, max(time.monotonic() - self.started, 1e-3))
        return sum(n for _, n in self.window) / span

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicates": self.duplicates,
                "rejected": dict(self.rejected), "received": self.received,
                "summarised_unexamined": self.shed,
                "readings_per_s": round(self.rate, 2),
                "uptime_s": round(time.monotonic() - self.started, 1)}


def read_enrollments(path: Path) -> list[bytes]:
    """Operator-signed entries from a file {"entries": [base64 COSE_Sign1, ...]}."""
    try:
        doc = json.loads(path.read_text())
        if "devices" in doc and "entries" not in doc:
            raise ValueError("this is an old list of raw device keys; devices are now enrolled "
                             "by operator-signed entries (trustfleet device enroll --out FILE)")
        return [base64.b64decode(e, validate=True) for e in doc["entries"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"enrolment file {path}: {exc}") from None


def read_fleet_ca(path: Path) -> bytes:
    """The fleet CA certificate (PEM or DER) that a new chain's genesis entry names."""
    from hsm.certcheck import load_ca_anchor
    from hsm.errors import CaCertificateInvalid
    from hsm.x509 import pem_or_der_to_der

    try:
        der = pem_or_der_to_der(path.read_bytes())
        load_ca_anchor(der)
    except (OSError, ValueError, CaCertificateInvalid) as exc:
        raise ConfigError(f"fleet CA certificate {path}: {exc}") from None
    return der


@dataclass(frozen=True)
class AdminSubmission:
    """What the API tells an operator about an entry it submitted."""

    status: str
    kind: str
    device: str | None
    reason: str = ""
    detail: str = ""
    height: int | None = None


def burst_cut(limit: int, workers: int) -> int:
    """Device-lane messages at which a node waiting for its block deadline cuts at once.

    With verification workers: as soon as each has a full chunk (validate.OPEN_CHUNK), so that
    the first readings of a burst are verified while the rest arrive instead of the workers
    idling until the deadline (in the 60,000-reading `make bench` burst, up to ~150 ms of
    both cores mostly idle). Below that rate, blocks are cut by the deadline as before: with
    2 workers and the default 200 ms interval, readings must arrive faster than 5,120/s.
    Without workers: a full block (`limit`)."""
    return min(limit, workers * OPEN_CHUNK) if workers > 0 else limit


class LedgerNode:
    def __init__(self, cfg: NodeConfig, signer: Signer) -> None:
        self.cfg = cfg
        self.signer = signer
        store_type = ConsortiumStore if cfg.ordering == "etcd" else Store
        self.store = store_type(cfg.db_path, quarantine=cfg.quarantine_limits)
        try:
            check_tip(self.store.conn, cfg.node_id, signer.public_key_der())
            self.chain = Chain(self.store, cfg.chain, cfg.node_id, signer)
        except BaseException:
            self.store.close()
            raise
        self.consortium: Consortium | None = None
        self.orderer = SoloOrderer(cfg.node_id, last_time=self.chain.time)
        self.inbox = FairInbox(self._enrolled, good_max=cfg.ingest_queue,
                               suspect_max=cfg.ingest_suspect_queue,
                               suspect_max_bytes=cfg.ingest_suspect_bytes,
                               max_message_bytes=cfg.max_message_bytes)
        self._rejected_topics: Counter[str] = Counter()
        if cfg.ordering != "etcd":  # consortium: the applier thread quarantines, later
            self.store.on_quarantine = self._count_rejects
        self._suspect_cost = 1e-4  # seconds per suspect message, learnt as they are applied
        self._rejects: Counter[str] = Counter()
        self._rejects_since = time.monotonic() - REJECT_LOG_S
        self.stats = NodeStats()
        self.block_stats = BlockStats()
        self.webhooks: WebhookSender | None = None
        self.stop_event = threading.Event()
        self.connected = threading.Event()
        self.client = IngestClient(CallbackAPIVersion.VERSION2,  # paho, faster receive
                                   client_id=f"ledger-{cfg.node_id}", protocol=mqtt.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message  # what paho itself delivers (QoS 2, ...)
        self.client.on_messages = self._on_messages  # plain PUBLISHes, a socket read at once
        self.client.on_disconnect = self._on_disconnect
        self.broker_url = broker_url(cfg.broker_host, cfg.broker_port, cfg.tls_ca is not None)
        if cfg.tls_ca is not None:
            try:
                context = client_tls_context(cfg.tls_ca, cfg.tls_cert, cfg.tls_key)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                self.store.close()
                raise ConfigError(f"TLS files (tls_ca {cfg.tls_ca}, tls_cert {cfg.tls_cert}, "
                                  f"tls_key {cfg.tls_key}) are unusable: {exc}") from exc
            self.client.tls_set_context(context)
        self._admin_queue: queue.Queue[tuple[bytes, Future[AdminSubmission]]] = queue.Queue()
        self._audit_queue: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._last_block = time.monotonic()
        self._ranked: tuple[NodeSet | None, int] = (None, 0)
        """The node set of the last heartbeat and this node's rank in it (_heartbeat_due)."""
        # Envelopes are opened and their signatures checked in worker processes (the same
        # blocks as without them: ledger_node.validate.open_envelopes).
        self.chain.executor = start_verify_pool(cfg.verify_processes)
        if cfg.ordering == "etcd":
            from ledger_node.consortium.driver import Consortium

            try:
                self.consortium = Consortium(self)
            except BaseException:
                self.shutdown()
                raise

    # -- start-up -------------------------------------------------------------------------
    def prepare(self) -> None:
        """Write genesis on a new chain; submit the enrolment file's operator entries."""
        if self.consortium is not None:
            self._prepare_consortium()
            return
        admin: list[bytes] = []
        if self.chain.height < 0:
            if self.cfg.fleet_ca is None:
                raise ConfigError("a new chain needs the fleet CA certificate: set fleet_ca "
                                  "(--fleet-ca FILE); its genesis entry names it for good")
            admin.append(entries.genesis(self.cfg.chain, self.cfg.node_id,
                                         self.signer.public_key_der(), wall_clock_ms(),
                                         read_fleet_ca(self.cfg.fleet_ca)))
            log.info("new chain %r: writing genesis block", self.cfg.chain)
        else:
            log.info("resuming chain %r at height %d (%d entries)", self.cfg.chain,
                     self.chain.height, self.chain.size)
        if self.cfg.enroll_file is not None:
            admin.extend(read_enrollments(self.cfg.enroll_file))
        if admin:
            result = self._apply(admin, [])
            for done in result.admin:
                if done.status == "rejected":
                    log.warning("administrative entry refused: %s: %s", done.reason,
                                done.detail)
                elif done.status == "accepted" and done.dev:
                    log.info("%s: %s", done.kind, done.dev)
            if self.chain.height < 0:
                raise ConfigError("the genesis block was refused; see the log above")

    def _prepare_consortium(self) -> None:
        """Propose genesis if nothing was ever proposed on this chain; follow etcd from the
        applied revision (catching up from peers if etcd compacted past it); once genesis is
        applied, propose the enrolment file's entries."""
        from ledger_node.consortium.files import read_node_set
        from ledger_node.quorum import consortium_genesis

        assert self.consortium is not None and self.cfg.node_set_file is not None
        node_set = read_node_set(self.cfg.node_set_file)
        if self.chain.height < 0 and self.consortium.log_is_empty():
            if self.cfg.fleet_ca is None:
                raise ConfigError("a new chain needs the fleet CA certificate: set fleet_ca "
                                  "(--fleet-ca FILE); its genesis entry names it for good")
            log.info("new consortium chain %r: proposing genesis (node set: %s)",
                     self.cfg.chain, ", ".join(n for n, _ in node_set))
            self.consortium.propose([consortium_genesis(
                self.cfg.chain, self.cfg.node_id, self.signer.public_key_der(), wall_clock_ms(),
                read_fleet_ca(self.cfg.fleet_ca), node_set)], [])
        self.consortium.start()
        deadline = time.monotonic() + 120
        while self.chain.height < 0 and not self.stop_event.is_set():
            if time.monotonic() > deadline:
                raise ConfigError("no genesis block after 120 s: is etcd reachable, and did a "
                                  "node of this consortium propose it?")
            time.sleep(0.05)
        log.info("following consortium chain %r from etcd revision %d (height %d)",
                 self.cfg.chain, self.consortium.applied_revision, self.chain.height)
        if self.cfg.enroll_file is not None:
            self.consortium.propose(read_enrollments(self.cfg.enroll_file), [])

    def submit_admin(self, entry: bytes) -> Future[AdminSubmission]:
        """Queue an operator entry for the next block; the future says what became of it."""
        done: Future[AdminSubmission] = Future()
        self._admin_queue.put((entry, done))  # taken at the next block deadline
        return done

    def record_audit(self, record: dict[str, Any]) -> None:
        """An API request by a partner or auditor: appended to the ledger with the next block
        (any thread may call this)."""
        self._audit_queue.put(audit_entry(record))

    def _take_audit(self) -> list[bytes]:
        out: list[bytes] = []
        while len(out) < 1000:
            try:
                out.append(self._audit_queue.get_nowait())
            except queue.Empty:
                break
        return out

    def _take_admin(self) -> list[tuple[bytes, Future[AdminSubmission]]]:
        taken: list[tuple[bytes, Future[AdminSubmission]]] = []
        while len(taken) < 1000:
            try:
                taken.append(self._admin_queue.get_nowait())
            except queue.Empty:
                break
        return taken

    def connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.connect_async(self.cfg.broker_host, self.cfg.broker_port, keepalive=30,
                                  clean_start=False, properties=props)
        self.client.loop_start()

    # -- MQTT callbacks (paho's thread) ----------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            log.error("broker refused connection: %s", reason)
            return
        client.subscribe(UP_SUBSCRIPTION, qos=1)
        self.connected.set()
        log.info("connected to broker %s, subscribed to %s", self.broker_url, UP_SUBSCRIPTION)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self.connected.clear()
        if not self.stop_event.is_set():
            log.warning("disconnected from broker (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.stats.received += 1
        # For device lanes, put() waits while they are full, which pushes back on the broker
        # (it holds QoS 1 messages for us); suspect input beyond its cap is summarised.
        self.inbox.put(Message(msg.topic, bytes(msg.payload), wall_clock_ms()))

    def _on_messages(self, batch: list[tuple[str, bytes]]) -> None:
        """The plain PUBLISHes of one socket read, in one inbox call (one lock, not one per
        message). They share one received time: it only dates quarantine rows, and they
        arrived within one read."""
        self.stats.received += len(batch)
        now = wall_clock_ms()
        self.inbox.put_many([Message(topic, payload, now) for topic, payload in batch])

    def _enrolled(self, fleet: str, dev: str) -> bool:
        """Called on paho's thread: a dict lookup in the apply thread's state, nothing else."""
        state = self.chain.devices.get(dev)
        return state is not None and state.fleet == fleet and state.revoked_height is None

    # -- apply loop (apply thread) ---------------------------------------------------------
    def run(self) -> None:
        """Each cycle: suspect input in short slices, within its share of the time, while
        waiting for the block deadline, a full block, or (a solo node with verification
        workers) a burst: a chunk waiting for every worker (`burst_cut`); then the device
        lanes' batch; then what ingest summarised. Valid batches never wait for more than one
        slice.

        Under load (the deadline passed, or a full block waiting), the next batch of the
        device lanes is cut as soon as the current one is handed to the verification workers,
        or else as soon as they have opened it all, and handed to them too (Chain.prefetch,
        Chain.may_prefetch), so that they do not wait for the apply thread to decide, sign
        and write a block."""
        # Under load the ingest queue holds tens of thousands of messages, and a block being
        # applied tens of thousands of rows; a young-generation collection walks every one of
        # them that is alive when it runs. With the default thresholds that was about a fifth
        # of the process's own CPU time in a 60,000-reading burst; with 50,000 still 6-8
        # collections of ~25 ms (2.5-2.8 us per reading). Above the objects one burst leaves
        # alive at a time (the count is allocations minus frees: a block's rows are freed when
        # it is written), the collector rarely runs while readings flow: 0 in that burst.
        gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
        interval = self.cfg.block_interval_ms / 1000
        slice_s = max(0.005, interval / 10)
        share = self.cfg.ingest_suspect_share
        limit = self.cfg.max_block_entries
        burst = burst_cut(limit, self.cfg.verify_processes if self.chain.executor is not None
                          and self.consortium is None else 0)
        next_slice = 0.0
        cut = time.monotonic()
        ahead: Taken | None = None

        def cut_ahead() -> None:
            nonlocal cut, ahead
            now = time.monotonic()
            if ahead is None and self.inbox.good and self._admin_queue.empty() \
                    and not self.stop_event.is_set() \
                    and (now >= cut + interval or self.inbox.good >= limit):
                cut = now
                ahead = self.inbox.take_good(limit)
                self.chain.prefetch(ahead.messages, wall_clock_ms())

        while not self.stop_event.is_set():
            # One block per interval, counted from the last cut: time spent applying the
            # previous block counts, so a reading waits at most about one interval to be cut.
            deadline = cut + interval
            while ahead is None and not self.stop_event.is_set():
                now = time.monotonic()
                if self.inbox.good >= burst or now >= deadline:
                    break
                if self.inbox.suspect and now >= next_slice:
                    took = self._apply_suspect(slice_s)
                    next_slice = time.monotonic() + took * (1 - share) / share
                    continue
                pending = self.inbox.suspect > 0
                self.inbox.wait(min(deadline, next_slice) if pending else deadline, burst,
                                wake_on_suspect=not pending)
            if ahead is None:
                cut = time.monotonic()
                batch = self.inbox.take_good(limit)
            else:
                batch, ahead = ahead, None
            admin = self._take_admin()
            if admin:
                self._apply_admin(admin, batch.messages)
                self.inbox.feedback(batch, {})
            elif self._heartbeat_due() and not batch.messages:
                self._apply([], [], heartbeat=True)
            elif batch.messages and self.consortium is not None:
                self._apply_messages(batch)  # proposed; the consortium's applier applies
            elif batch.messages:
                self.chain.may_prefetch = cut_ahead
                try:
                    self._apply_messages(batch)
                finally:
                    self.chain.may_prefetch = None
            self._flush_shed()
        if ahead is not None:
            self._apply_messages(ahead)
        self.inbox.close()
        while (rest := self.inbox.take_good(limit)).messages:
            self._apply_messages(rest)
        while (rest := self.inbox.take_suspect(limit)).messages:
            self._apply_messages(rest)
        self._flush_shed()

    def _apply_admin(self, admin: list[tuple[bytes, Future[AdminSubmission]]],
                     messages: list[Message]) -> None:
        if self.consortium is not None:  # answered when the batch is applied
            self.consortium.propose([entry for entry, _ in admin], messages,
                                    self._take_audit(), futures=[done for _, done in admin])
            return
        try:
            result = self._apply([entry for entry, _ in admin], messages)
        except Exception as exc:  # never leave an operator waiting on a dead future
            for _, done in admin:
                done.set_exception(exc)
            raise
        height = result.header.height if result.header is not None else None
        for (_, done), outcome in zip(admin, result.admin, strict=True):
            done.set_result(AdminSubmission(
                status=outcome.status, kind=outcome.kind, device=outcome.dev,
                reason=outcome.reason, detail=outcome.detail,
                height=height if outcome.status == "accepted" else None))

    def _apply_suspect(self, slice_s: float) -> float:
        """One slice of suspect input, sized to take about `slice_s` at the recent cost;
        returns the time it took."""
        n = int(min(self.cfg.max_block_entries, max(16, slice_s / self._suspect_cost)))
        batch = self.inbox.take_suspect(n)
        if not batch.messages:
            return 0.0
        start = time.perf_counter()
        self._apply_messages(batch)
        took = time.perf_counter() - start
        self._suspect_cost = max(1e-6, 0.7 * self._suspect_cost
                                 + 0.3 * took / len(batch.messages))
        return took

    def _apply_messages(self, batch: Taken) -> None:
        if self.consortium is not None:  # only proposed: nothing rejected to learn from yet
            self._apply([], batch.messages)
            return
        self._rejected_topics.clear()
        self._apply([], batch.messages)
        self.inbox.feedback(batch, dict(self._rejected_topics))

    def _count_rejects(self, rows: Sequence[QuarantineRow]) -> None:
        self._rejected_topics.update(r.topic for r in rows)

    def _log_rejects(self, rejected: dict[str, int]) -> None:
        """One warning per REJECT_LOG_S at most: a flood must not flood the log too."""
        self._rejects.update(rejected)
        now = time.monotonic()
        if self._rejects and now - self._rejects_since >= REJECT_LOG_S:
            log.warning("quarantined %d message(s) in %.0f s: %s", sum(self._rejects.values()),
                        now - self._rejects_since, dict(self._rejects.most_common()))
            self._rejects.clear()
            self._rejects_since = now

    def _flush_shed(self) -> None:
        tallies = self.inbox.take_shed()
        if tallies:
            n = sum(t.count for t in tallies)
            self.stats.shed += n
            if self.consortium is not None:  # the store is the applier thread's
                self.consortium.defer(lambda: self.store.add_quarantine_summary(tallies))
            else:
                self.store.add_quarantine_summary(tallies)
            self._log_rejects({OVERLOAD: n})  # summarised unexamined: ingest overload

    def _heartbeat_due(self) -> bool:
        """No block for heartbeat_ms (or audit entries waiting): cut one anyway."""
        beat = self.cfg.heartbeat_ms
        if self.consortium is not None and beat > 0:
            # One node's heartbeat is every node's block: stagger them, so that usually one
            # node proposes it (the others see its block and wait again).
            ns = self.consortium.node_set
            if ns is not self._ranked[0]:  # the node set changed: rank this node again
                rank = sorted(ns.keys).index(self.cfg.node_id) if ns and self.cfg.node_id in \
                    ns.keys else 0
                self._ranked = (ns, rank)
            beat = int(beat * (1 + self._ranked[1] / 4))
        return (beat > 0 and time.monotonic() - self._last_block >= beat / 1000) \
            or not self._audit_queue.empty()

    def _apply(self, admin: list[bytes], messages: list[Message], *,
               heartbeat: bool = False) -> ApplyResult:
        audit = self._take_audit()
        if self.consortium is not None:
            self.consortium.propose(admin, messages, audit, heartbeat=heartbeat or bool(audit))
            return ApplyResult(None, None, None, None)
        started = time.perf_counter()
        result = self.chain.apply(self.orderer.order(admin, messages, audit,
                                                     heartbeat=heartbeat or bool(audit)))
        self._account(result, started)
        self._publish_receipts(result.touched)
        return result

    def _account(self, result: ApplyResult, started: float) -> None:
        """Counters, logs and contract-event notifications of one applied batch (on the
        apply thread, whichever ordering)."""
        if result.header is not None:
            self.block_stats.observe(time.perf_counter() - started, result.header.count)
            self._last_block = time.monotonic()
            if result.events:
                self._notify(result)
        self.stats.accepted += result.accepted
        self.stats.duplicates += result.duplicates
        self.stats.rejected.update(result.rejected)
        self.stats.record(result.accepted)
        if result.header is not None:
            log.debug("block %d: %d entries, %d accepted, %d duplicates, rejected %s",
                      result.header.height, result.header.count, result.accepted,
                      result.duplicates, result.rejected or "none")
        self._log_rejects(result.rejected)

    def _notify(self, result: ApplyResult) -> None:
        """Publish the block's contract events that ask for MQTT (QoS 1, not retained):
        tf/v1/{fleet}/events/{event}. Webhooks are sent by ledger_node.notify, off this
        thread."""
        for event in result.events:
            log.info("contract %s v%d: %s (shipment %s, device %s, state %s)", event.contract,
                     event.version, event.event, event.shipment, event.dev, event.state)
            if "mqtt" not in event.notify:
                continue
            state = self.chain.devices.get(event.dev) if event.dev else None
            fleet = state.fleet if state is not None else self.cfg.chain
            self.client.publish(events_topic(fleet, event.event),
                                json.dumps(event.to_map(), sort_keys=True, default=str), qos=1)
        if self.webhooks is not None and any(n.startswith("webhook:") for e in result.events
                                             for n in e.notify):
            self.webhooks.wake()

    def _publish_receipts(self, devices: set[str]) -> None:
        header, sig = self.chain.last_header, self.chain.last_signature
        if header is None or sig is None:
            return
        for dev in sorted(devices):
            state = self.chain.devices.get(dev)
            if state is None:
                continue
            receipt = Receipt(dev=dev, seq=state.contiguous_seq, last=state.last_seq,
                              height=self.chain.height, block=self.chain.tip_hash, header=header,
                              sigs=[{"node": self.cfg.node_id, "sig": sig}])
            self.client.publish(receipt_topic(state.fleet, dev), receipt.encode(), qos=1,
                                retain=True)

    def status(self) -> dict[str, Any]:
        return {"node": self.cfg.node_id, "chain": self.cfg.chain, "height": self.chain.height,
                "size": self.chain.size, "devices": len(self.chain.devices),
                "broker_connected": self.connected.is_set(), "queue": self.inbox.qsize(),
                "queue_suspect": self.inbox.suspect,
                "verify_workers": self.cfg.verify_processes,
                "blocks": self.block_stats.snapshot(),
                "shipments": len(self.chain.world.book.all()),
                "contracts": self.chain.world.live_contracts,
                **({"webhooks": self.webhooks.status()} if self.webhooks else {}),
                **({"consortium": self.consortium.status()} if self.consortium else {}),
                **self.stats.as_dict()}

    def request_stop(self) -> None:
        """Stop `run` after the block in hand, even while it waits for a block deadline (a
        minute, at most): it then commits what is queued and returns. Takes the inbox lock,
        so it must not be called from a signal handler (the handler may have interrupted a
        holder of that lock on the same thread): the CLI's handler starts a thread for it."""
        self.stop_event.set()
        self.inbox.interrupt()

    def shutdown(self) -> None:
        self.stop_event.set()
        if self.consortium is not None:
            self.consortium.stop()
        self.inbox.close()
        self.client.disconnect()
        self.client.loop_stop()
        if self.chain.executor is not None:
            self.chain.executor.shutdown(wait=True, cancel_futures=True)
        self.store.close()
