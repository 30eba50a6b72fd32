"""The edge agent's main loop: collect -> outbox -> seal (HSM) -> publish -> receipts.

One thread (this loop) owns the outbox and the HSM signer; paho's thread only moves bytes.
Each turn: read what the collectors have, store it, seal it in order, publish what is due
(new readings, and resends of readings not receipted in time) at a bounded rate, and apply
the receipts that arrived.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from edge_agent.clock import AgentClock
from edge_agent.collectors.base import Sample
from edge_agent.collectors.errors import CollectorError
from edge_agent.config import AgentConfig
from edge_agent.outbox import Outbox
from edge_agent.uplink import Uplink
from hsm import Signer

log = logging.getLogger("trustfleet.agent")


class Collector(Protocol):
    def read_available(self) -> list[Sample]: ...

    def close(self) -> None: ...


class Polled:
    """A collector read on demand (`read()`), asked at most once per `interval_s`."""

    def __init__(self, read: Callable[[], list[Sample]], interval_s: float,
                 name: str = "polled") -> None:
        self.read, self.interval_s, self.name = read, interval_s, name
        self._next = 0.0

    def read_available(self) -> list[Sample]:
        now = time.monotonic()
        if now < self._next:
            return []
        self._next = now + self.interval_s
        return self.read()

    def close(self) -> None:
        pass


@dataclass
class AgentStats:
    collected: int = 0
    sealed: int = 0
    published: int = 0
    receipted: int = 0
    collector_errors: int = 0


class EdgeAgent:
    def __init__(self, cfg: AgentConfig, signer: Signer, collectors: list[Collector],
                 clock: AgentClock | None = None) -> None:
        self.cfg = cfg
        self.signer = signer
        self.collectors = collectors
        self.clock = clock or AgentClock()
        self.outbox = Outbox(cfg.outbox_path)
        self.uplink = Uplink(cfg.fleet, cfg.device_id, cfg.broker_host, cfg.broker_port)
        self.stats = AgentStats()
        self.stop_event = threading.Event()
        self._last_sample: dict[str, float] = {}
        # GPS receivers talk once a second or faster: keep one fix per interval.
        self._intervals = {"gps": cfg.gps_interval_s}

    def run(self, tick_s: float = 0.1) -> None:
        self.uplink.start()
        log.info("%s: agent started (kid %s), outbox %s", self.cfg.device_id,
                 self.signer.kid.hex()[:16], self.cfg.outbox_path)
        try:
            while not self.stop_event.is_set():
                self.turn()
                self.stop_event.wait(tick_s)
        finally:
            self.turn()  # store and seal what was read; it is sent on the next start
            self.uplink.stop()
            for c in self.collectors:
                c.close()
            self.outbox.close()
            log.info("%s: agent stopped: %s", self.cfg.device_id, self.stats)

    def turn(self) -> None:
        self.outbox.add(self._collect())
        self.stats.sealed += self.outbox.seal(self.cfg.device_id, self.signer.kid,
                                              self.signer.sign)
        self._apply_receipts()
        if self.uplink.connected.is_set():
            self._publish_due()

    def _collect(self) -> list[Sample]:
        keep: list[Sample] = []
        now = time.monotonic()
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
                interval = self._intervals.get(s.kind, 0.0)
                if now - self._last_sample.get(s.kind, -1e9) + 1e-3 < interval:
                    continue
                self._last_sample[s.kind] = now
                keep.append(s)
        self.stats.collected += len(keep)
        return keep

    def _publish_due(self) -> None:
        now_ms = time.time_ns() // 1_000_000
        budget = max(1, int(self.cfg.max_publish_per_s * 0.1))
        due = self.outbox.due(now_ms, int(self.cfg.resend_after_s * 1000), budget)
        sent = [seq for seq, env in due if self.uplink.publish(env)]
        if sent:
            self.outbox.mark_sent(sent, now_ms)
            self.stats.published += len(sent)

    def _apply_receipts(self) -> None:
        while not self.uplink.receipts.empty():
            receipt = self.uplink.receipts.get_nowait()
            dropped = self.outbox.apply_receipt(receipt.seq, receipt.height)
            self.stats.receipted += dropped
            if dropped:
                log.info("%s: receipt: seq %d committed in block %d (%s); %d reading(s) "
                         "released from the outbox", self.cfg.device_id, receipt.seq,
                         receipt.height, receipt.block.hex()[:16], dropped)
