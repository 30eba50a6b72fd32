"""MQTT uplink of one device: publish envelopes (QoS 1), receive receipts.

paho-mqtt runs its own network thread and reconnects by itself; received receipts are put on
a queue for the agent's main loop, which alone touches the outbox. The uplink guarantees
nothing about delivery: the outbox and ledger receipts do (see edge_agent.outbox).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from trustfleet.receipt import Receipt, decode_receipt
from trustfleet.topics import receipt_topic, up_topic

log = logging.getLogger("trustfleet.agent")


class Uplink:
    def __init__(self, fleet: str, device_id: str, host: str, port: int) -> None:
        self.fleet, self.device_id = fleet, device_id
        self.host, self.port = host, port
        self.up = up_topic(fleet, device_id)
        self.receipts: queue.Queue[Receipt] = queue.Queue()
        self.connected = threading.Event()
        self.bad_receipts = 0
        self.stopping = False
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{device_id}",
                                  protocol=mqtt.MQTTv5)
        self.client.max_queued_messages_set(10_000)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 86_400
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.connect_async(self.host, self.port, keepalive=30, clean_start=False,
                                  properties=props)
        self.client.loop_start()

    def stop(self) -> None:
        self.stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, envelope: bytes) -> bool:
        """Queue one envelope for QoS 1 delivery; False if the client refused it now."""
        info = self.client.publish(self.up, envelope, qos=1)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            log.error("%s: broker refused connection: %s", self.device_id, reason)
            return
        client.subscribe(receipt_topic(self.fleet, self.device_id), qos=1)
        self.connected.set()
        log.info("%s: connected to mqtt://%s:%d", self.device_id, self.host, self.port)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        if self.connected.is_set() and not self.stopping:
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
