"""The node's MQTT receive path (ledger_node.mqtt_ingest.IngestClient) on crafted byte streams,
against stock paho as the reference: with the batch hook `on_messages` or without it (then
paho's own handler), the same messages in the same order and the same bytes sent back
(PUBACK, PUBREC, PUBCOMP), for packets a broker sends but rarely (QoS 2, v5 properties, a
topic that is not UTF-8, an empty topic, SUBACK, PINGRESP and CONNACK in the middle, retain
and dup flags) and for any split of the stream into socket reads. A real broker sends none of
the odd ones on demand, hence a fake socket here; tests/test_mqtt_ingest.py runs the client
against Mosquitto."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ledger_node.mqtt_ingest import IngestClient


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(command: int, body: bytes) -> bytes:
    return bytes((command,)) + varint(len(body)) + body


def publish(v5: bool, topic: bytes, payload: bytes, qos: int = 1, mid: int = 0,
            props: bytes = b"", flags: int = 0) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    if v5:
        body += varint(len(props)) + props
    return packet(0x30 | qos << 1 | flags, body + payload)


def stream(v5: bool, big: bool = True) -> bytes:
    """Plain PUBLISHes (what devices send) with every other kind a broker may send between;
    `big`: with payloads of 16 and 70 kB too."""
    rng = random.Random(5)
    mids = iter(range(1, 1000))
    parts = [publish(v5, f"tf/v1/f/dev-{n % 3}/up".encode(), rng.randbytes(n * 7 % 300),
                     qos=n % 2, mid=next(mids)) for n in range(40)]
    parts += [
        publish(v5, b"tf/v1/f/dev-0/up", b"", mid=next(mids)),
        publish(v5, b"tf/v1/f/dev-0/up", rng.randbytes(127), mid=next(mids)),
        publish(v5, b"tf/v1/f/dev-0/up", rng.randbytes(128), mid=next(mids)),
        publish(v5, b"tf/v1/f/dev-1/up", rng.randbytes(16_383 if big else 300), mid=next(mids)),
        publish(v5, b"tf/v1/f/dev-1/up", rng.randbytes(16_384 if big else 300), mid=next(mids)),
        publish(v5, b"tf/v1/f/dev-2/up", rng.randbytes(70_000 if big else 300), mid=next(mids)),
        publish(v5, b"tf/v1/f/dev-2/up", b"retained", mid=next(mids), flags=1),
        publish(v5, b"tf/v1/f/dev-2/up", b"again", mid=next(mids), flags=8),
        publish(v5, "tf/v1/f/d\u00e9v/up".encode(), b"utf-8 topic", mid=next(mids)),
        publish(v5, b"tf/v1/f/\xff\xfe/up", b"topic not utf-8", mid=next(mids)),
        publish(v5, b"tf/v1/f/\xff\xfe/up", b"topic not utf-8, qos 0", qos=0),
        publish(v5, b"tf/v1/f/dev-0/up", b"qos 2", qos=2, mid=500),
        packet(0x62, (500).to_bytes(2, "big")),  # its PUBREL: delivered now, PUBCOMP sent
        packet(0x90, (7).to_bytes(2, "big") + (b"\x00" if v5 else b"") + b"\x01"),  # SUBACK
        packet(0xD0, b""),  # PINGRESP
        packet(0x20, b"\x00\x00\x00" if v5 else b"\x00\x00"),  # CONNACK
    ]
    if v5:
        parts += [
            publish(v5, b"tf/v1/f/dev-0/up", b"with properties", mid=next(mids),
                    props=b"\x01\x01"),  # payload format indicator: paho decodes it
            publish(v5, b"", b"empty topic", mid=next(mids)),
        ]
    parts += [publish(v5, b"tf/v1/f/dev-1/up", rng.randbytes(250), qos=n % 2, mid=next(mids))
              for n in range(40)]
    return b"".join(parts)


class FakeSocket:
    """What the client reads comes in reads of the sizes `cuts` gives; what it sends is kept."""

    def __init__(self, data: bytes, cuts: random.Random | None) -> None:
        self.data, self.pos, self.cuts = data, 0, cuts
        self.sent = bytearray()
        self.closed = False

    def recv(self, n: int) -> bytes:
        if self.pos >= len(self.data):
            raise BlockingIOError
        if self.cuts is not None:
            n = min(n, self.cuts.randint(1, 3000))
        got = self.data[self.pos:self.pos + n]
        self.pos += len(got)
        return got

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def close(self) -> None:
        self.closed = True

    def fileno(self) -> int:
        return -1

    def setblocking(self, flag: bool) -> None:
        pass


@dataclass
class Run:
    got: list[tuple[bytes, bytes]] = field(default_factory=list)
    batches: int = 0
    sent: bytes = b""
    rc: list[int] = field(default_factory=list)
    closed: bool = False


def run(kind: str, v5: bool, data: bytes, cuts: random.Random | None) -> Run:
    """Feed `data` to a client: "paho" (stock), "each" (IngestClient without the hook:
    paho handles every PUBLISH, after IngestClient's framing) or "batch"
    (IngestClient, on_messages); what it delivered and sent."""
    protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    cls = mqtt.Client if kind == "paho" else IngestClient
    client = cls(CallbackAPIVersion.VERSION2, client_id="wire", protocol=protocol)
    out = Run()

    def on_message(c: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        out.got.append((msg._topic, bytes(msg.payload)))

    def on_messages(batch: list[tuple[str, bytes]]) -> None:
        out.batches += 1
        out.got.extend((topic.encode(), payload) for topic, payload in batch)

    client.on_message = on_message
    if kind == "batch":
        assert isinstance(client, IngestClient)
        client.on_messages = on_messages
    sock = FakeSocket(data, cuts)
    client._sock = sock  # type: ignore[assignment]
    while client._sock is not None and (sock.pos < len(data) or client._out_packet):
        out.rc.append(client.loop_read())
        if client._sock is not None:
            client.loop_write()
    out.sent, out.closed = bytes(sock.sent), sock.closed
    return out


@pytest.mark.parametrize("v5", [True, False])
@pytest.mark.parametrize("split", ["whole", "small", "bytes"])
def test_batched_and_single_delivery_match_stock_paho(v5: bool, split: str) -> None:
    data = stream(v5, big=split != "bytes")  # a byte at a time: no 70 kB message
    seed = {"whole": None, "small": 1, "bytes": 2}[split]

    def cuts() -> random.Random | None:
        if seed is None:
            return None
        rng = random.Random(seed)
        if split == "bytes":
            rng.randint = lambda a, b: 1  # type: ignore[method-assign]
        return rng

    paho, each, batch = (run(kind, v5, data, cuts()) for kind in ("paho", "each", "batch"))
    assert len(paho.got) > 40 and not paho.closed
    assert each.got == paho.got and batch.got == paho.got
    assert each.sent == paho.sent and batch.sent == paho.sent  # every ack, in order
    assert set(each.rc) == set(batch.rc) == {0}
    if split == "whole":  # one call per read (and per packet paho handles), not per message
        assert batch.batches < len(batch.got) // 4


@pytest.mark.parametrize(("v5", "bad"), [(True, "length"), (False, "length"),
                                         (False, "empty topic")])  # (v5: a topic alias)
def test_a_malformed_packet_ends_the_connection_after_what_came_before(v5: bool,
                                                                       bad: str) -> None:
    good = b"".join(publish(v5, b"tf/v1/f/dev-0/up", bytes([n]) * 40, mid=n + 1)
                    for n in range(30))
    tail = b"\x32\xff\xff\xff\xff\x01" if bad == "length" else publish(v5, b"", b"x", mid=99)
    data = good + tail + publish(v5, b"tf/v1/f/dev-0/up", b"never", mid=100)
    paho, each, batch = (run(kind, v5, data, None) for kind in ("paho", "each", "batch"))
    assert [p for _, p in paho.got] == [bytes([n]) * 40 for n in range(30)]
    assert each.got == paho.got and batch.got == paho.got
    assert paho.closed and each.closed and batch.closed
    assert each.rc[-1] == batch.rc[-1] == mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
    assert each.sent == paho.sent  # without the hook, every PUBLISH is paho's own


def test_an_exception_in_the_hook_is_logged_and_raised_or_suppressed() -> None:
    data = b"".join(publish(True, b"tf/v1/f/dev-0/up", b"p", mid=n) for n in range(1, 11))
    logged: list[str] = []
    for suppress in (False, True):
        client = IngestClient(CallbackAPIVersion.VERSION2, client_id="wire",
                              protocol=mqtt.MQTTv5)
        client.suppress_exceptions = suppress
        client.on_log = lambda c, u, level, text: logged.append(text)

        def hook(batch: list[tuple[str, bytes]]) -> None:
            raise RuntimeError("inbox broke")

        client.on_messages = hook
        sock = FakeSocket(data, None)
        client._sock = sock  # type: ignore[assignment]
        if suppress:  # logged like on_message's; acknowledged as paho would
            assert client.loop_read() == 0
            client.loop_write()
            assert sock.sent == b"".join(bytes((0x40, 2, 0, n)) for n in range(1, 11))
        else:  # raised, and nothing acknowledged: the broker sends them again
            with pytest.raises(RuntimeError, match="inbox broke"):
                client.loop_read()
            client.loop_write()
            assert sock.sent == b""
        assert logged.pop() == "Caught exception in on_messages: inbox broke"


def test_when_the_hook_raises_the_packet_paho_was_to_handle_waits_for_the_next_read() -> None:
    """A PUBLISH paho handles ends a batch; if the hook raises on that batch, that packet and
    what follows it are still there for the next read, as with on_message."""
    plain = publish(True, b"tf/v1/f/dev-0/up", b"first", mid=1)
    handled = publish(True, b"tf/v1/f/dev-0/up", b"props", mid=2, props=b"\x01\x01")
    after = publish(True, b"tf/v1/f/dev-0/up", b"after", mid=3)
    client = IngestClient(CallbackAPIVersion.VERSION2, client_id="wire", protocol=mqtt.MQTTv5)
    got: list[bytes] = []
    fail = [True]

    def hook(batch: list[tuple[str, bytes]]) -> None:
        if fail.pop():
            raise RuntimeError("once")
        got.extend(p for _, p in batch)

    client.on_messages = hook
    client.on_message = lambda c, u, m: got.append(bytes(m.payload))
    sock = FakeSocket(plain + handled + after, None)
    client._sock = sock  # type: ignore[assignment]
    with pytest.raises(RuntimeError):
        client.loop_read()
    assert client._rbuf == handled + after
    fail.append(False)
    sock.data += publish(True, b"tf/v1/f/dev-0/up", b"next", mid=4)
    assert client.loop_read() == 0
    assert got == [b"props", b"after", b"next"]
