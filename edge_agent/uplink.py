"""MQTT uplink of one device: publish envelopes (QoS 1), receive receipts.

The uplink runs its own network thread over paho-mqtt's `loop()`: it connects, keeps the
session alive, and after a lost or refused connection waits an exponential backoff with
jitter (edge_agent.backoff) before the next attempt, so a fleet whose broker restarts does
not reconnect in lock-step. The session is persistent (clean_start false, expiry 1 day), so
QoS 1 messages in flight are resent by paho after a reconnect to the same broker; the
receipt subscription is renewed on every connect in case the broker lost the session.

Received receipts are put on a queue for the agent's main loop, which alone touches the
outbox. The uplink guarantees nothing about delivery: the outbox and ledger receipts do
(see edge_agent.outbox).

Optional TLS: `tls_ca` (the fleet CA certificate), `tls_cert` and `tls_key` (the device's
TLS client certificate and key files) turn on MQTT over TLS (>= 1.2) with a client
certificate. The broker's certificate must chain to `tls_ca` and name the host connected to
(`host`, a DNS name or IP address, in its subjectAltName). The TLS key is NOT the device's
signing key: that one stays in the HSM, which Python's ssl module cannot use; the TLS key is a
separate P-256 key in a file (mode 0600) with a fleet-CA certificate for the same device id
(hsm.tlsfiles, docs/tls.md). A TLS failure (bad certificate, refused handshake) is retried
with the same backoff as any other lost connection, and logged.

Concurrency: `publish` is called from the agent's thread while the network thread runs
paho's loop; paho serialises both with its own locks.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.backoff import Backoff
from edge_agent.errors import AgentConfigError
from trustfleet.broker import broker_url, client_tls_context
from trustfleet.receipt import Receipt, decode_receipt
from trustfleet.topics import encode_batch, receipt_topic, up_topic

log = logging.getLogger("trustfleet.agent")

SESSION_EXPIRY_S = 86_400


class Uplink:
    def __init__(self, fleet: str, device_id: str, host: str, port: int, *,
                 backoff: Backoff | None = None, tls_ca: Path | None = None,
                 tls_cert: Path | None = None, tls_key: Path | None = None) -> None:
        self.fleet, self.device_id = fleet, device_id
        self.host, self.port = host, port
        self.up = up_topic(fleet, device_id)
        self.receipts: queue.Queue[Receipt] = queue.Queue()
        self.connected = threading.Event()
        self.backoff = backoff or Backoff(0.5, 30.0)
        self.bad_receipts = 0
        self.connects = 0
        self.sessions = 0  # successful CONNACKs: the agent goes back after each
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{device_id}",
                                  protocol=mqtt.MQTTv5)
        self.client.max_queued_messages_set(0)  # the outbox bounds what is in flight
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.url = broker_url(host, port, tls_ca is not None)
        if tls_ca is not None:
            try:
                context = client_tls_context(tls_ca, tls_cert, tls_key)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise AgentConfigError(f"TLS files (tls_ca {tls_ca}, tls_cert {tls_cert}, "
                                       f"tls_key {tls_key}) are unusable: {exc}") from exc
            self.client.tls_set_context(context)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._network, name="uplink", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):  # stopping; the socket may be gone already
            self.client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def publish(self, envelopes: list[bytes]) -> bool:
        """Queue envelopes as one QoS 1 message (a batch if several); False if refused now."""
        if not self.connected.is_set():
            return False
        payload = envelopes[0] if len(envelopes) == 1 else encode_batch(envelopes)
        info = self.client.publish(self.up, payload, qos=1)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    # -- network thread ---------------------------------------------------------------------
    def _network(self) -> None:
        first = True
        while not self._stop.is_set():
            if not first:
                delay = self.backoff.next_delay()
                log.info("%s: reconnecting to %s in %.1fs", self.device_id, self.url, delay)
                if self._stop.wait(delay):
                    break
            first = False
            try:
                self._connect()
            except (OSError, ValueError) as exc:
                log.warning("%s: cannot reach broker %s: %s", self.device_id, self.url, exc)
                continue
            while not self._stop.is_set():
                rc = self.client.loop(timeout=0.2)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    break
            self.connected.clear()

    def _connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        if self.connects == 0:
            self.client.connect(self.host, self.port, keepalive=30, clean_start=False,
                                properties=props)
        else:
            self.client.reconnect()
        self.connects += 1

    # -- paho callbacks (network thread) ----------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            log.error("%s: broker refused connection: %s", self.device_id, reason)
            client.disconnect()
            return
        client.subscribe(receipt_topic(self.fleet, self.device_id), qos=1)
        self.backoff.reset()
        self.sessions += 1
        self.connected.set()
        log.info("%s: connected to %s (session present: %s)", self.device_id, self.url,
                 getattr(flags, "session_present", "?"))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        if self.connected.is_set() and not self._stop.is_set():
            log.warning("%s: disconnected from broker (%s); will reconnect", self.device_id,
                        reason)
        self.connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            receipt = decode_receipt(bytes(msg.payload))
        except ValueError as exc:
            self.bad_receipts += 1
            log.warning("%s: ignoring malformed receipt: %s", self.device_id, exc)
            return
        if receipt.dev != self.device_id:
            self.bad_receipts += 1
            log.warning("%s: ignoring receipt for %s", self.device_id, receipt.dev)
            return
        self.receipts.put(receipt)
