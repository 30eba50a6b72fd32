"""Shared parts of the benchmarks that run a real broker and a real node (bench, bench_flood).

`running_node` starts Mosquitto and a ledger node (block key in a SoftHSM token) on free
loopback ports in a folder the caller owns, enrols the given device keys, waits until the
node is connected and stops both on exit. `RawPublisher` is a minimal MQTT 3.1.1 QoS 1
publisher on a plain socket (pre-encoded packets, written in large chunks), so that the
simulated devices cost next to no CPU on the machine that also runs the broker and the node;
`Steady` publishes with it at a fixed rate; `Latencies` turns receipts into
publish-to-commit latencies; `CpuClock` reads processes' CPU time from /proc.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from hsm import SoftHsmRig, SoftwareSigner
from ledger_node.auth import local_token
from ledger_node.softpki import software_enrolment
from trustfleet.broker import start_broker
from trustfleet.cose import sign1
from trustfleet.payload import GENESIS_PREV, Reading, encode_payload
from trustfleet.procs import free_port, stop_process
from trustfleet.receipt import decode_receipt

T0 = 1_763_700_000_000


@dataclass
class RunningNode:
    mqtt_port: int
    api_port: int
    data: Path
    log: Path
    proc: subprocess.Popen[bytes]
    broker: subprocess.Popen[bytes]
    token: str
    """An operator API token for this node (ledger_node.auth.local_token)."""

    def get(self, path: str) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())


@contextmanager
def running_node(tmp: Path, keys: dict[str, bytes], fleet: str,
                 extra: Sequence[str] = ()) -> Iterator[RunningNode]:
    rig = SoftHsmRig(tmp / "hsm")
    rig.ensure_token("node-1")
    ca_path, enroll = software_enrolment(tmp, keys, fleet)
    mqtt_port, api_port = free_port(), free_port()
    broker = start_broker(tmp / "broker", mqtt_port, tmp / "mosquitto.log")
    log_path = tmp / "node.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trustfleet.cli", "node", "run", "--data", str(tmp / "node"),
             "--rig", str(tmp / "hsm"), "--token", "node-1", "--enroll", str(enroll),
             "--fleet-ca", str(ca_path), "--broker-port", str(mqtt_port),
             "--api-port", str(api_port), *extra],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    node = RunningNode(mqtt_port, api_port, tmp / "node", log_path, proc, broker,
                       local_token(tmp / "node", prefix="bench"))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if node.get("/v1/node/status")["broker_connected"]:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                print(log_path.read_text()[-3000:], file=sys.stderr)
                raise SystemExit("bench: node did not start")
            time.sleep(0.2)
        yield node
    finally:
        stop_process(proc, timeout=30)
        stop_process(broker)


def client(port: int, name: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


class SignedDevice:
    """A device with a software key and its readings signed ahead of time."""

    def __init__(self, dev: str, count: int, interval_ms: int = 1000) -> None:
        self.dev = dev
        self.signer = SoftwareSigner.generate()
        self.readings: list[bytes] = []
        prev = GENESIS_PREV
        for seq in range(1, count + 1):
            r = Reading(dev=dev, seq=seq, prev=prev, t=T0 + seq * interval_ms, ts="gps",
                        k="temp", d={"c": round(4.0 + (seq % 50) / 10, 1)})
            env = sign1(encode_payload(r), self.signer.kid, self.signer.sign)
            prev = hashlib.sha256(env).digest()
            self.readings.append(env)


class Latencies:
    """Receipt follower: the publish-to-commit latency of each (device, seq)."""

    def __init__(self) -> None:
        self.sent: dict[tuple[str, int], float] = {}
        self.done: dict[str, int] = {}
        self.latency: dict[tuple[str, int], float] = {}
        self.last_commit = 0.0
        self.lock = threading.Lock()

    def on_message(self, c: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        receipt = decode_receipt(bytes(msg.payload))
        with self.lock:
            before = self.done.get(receipt.dev, 0)
            for seq in range(before + 1, receipt.seq + 1):
                sent = self.sent.get((receipt.dev, seq))
                if sent is not None:
                    self.latency[(receipt.dev, seq)] = now - sent
            if receipt.seq > before:
                self.done[receipt.dev] = receipt.seq
                self.last_commit = now

    def committed(self, dev: str) -> int:
        with self.lock:
            return self.done.get(dev, 0)

    def total(self) -> int:
        """Readings committed over all devices (contiguously, as receipts report them)."""
        with self.lock:
            return sum(self.done.values())


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(topic: str, payload: bytes, mid: int) -> bytes:
    """An MQTT 3.1.1 PUBLISH packet, QoS 1, packet id `mid` (1..65535)."""
    name = topic.encode()
    body = len(name).to_bytes(2, "big") + name + mid.to_bytes(2, "big") + payload
    return b"\x32" + _varint(len(body)) + body


class RawPublisher:
    """A minimal MQTT 3.1.1 QoS 1 publisher on a plain socket.

    Packets are encoded ahead of time (`packet`) and written in large chunks; a reader thread
    counts the broker's PUBACKs and `send` keeps at most `window` messages unacknowledged,
    so packet ids are never reused while in flight. Costs next to no CPU per message, unlike a
    full client library, which matters when the devices share the node's cores."""

    def __init__(self, port: int, client_id: str, window: int = 2000) -> None:
        self.window = window
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cid = client_id.encode()
        body = b"\x00\x04MQTT\x04\x02\x00\x00" + len(cid).to_bytes(2, "big") + cid
        self.sock.sendall(b"\x10" + _varint(len(body)) + body)  # clean session, no keepalive
        connack = b""
        while len(connack) < 4:
            got = self.sock.recv(4 - len(connack))
            if not got:
                raise ConnectionError("broker closed the connection before CONNACK")
            connack += got
        if connack[0] != 0x20 or connack[3] != 0:
            raise ConnectionError(f"broker refused the connection: {connack.hex()}")
        self.sent = self.acked = self._want = 0
        self._mid = 0
        self.cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="raw-publisher", daemon=True)
        self._reader.start()

    def packet(self, topic: str, payload: bytes) -> bytes:
        self._mid = self._mid % 65535 + 1
        return publish_packet(topic, payload, self._mid)

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                with self.cond:
                    self.acked = -1  # closed: wake any sender
                    self.cond.notify_all()
                return
            buf += data
            i, acks = 0, 0
            while len(buf) - i >= 2 and len(buf) - i >= 2 + buf[i + 1]:
                if buf[i] & 0xF0 == 0x40:
                    acks += 1
                i += 2 + buf[i + 1]  # the broker sends us only 2-byte-long PUBACKs
            buf = buf[i:]
            if acks:
                with self.cond:
                    self.acked += acks
                    self.cond.notify_all()

    def send(self, packets: Sequence[bytes], timeout: float = 120) -> None:
        """Write `packets` (from `packet`), waiting whenever `window` are unacknowledged."""
        step = max(1, self.window // 2)
        for i in range(0, len(packets), step):
            part = packets[i:i + step]
            with self.cond:
                self._want = len(part)
                if not self.cond.wait_for(self._room, timeout):
                    raise TimeoutError("the broker stopped acknowledging")
                if self.acked < 0:
                    raise ConnectionError("the broker closed the connection")
                self.sent += len(part)
            self.sock.sendall(b"".join(part))

    def _room(self) -> bool:
        return self.acked < 0 or self.sent + self._want - self.acked <= self.window

    def wait_acked(self, timeout: float = 120) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.acked < 0 or self.acked >= self.sent,
                                      timeout) or self.acked < 0:
                raise TimeoutError("not every message was acknowledged by the broker")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        self.sock.close()


class Steady:
    """Publishes pre-encoded readings at a fixed rate, recording when each was sent.

    Every `tick` it writes the readings that are due by then (at 5,000/s and 2 ms ticks,
    about ten at a time): a steady stream, not a burst."""

    def __init__(self, pub: RawPublisher, lat: Latencies, tick: float = 0.002) -> None:
        self.pub, self.lat, self.tick = pub, lat, tick

    def run(self, items: Sequence[tuple[str, int, bytes]], rate: float) -> float:
        """Publish `items` ((dev, seq, packet)) at `rate`/s; returns the seconds it took."""
        start = time.perf_counter()
        done = 0
        while done < len(items):
            due = min(len(items), int((time.perf_counter() - start) * rate) + 1)
            if due > done:
                part = items[done:due]
                now = time.perf_counter()
                with self.lat.lock:
                    for dev, seq, _ in part:
                        self.lat.sent[(dev, seq)] = now
                self.pub.send([p for _, _, p in part])
                done = due
            time.sleep(self.tick)
        return time.perf_counter() - start


class CpuClock:
    """CPU time (user + system, seconds) of processes, read from /proc (Linux)."""

    TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    @classmethod
    def of(cls, pid: int) -> float:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / cls.TICK

    @classmethod
    def threads(cls, pid: int) -> dict[int, float]:
        """CPU time of each thread of `pid`."""
        out: dict[int, float] = {}
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return out
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / cls.TICK
        return out

    @classmethod
    def children(cls, pid: int) -> list[int]:
        """Live descendants of `pid` (a node's verification workers)."""
        found, todo = [], [pid]
        while todo:
            p = todo.pop()
            try:
                with open(f"/proc/{p}/task/{p}/children") as f:
                    kids = [int(c) for c in f.read().split()]
            except OSError:
                kids = []
            found.extend(kids)
            todo.extend(kids)
        return found

    @classmethod
    def tree(cls, pid: int) -> float:
        """CPU time of `pid` and its live descendants."""
        return cls.of(pid) + sum(cls.of(c) for c in cls.children(pid))
