"""The node's MQTT client (ledger_node.mqtt_ingest.IngestClient) against a real broker: every
message arrives once, in order, byte-exact, whatever its size or QoS, with or without MQTT v5
properties, with the batch hook `on_messages` or without it (paho's handler); and every QoS 1
message is acknowledged (a resumed session gets nothing again), unless the batch hook raised on it
(then the broker sends it again). tests/test_ingest_wire.py checks the packets a broker
sends but rarely, on a fake socket."""

from __future__ import annotations

import os
import queue
import random
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
    """The client under test, subscribed to every `up` topic (at QoS `qos`). With `batched`,
    the batch hook is set and `seq` gets what arrives, by either way, in order: ("hook",
    topic, payload) or ("paho", topic, payload); `batches` the sizes of the hook's calls."""

    def __init__(self, port: int, protocol: int = mqtt.MQTTv5, *, batched: bool = False,
                 qos: int = 1) -> None:
        self.got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.seq: queue.Queue[tuple[str, str, bytes]] = queue.Queue()
        self.batches: list[int] = []
        self.subscribed = threading.Event()
        self.port, self.protocol, self.batched, self.qos = port, protocol, batched, qos
        self.client = self._connect()

    def _connect(self) -> IngestClient:
        v5 = self.protocol == mqtt.MQTTv5
        c = IngestClient(CallbackAPIVersion.VERSION2, client_id="ingest-under-test",
                         protocol=self.protocol, clean_session=None if v5 else False)
        if self.batched:
            c.on_message = lambda client, userdata, msg: self.seq.put(
                ("paho", msg.topic, bytes(msg.payload)))
            c.on_messages = self._on_messages
        else:
            c.on_message = lambda client, userdata, msg: self.got.put(msg)
        c.on_subscribe = lambda *a: self.subscribed.set()

        def on_connect(client: mqtt.Client, *a: Any) -> None:
            client.subscribe("$share/ledger/tf/v1/+/+/up", qos=self.qos)

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

    def _on_messages(self, batch: list[tuple[str, bytes]]) -> None:
        self.batches.append(len(batch))
        for topic, payload in batch:
            self.seq.put(("hook", topic, payload))

    def take(self, n: int) -> list[mqtt.MQTTMessage]:
        return [self.got.get(timeout=30) for _ in range(n)]

    def take_seq(self, n: int) -> list[tuple[str, str, bytes]]:
        return [self.seq.get(timeout=30) for _ in range(n)]

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


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311])
def test_the_batch_hook_keeps_the_order_across_reads_and_with_what_paho_delivers(
        broker: Any, protocol: int) -> None:
    """Thousands of messages, most plain (the hook's), some for paho (QoS 2; v5 properties),
    sizes that split packets across reads, and a SUBACK half way: each QoS's messages in the
    order sent, each once, every QoS 1 one acknowledged (the broker sends at most 100
    unacknowledged; a resumed session gets nothing again)."""
    rx = Receiver(broker.port, protocol, batched=True, qos=2)
    rng = random.Random(1)
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("k", "v")
    sent: list[tuple[str, bytes, int, bool]] = []
    for i in range(4000):
        size = rng.choice([0, 40, 250, 250, 250, 3000]) if i % 400 else 70_000
        qos = 2 if i % 97 == 3 else 0 if i % 5 == 0 else 1
        sent.append((f"tf/v1/fleet/dev-{i % 7}/up", i.to_bytes(4, "big") + rng.randbytes(size),
                     qos, i % 50 == 7))
    try:
        with TestClient(broker.port, "publisher") as tx:
            infos = []
            for i, (topic, body, qos, with_props) in enumerate(sent):
                infos.append(tx.client.publish(topic, body, qos=qos,
                                               properties=props if with_props else None))
                if i == len(sent) // 2:
                    rx.subscribed.clear()
                    rx.client.subscribe("tf/v1/elsewhere/+/up", qos=1)  # its SUBACK between
            for info in infos:
                info.wait_for_publish(30)
            got = rx.take_seq(len(sent))
            assert rx.subscribed.wait(10)
            index = {body[:4]: n for n, (_, body, _, _) in enumerate(sent)}
            for qos in (0, 1, 2):
                assert [(t, p) for _, t, p in got if sent[index[p[:4]]][2] == qos] == \
                    [(t, b) for t, b, q, _ in sent if q == qos]
            by_paho = {index[p[:4]] for via, _, p in got if via == "paho"}
            assert by_paho == {n for n, (_, _, q, w) in enumerate(sent)
                               if q == 2 or (w and protocol == mqtt.MQTTv5)}
            assert max(rx.batches) > 1 and sum(rx.batches) == len(sent) - len(by_paho)
            rx.reconnect()  # nothing unacknowledged: a resumed session gets only what is new
            tx.publish("tf/v1/fleet/dev-z/up", b"marker", qos=1)
            assert rx.take_seq(1) == [("hook", "tf/v1/fleet/dev-z/up", b"marker")]
            assert rx.seq.empty()
    finally:
        rx.close()


def test_a_batch_the_hook_raised_on_is_not_acknowledged_and_comes_again(broker: Any) -> None:
    """With suppress_exceptions off, an exception in the hook leaves loop_read (paho's loop
    ends, as for on_message) and the batch gets no PUBACKs: the broker sends it again."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    c = IngestClient(CallbackAPIVersion.VERSION2, client_id="raises", protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    c.on_subscribe = lambda *a: subscribed.set()
    failed: list[bytes] = []

    def raising(batch: list[tuple[str, bytes]]) -> None:
        failed.extend(payload for _, payload in batch)
        raise RuntimeError("inbox broke")

    c.on_messages = raising
    c.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
    c.subscribe("tf/v1/+/+/up", qos=1)
    while not subscribed.is_set():
        c.loop(0.1)
    payloads = [b"m%d" % n for n in range(20)]
    with TestClient(broker.port, "publisher") as tx:
        for payload in payloads:
            tx.publish("tf/v1/fleet/dev-0/up", payload)
        with pytest.raises(RuntimeError, match="inbox broke"):
            for _ in range(100):
                c.loop(0.1)
        assert failed and failed == payloads[:len(failed)]
        c.disconnect()
        got: list[bytes] = []
        c.on_messages = lambda batch: got.extend(payload for _, payload in batch)
        c.reconnect()
        for _ in range(100):
            c.loop(0.1)
            if len(got) >= len(payloads):
                break
        c.disconnect()
    assert got == payloads  # the failed batch again, then the rest, in order
