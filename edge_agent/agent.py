"""The edge agent's main loop: collect -> outbox -> seal (HSM) -> publish -> receipts.

One thread (this loop) owns the outbox and the HSM signer; the uplink's thread only moves
bytes. Each turn:

1. read what the collectors have and store it (marking what retention never thins);
2. every `status_interval_s`, store a `status` reading about the agent itself;
3. keep the outbox under its disk budget (edge_agent.retention);
4. apply the receipts that arrived: release receipted readings, and resend at once what a
   receipt shows the ledger is missing;
5. seal, in order, as many readings as the send window has room for (`window` sealed and
   unreceipted at most, so a ledger outage does not make the agent sign its whole backlog
   or resend it all every timeout): with `signing = "per-reading"` one HSM signature each;
   with `signing = "batch"` one signature per batch of up to `batch_max` readings, sealed
   when full or once its oldest reading waited `batch_delay_s` (edge_agent.sealer);
6. publish what is due (new readings, and resends of readings not receipted in time) in
   seq order, up to `message_max` per MQTT message, at most `max_publish_per_s` readings per
   second (a token bucket): after an outage the backlog drains at that rate, while new
   readings keep being stored and follow in seq order.

The delivery guarantee: a reading leaves the outbox only when a ledger receipt covers its
seq. Every timing decision uses the monotonic clock, never the wall clock.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from edge_agent.backoff import Backoff
from edge_agent.clock import AgentClock
from edge_agent.collectors.base import Sample
from edge_agent.collectors.errors import CollectorError
from edge_agent.config import AgentConfig
from edge_agent.metrics import serve_metrics
from edge_agent.outbox import Outbox
from edge_agent.retention import HIGH_WATER, LOW_WATER, is_protected
from edge_agent.sealer import BatchPolicy
from edge_agent.status import disk_free_bytes, status_sample, status_values
from edge_agent.uplink import Uplink
from hsm import Signer

log = logging.getLogger("trustfleet.agent")

GAP_RESEND_GRACE_MS = 1000


class Collector(Protocol):
    def read_available(self) -> list[Sample]: ...

    def close(self) -> None: ...


class Polled:
    """A collector read on demand (`read()`), asked at most once per `interval_s`."""

    def __init__(self, read: Callable[[], list[Sample]], interval_s: float,
                 name: str = "polled", close: Callable[[], None] | None = None) -> None:
        self.read, self.interval_s, self.name = read, interval_s, name
        self._close = close
        self._next = 0.0

    def read_available(self) -> list[Sample]:
        now = time.monotonic()
        if now < self._next:
            return []
        self._next = now + self.interval_s
        return self.read()

    def close(self) -> None:
        if self._close is not None:
            self._close()


@dataclass
class AgentStats:
    collected: int = 0
    sealed: int = 0
    published: int = 0
    receipted: int = 0
    collector_errors: int = 0
    dropped: int = 0
    thinned: int = 0
    gap_resends: int = 0
    batches: int = 0  # HSM signatures made for batches (signing = "batch")


def _mono_ms() -> int:
    return int(time.monotonic() * 1000)


class EdgeAgent:
    def __init__(self, cfg: AgentConfig, signer: Signer, collectors: list[Collector],
                 clock: AgentClock | None = None) -> None:
        self.cfg = cfg
        self.signer = signer
        self.collectors = collectors
        self.clock = clock or AgentClock()
        self.outbox = Outbox(cfg.outbox_path)
        self.uplink = Uplink(cfg.fleet, cfg.device_id, cfg.broker_host, cfg.broker_port,
                             backoff=Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s),
                             tls_ca=cfg.tls_ca, tls_cert=cfg.tls_cert, tls_key=cfg.tls_key)
        self.stats = AgentStats()
        self.stop_event = threading.Event()
        self.started = time.monotonic()
        self._last_sample: dict[str, int] = {}
        # GPS receivers talk once a second or faster: keep one fix per interval.
        self._intervals = {"gps": cfg.gps_interval_s}
        self._tokens = 0.0
        self._tokens_at = time.monotonic()
        self._next_status = time.monotonic() + cfg.status_interval_s
        self._last_receipt: float | None = None
        self._budget_full = False
        self._resend_from: int | None = None  # go-back cursor: last seq resent
        self._sessions = 0
        self._batching: BatchPolicy | None = None
        if cfg.signing == "batch":
            self._batching = BatchPolicy(cfg.batch_max, cfg.batch_delay_s)
            span = self.outbox.unsealed_span(cfg.batch_max)
            self._batching.observe(*span, time.monotonic())

    def run(self, tick_s: float = 0.1) -> None:
        self.uplink.start()
        metrics = serve_metrics(self)  # Prometheus /metrics when cfg.metrics_port is set
        mode = (f"batch signing, up to {self.cfg.batch_max} readings or "
                f"{self.cfg.batch_delay_s:g} s" if self._batching else "per-reading signing")
        log.info("%s: agent started (kid %s, %s), outbox %s", self.cfg.device_id,
                 self.signer.kid.hex()[:16], mode, self.cfg.outbox_path)
        try:
            while not self.stop_event.is_set():
                self.turn()
                self.stop_event.wait(tick_s)
        finally:
            if metrics is not None:
                metrics.stop()
            self._store(self._collect())  # keep what was read; it is sent on the next start
            self.uplink.stop()
            for c in self.collectors:
                c.close()
            self.outbox.close()
            log.info("%s: agent stopped: %s", self.cfg.device_id, self.stats)

    def turn(self) -> None:
        self._store(self._collect())
        now = time.monotonic()
        if self.cfg.status_interval_s and now >= self._next_status:
            self._next_status = now + self.cfg.status_interval_s
            self._store([self.status_sample()])
        self._keep_in_budget()
        self._apply_receipts()
        self._seal()
        if self.uplink.connected.is_set():
            self._publish_due()

    def _seal(self) -> None:
        room = self.cfg.window - self.outbox.in_flight()
        per_turn = max(self.cfg.message_max, self.cfg.max_publish_per_s)
        if self._batching is None:
            self.stats.sealed += self.outbox.seal(self.cfg.device_id, self.signer.kid,
                                                  self.signer.sign, limit=min(room, per_turn))
            return
        sealed = 0
        while sealed < per_turn:
            now = time.monotonic()
            count, lo, hi = self.outbox.unsealed_span(self.cfg.batch_max)
            self._batching.observe(count, lo, hi, now)
            n = self._batching.next_batch(count, room, now)
            if n == 0:
                return
            done, through = self.outbox.seal_batch(self.cfg.device_id, self.signer.kid,
                                                   self.signer.sign, n, self.clock.now()[0])
            self._batching.sealed_through(through)
            self.stats.sealed += done
            self.stats.batches += 1
            sealed += done
            room -= done

    def status_sample(self) -> Sample:
        t_ms, source = self.clock.now()
        age = None if self._last_receipt is None else time.monotonic() - self._last_receipt
        values = status_values(
            self.outbox.stats(), budget_bytes=self.cfg.outbox_max_bytes,
            disk_free=disk_free_bytes(self.cfg.data_dir), receipt_age_s=age,
            collector_errors=self.stats.collector_errors, clock_source=source,
            rtc_ok=self.clock.rtc_plausible(), uptime_s=time.monotonic() - self.started)
        return status_sample(values, t_ms, source)

    # -- collect and store ------------------------------------------------------------------
    def _collect(self) -> list[Sample]:
        keep: list[Sample] = []
        for collector in self.collectors:
            try:
                samples = collector.read_available()
            except CollectorError as exc:
                self.stats.collector_errors += 1
                log.warning("%s: collector %s: %s", self.cfg.device_id,
                            type(collector).__name__, exc)
                continue
            for s in samples:
                if s.time_source == "gps":
                    self.clock.anchor_gps(s.t_ms)
                # at most one per interval of the sample's own time (a clock that went
                # back, e.g. a replayed log, starts the interval again)
                interval_ms = int(self._intervals.get(s.kind, 0.0) * 1000)
                last = self._last_sample.get(s.kind)
                if last is not None and last <= s.t_ms < last + interval_ms - 1:
                    continue
                self._last_sample[s.kind] = s.t_ms
                keep.append(s)
        self.stats.collected += len(keep)
        return keep

    def _store(self, samples: list[Sample]) -> None:
        if not samples:
            return
        temp_range = (self.cfg.temp_low_c, self.cfg.temp_high_c)
        marks = [is_protected(s.kind, s.values, temp_range) for s in samples]
        if self._budget_full:  # nothing left to thin: only protected readings get in
            kept = [(s, m) for s, m in zip(samples, marks, strict=True) if m]
            dropped = len(samples) - len(kept)
            if dropped:
                self.stats.dropped += dropped
                self.outbox.count_dropped(dropped)
            samples, marks = [s for s, _ in kept], [m for _, m in kept]
        try:
            self.outbox.add(samples, marks)
        except sqlite3.Error as exc:  # disk full or failing: count, say so, carry on
            self.stats.dropped += len(samples)
            log.error("%s: outbox write failed, %d reading(s) lost: %s", self.cfg.device_id,
                      len(samples), exc)

    def _keep_in_budget(self) -> None:
        budget = self.cfg.outbox_max_bytes
        used = self.outbox.used_bytes()
        if used < budget * HIGH_WATER:
            self._budget_full = False
            return
        removed = self.outbox.thin(int(budget * LOW_WATER))
        if removed:
            n = sum(removed.values())
            self.stats.thinned += n
            log.warning("%s: outbox at %d of %d bytes: thinned %s", self.cfg.device_id,
                        used, budget, removed)
        full = self.outbox.used_bytes() >= budget
        if full and not self._budget_full:
            log.error("%s: outbox budget reached with nothing left to thin: only protected "
                      "readings are stored until the backlog drains", self.cfg.device_id)
        self._budget_full = full

    # -- deliver ----------------------------------------------------------------------------
    def _publish_due(self) -> None:
        now = time.monotonic()
        rate = float(self.cfg.max_publish_per_s)
        burst = max(float(self.cfg.message_max), rate / 2)
        self._tokens = min(burst, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        budget = int(self._tokens)
        if budget <= 0:
            return
        now_ms = _mono_ms()
        if self.uplink.sessions != self._sessions:
            # (re)connected: what was in flight may have died with the broker; resend the
            # window in seq order before anything new, so the ledger sees no gap
            if self._sessions:
                self._resend_from = 0
            self._sessions = self.uplink.sessions
        if self._resend_from is None:
            oldest = self.outbox.oldest_timed_out(now_ms, int(self.cfg.resend_after_s * 1000),
                                                  int(self.cfg.resend_max_s * 1000))
            if oldest is not None:
                self._resend_from = oldest - 1
                log.info("%s: no receipt for seq %d in time: resending from there",
                         self.cfg.device_id, oldest)
        if self._resend_from is not None:  # go back: the window again, in seq order
            due = self.outbox.sealed_after(self._resend_from, budget)
            self._resend_from = due[-1][0] if len(due) == budget else None
        else:
            due = self.outbox.unsent(budget)
        sent: list[int] = []
        for i in range(0, len(due), self.cfg.message_max):
            batch = due[i:i + self.cfg.message_max]
            if not self.uplink.publish([env for _, env in batch]):
                self._resend_from = None if not sent else self._resend_from
                break
            sent.extend(seq for seq, _ in batch)
        if sent:
            self.outbox.mark_sent(sent, now_ms)
            self.stats.published += len(sent)
            self._tokens -= len(sent)

    def _apply_receipts(self) -> None:
        while not self.uplink.receipts.empty():
            receipt = self.uplink.receipts.get_nowait()
            self._last_receipt = time.monotonic()
            dropped = self.outbox.apply_receipt(receipt.seq, receipt.height,
                                                at_ms=self.clock.now()[0])
            self.stats.receipted += dropped
            if receipt.last > receipt.seq + 1 and self._resend_from is None:
                # the ledger has a later seq but not seq + 1: what was sent before that
                # one was lost on the way (a broker crash); go back now, not at the timeout
                sent_at = self.outbox.sent_at(receipt.seq + 1)
                if sent_at is not None and sent_at <= _mono_ms() - GAP_RESEND_GRACE_MS:
                    self._resend_from = receipt.seq
                    self.stats.gap_resends += 1
                    log.info("%s: ledger has seq %d but not %d: resending from there",
                             self.cfg.device_id, receipt.last, receipt.seq + 1)
            if dropped:
                log.info("%s: receipt: seq %d committed in block %d (%s); %d reading(s) "
                         "released from the outbox", self.cfg.device_id, receipt.seq,
                         receipt.height, receipt.block.hex()[:16], dropped)
