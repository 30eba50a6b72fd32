"""The ledger node process: MQTT ingest -> ordering -> block application -> receipts, plus API.

Threads and what they own:
  * paho's network thread: receives `up` messages and puts them on a bounded queue;
  * the apply thread (`run`): the only user of the writer store and of the HSM signer;
  * uvicorn's thread: serves the API from read-only store connections.
A message is acknowledged to the broker when it is queued; a device learns it is committed
only from a receipt, and resends what is not receipted, so a crash loses nothing.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hsm import Signer
from ledger_node import entries
from ledger_node.chain import ApplyResult, Chain, Message
from ledger_node.config import NodeConfig
from ledger_node.errors import ConfigError
from ledger_node.ordering import SoloOrderer, wall_clock_ms
from ledger_node.store import Store
from trustfleet.receipt import Receipt
from trustfleet.topics import UP_SUBSCRIPTION, receipt_topic

log = logging.getLogger("trustfleet.node")


@dataclass
class NodeStats:
    started: float = field(default_factory=time.monotonic)
    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    received: int = 0
    dropped_queue_full: int = 0
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
                "readings_per_s": round(self.rate, 2),
                "uptime_s": round(time.monotonic() - self.started, 1)}


def read_enrollments(path: Path) -> list[tuple[str, str, bytes]]:
    """(dev, fleet, SPKI DER) from an enrolment file {"devices": [{dev, fleet, key: base64}]}."""
    try:
        doc = json.loads(path.read_text())
        return [(d["dev"], d["fleet"], base64.b64decode(d["key"], validate=True))
                for d in doc["devices"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"enrolment file {path}: {exc}") from None


class LedgerNode:
    def __init__(self, cfg: NodeConfig, signer: Signer) -> None:
        self.cfg = cfg
        self.signer = signer
        self.store = Store(cfg.db_path)
        self.chain = Chain(self.store, cfg.chain, cfg.node_id, signer)
        self.orderer = SoloOrderer(cfg.node_id, last_time=self.chain.time)
        self.inbox: queue.Queue[Message] = queue.Queue(maxsize=cfg.ingest_queue)
        self.stats = NodeStats()
        self.stop_event = threading.Event()
        self.connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ledger-{cfg.node_id}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self._admin: list[bytes] = []

    # -- start-up -------------------------------------------------------------------------
    def prepare(self) -> None:
        """Write genesis on a new chain and queue enrolments for devices not yet enrolled."""
        if self.chain.height < 0:
            self._admin.append(entries.genesis(self.cfg.chain, self.cfg.node_id,
                                               self.signer.public_key_der(), wall_clock_ms()))
            log.info("new chain %r: writing genesis block", self.cfg.chain)
        else:
            log.info("resuming chain %r at height %d (%d entries)", self.cfg.chain,
                     self.chain.height, self.chain.size)
        if self.cfg.enroll_file is not None:
            for dev, fleet, key in read_enrollments(self.cfg.enroll_file):
                if dev not in self.chain.devices:
                    self._admin.append(entries.device_enrolled(dev, fleet, key))
                    log.info("enrolling device %s (fleet %s)", dev, fleet)
        if self._admin:
            self._apply(self._admin, [])
            self._admin = []

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
        log.info("connected to broker %s:%d, subscribed to %s", self.cfg.broker_host,
                 self.cfg.broker_port, UP_SUBSCRIPTION)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self.connected.clear()
        if not self.stop_event.is_set():
            log.warning("disconnected from broker (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.stats.received += 1
        # Blocking here when the queue is full pushes back on the broker, which holds the
        # QoS 1 messages for us: nothing is dropped.
        self.inbox.put(Message(msg.topic, bytes(msg.payload), wall_clock_ms()))

    # -- apply loop (apply thread) ---------------------------------------------------------
    def run(self) -> None:
        interval = self.cfg.block_interval_ms / 1000
        while not self.stop_event.is_set():
            deadline = time.monotonic() + interval
            batch = self._collect(deadline)
            if batch:
                self._apply([], batch)
        rest = self._collect(time.monotonic())
        if rest:
            self._apply([], rest)

    def _collect(self, deadline: float) -> list[Message]:
        batch: list[Message] = []
        while len(batch) < self.cfg.max_block_entries:
            timeout = deadline - time.monotonic()
            try:
                batch.append(self.inbox.get(timeout=timeout) if timeout > 0
                             else self.inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _apply(self, admin: list[bytes], messages: list[Message]) -> ApplyResult:
        result = self.chain.apply(self.orderer.order(admin, messages))
        self.stats.accepted += result.accepted
        self.stats.duplicates += result.duplicates
        self.stats.rejected.update(result.rejected)
        self.stats.record(result.accepted)
        if result.header is not None:
            log.debug("block %d: %d entries, %d accepted, %d duplicates, rejected %s",
                      result.header.height, result.header.count, result.accepted,
                      result.duplicates, result.rejected or "none")
        for reason, n in result.rejected.items():
            log.warning("quarantined %d message(s): %s", n, reason)
        self._publish_receipts(result.touched)
        return result

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
                **self.stats.as_dict()}

    def shutdown(self) -> None:
        self.stop_event.set()
        self.client.disconnect()
        self.client.loop_stop()
        self.store.close()
