"""Shared parts of the benchmarks that run a real broker and a real node (bench_flood).

`running_node` starts Mosquitto and a ledger node (block key in a SoftHSM token) on free
loopback ports in a folder the caller owns, enrols the given device keys, waits until the
node is connected and stops both on exit. `Steady` publishes pre-signed readings at a fixed
rate; `Latencies` turns receipts into publish-to-commit latencies.
"""

from __future__ import annotations

import hashlib
import json
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

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}{path}",
                                    timeout=10) as resp:
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
    node = RunningNode(mqtt_port, api_port, tmp / "node", log_path, proc)
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
            self.done[receipt.dev] = max(before, receipt.seq)

    def committed(self, dev: str) -> int:
        with self.lock:
            return self.done.get(dev, 0)


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]
