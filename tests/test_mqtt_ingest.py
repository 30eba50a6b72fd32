"""The node's MQTT client (ledger_node.mqtt_ingest.IngestClient) against a real broker: every
message arrives once, in order, byte-exact, whatever its size or QoS, with or without MQTT v5
properties; and every QoS 1 message is acknowledged (a resumed session gets nothing again)."""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ledger_node.mqtt_ingest import IngestClient
from tests.mqttkit import TestClient

pytestmark = pytest.mark.slow


class Receiver:
    def __init__(self, port: int, protocol: int = mqtt.MQTTv5) -> None:
        self.got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subscribed = threading.Event()
        self.port, self.protocol = port, protocol
        self.client = self._connect()

    def _connect(self) -> IngestClient:
        v5 = self.protocol == mqtt.MQTTv5
        c = IngestClient(CallbackAPIVersion.VERSION2, client_id="ingest-under-test",
                         protocol=self.protocol, clean_session=None if v5 else False)
        c.on_message = lambda client, userdata, msg: self.got.put(msg)
        c.on_subscribe = lambda *a: self.subscribed.set()

        def on_connect(client: mqtt.Client, *a: Any) -> None:
            client.subscribe("$share/ledger/tf/v1/+/+/up", qos=1)

        c.on_connect = on_connect
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 600
            c.connect("127.0.0.1", self.port, clean_start=False, properties=props)
        else:
            c.connect("127.0.0.1", self.port)
        c.loop_start()
        assert self.subscribed.wait(10)
        return c

    def take(self, n: int) -> list[mqtt.MQTTMessage]:
        return [self.got.get(timeout=30) for _ in range(n)]

    def reconnect(self) -> None:
        self.close()
        self.subscribed.clear()
        self.client = self._connect()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311])
def test_every_message_arrives_once_in_order_byte_exact_and_acknowledged(
        broker: Any, protocol: int) -> None:
    rx = Receiver(broker.port, protocol)
    sizes = [0, 1, 100, 127, 128, 16_383, 16_384, 70_000, 300_000] + [200] * 3000
    sent = [(f"tf/v1/fleet/dev-{i % 7}/up", os.urandom(n), 1 if i % 5 else 0)
            for i, n in enumerate(sizes)]
    try:
        with TestClient(broker.port, "publisher") as tx:
            for topic, body, qos in sent:
                tx.client.publish(topic, body, qos=qos)
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = ("k", "v")
            tx.client.publish("tf/v1/fleet/dev-x/up", b"with properties", qos=1,
                              properties=props)
            tx.publish("tf/v1/fleet/dev-y/up", b"last", qos=1)
            got = rx.take(len(sent) + 2)
            for qos in (0, 1):  # MQTT keeps the order of the messages of each QoS
                assert [(m.topic, m.payload) for m in got if m.qos == qos][:len(sent)] == \
                    [(t, b) for t, b, q in sent if q == qos] + ([] if qos == 0 else [
                        ("tf/v1/fleet/dev-x/up", b"with properties"),
                        ("tf/v1/fleet/dev-y/up", b"last")])
            with_props = next(m for m in got if m.payload == b"with properties")
            if protocol == mqtt.MQTTv5:
                assert with_props.properties is not None
                assert with_props.properties.UserProperty == [  # type: ignore[attr-defined]
                    ("k", "v")]
            # Nothing unacknowledged: a resumed session gets only what is new.
            rx.reconnect()
            tx.publish("tf/v1/fleet/dev-z/up", b"marker", qos=1)
            assert rx.take(1)[0].payload == b"marker"
            assert rx.got.empty()
    finally:
        rx.close()
