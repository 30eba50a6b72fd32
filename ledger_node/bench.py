"""`make bench`: readings through the real broker into a real node, measured.

Pre-signs N envelopes for D devices (software keys: the device side is not what is measured),
starts Mosquitto and a ledger node (its block key in a SoftHSM token) on free loopback ports,
publishes every envelope with QoS 1 as fast as the broker takes them, and follows the
receipts. Prints readings committed per second, publish-to-commit latency (p50, p99; commit
as seen by the device, i.e. when the receipt covering the reading arrives), and this
machine's raw P-256 verification rate measured in the same run, with the ratio between them.

`--batch N` pre-signs with batch signing instead (trustfleet.batch.sign_batch: one signature
per N readings of a device, each reading a self-contained batched reading with its
inclusion proof, `prev` linking by payload hash); every item still travels as its own
message, so the two runs differ only in how readings are signed. The ratio to the raw
verification rate can then pass 1: one verification covers several readings (the node checks
a signature shared by readings of one verification chunk once).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from hsm import SoftHsmRig, SoftwareSigner, verify_es256
from ledger_node.softpki import software_enrolment
from trustfleet.batch import MAX_BATCH, sign_batch
from trustfleet.broker import start_broker
from trustfleet.cose import sign1
from trustfleet.payload import GENESIS_PREV, Reading, encode_payload
from trustfleet.procs import free_port, stop_process
from trustfleet.receipt import decode_receipt
from trustfleet.topics import up_topic

FLEET = "bench"


def presign(devices: int, per_device: int, batch: int = 1
            ) -> tuple[dict[str, bytes], list[tuple[str, int, bytes]]]:
    """Signed readings of every device, interleaved; `batch` > 1: batch signing."""
    keys: dict[str, bytes] = {}
    chains: list[list[tuple[str, int, bytes]]] = []
    for i in range(devices):
        dev = f"bench-{i:04d}"
        signer = SoftwareSigner.generate()
        keys[dev] = signer.public_key_der()
        prev, chain = GENESIS_PREV, []
        if batch > 1:
            chains.append(presign_batched(dev, signer, per_device, batch))
            continue
        for seq in range(1, per_device + 1):
            r = Reading(dev=dev, seq=seq, prev=prev, t=1_763_700_000_000 + seq * 1000, ts="gps",
                        k="temp", d={"c": 4.0 + (seq % 50) / 10})
            env = sign1(encode_payload(r), signer.kid, signer.sign)
            prev = hashlib.sha256(env).digest()
            chain.append((dev, seq, env))
        chains.append(chain)
    # interleave devices, as a fleet would
    order = [item for group in zip(*chains, strict=True) for item in group]
    return keys, order


def presign_batched(dev: str, signer: SoftwareSigner, per_device: int, batch: int
                    ) -> list[tuple[str, int, bytes]]:
    prev = GENESIS_PREV
    chain: list[tuple[str, int, bytes]] = []
    for first in range(1, per_device + 1, batch):
        payloads = []
        for seq in range(first, min(first + batch, per_device + 1)):
            payload = encode_payload(Reading(dev=dev, seq=seq, prev=prev,
                                             t=1_763_700_000_000 + seq * 1000, ts="gps",
                                             k="temp", d={"c": 4.0 + (seq % 50) / 10}))
            prev = hashlib.sha256(payload).digest()
            payloads.append(payload)
        items = sign_batch(payloads, dev, first, 1_763_700_000_000 + first * 1000, signer.kid,
                           signer.sign)
        chain.extend((dev, first + i, item) for i, item in enumerate(items))
    return chain


def raw_verify_rate(seconds: float = 2.0) -> float:
    signer = SoftwareSigner.generate()
    key, msg = signer.public_key_der(), b"x" * 200
    sig = signer.sign(msg)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(200):
            verify_es256(key, msg, sig)
        n += 200
    return n / (time.perf_counter() - start)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class ReceiptFollower:
    """Turns receipts into per-reading commit latencies."""

    def __init__(self, sent_at: dict[tuple[str, int], float]) -> None:
        self.sent_at = sent_at
        self.done: dict[str, int] = {}
        self.latencies: list[float] = []
        self.last_commit = 0.0
        self.lock = threading.Lock()

    def on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        receipt = decode_receipt(bytes(msg.payload))
        with self.lock:
            before = self.done.get(receipt.dev, 0)
            for seq in range(before + 1, receipt.seq + 1):
                sent = self.sent_at.get((receipt.dev, seq))
                if sent is not None:
                    self.latencies.append(now - sent)
            if receipt.seq > before:
                self.done[receipt.dev] = receipt.seq
                self.last_commit = now

    def committed(self) -> int:
        with self.lock:
            return sum(self.done.values())


def _client(port: int, name: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ledger_node.bench",
                                 description="Throughput and latency of one ledger node.")
    ap.add_argument("--devices", type=int, default=50, help="simulated devices (50)")
    ap.add_argument("--readings", type=int, default=20_000, help="total readings (20000)")
    ap.add_argument("--timeout", type=float, default=300, help="give up after seconds (300)")
    ap.add_argument("--batch", type=int, default=1, metavar="N",
                    help="batch signing: one signature per N readings of a device (1: off)")
    args = ap.parse_args(argv)
    if not 1 <= args.batch <= MAX_BATCH:
        ap.error(f"--batch must be between 1 and {MAX_BATCH}")
    per_device = max(1, args.readings // args.devices)
    total = per_device * args.devices

    print("bench: raw P-256 verification rate (cryptography/OpenSSL, 1 core)...", flush=True)
    verify_rate = raw_verify_rate()
    how = f"in batches of {args.batch}" if args.batch > 1 else "one signature each"
    print(f"bench: pre-signing {total} readings for {args.devices} devices ({how})...",
          flush=True)
    keys, order = presign(args.devices, per_device, args.batch)

    import json
    import subprocess
    import urllib.request

    with tempfile.TemporaryDirectory(prefix="tf-bench-") as tmp_name:
        tmp = Path(tmp_name)
        rig = SoftHsmRig(tmp / "hsm")
        rig.ensure_token("node-1")
        ca_path, enroll = software_enrolment(tmp / "pki", keys, FLEET)
        mqtt_port, api_port = free_port(), free_port()
        broker = start_broker(tmp / "broker", mqtt_port, tmp / "mosquitto.log")
        log = (tmp / "node.log").open("ab")
        node = subprocess.Popen(
            [sys.executable, "-m", "trustfleet.cli", "node", "run", "--data", str(tmp / "node"),
             "--rig", str(tmp / "hsm"), "--token", "node-1", "--enroll", str(enroll),
             "--fleet-ca", str(ca_path),
             "--broker-port", str(mqtt_port), "--api-port", str(api_port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/v1/node/status",
                                                timeout=2) as resp:
                        if json.loads(resp.read())["broker_connected"]:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline or node.poll() is not None:
                    print((tmp / "node.log").read_text()[-3000:], file=sys.stderr)
                    raise SystemExit("bench: node did not start")
                time.sleep(0.2)
            sent_at: dict[tuple[str, int], float] = {}
            follower = ReceiptFollower(sent_at)
            sub = _client(mqtt_port, "bench-receipts")
            sub.on_message = follower.on_message
            sub.subscribe(f"tf/v1/{FLEET}/+/receipt", qos=1)
            time.sleep(0.5)
            pub = _client(mqtt_port, "bench-publisher")
            topics = {d: up_topic(FLEET, d) for d in keys}
            what = "batched readings" if args.batch > 1 else "envelopes"
            print(f"bench: publishing {total} {what} (QoS 1, one per message)...", flush=True)
            start = time.perf_counter()
            last_info = None
            for dev, seq, env in order:
                sent_at[(dev, seq)] = time.perf_counter()
                last_info = pub.publish(topics[dev], env, qos=1)
            if last_info is not None:
                last_info.wait_for_publish(args.timeout)
            published = time.perf_counter()
            while follower.committed() < total and time.perf_counter() - start < args.timeout:
                time.sleep(0.05)
            committed = follower.committed()
            elapsed = follower.last_commit - start
            pub.disconnect()
            sub.disconnect()
        finally:
            stop_process(node, timeout=30)
            stop_process(broker)
            log.close()
    if committed < total or not follower.latencies:
        print(f"bench: only {committed} of {total} readings committed before the timeout",
              file=sys.stderr)
        return 1
    rate = committed / elapsed
    lat = follower.latencies
    print()
    print(f"readings committed:           {committed} in {elapsed:.2f} s "
          f"(publishing took {published - start:.2f} s)")
    if args.batch > 1:
        signatures = args.devices * -(-per_device // args.batch)
        print(f"batch signing:                {args.batch} readings per signature "
              f"({signatures} signatures for {total} readings, "
              f"{1000 * signatures / total:.1f} per 1,000)")
    print(f"committed readings/s:         {rate:,.0f}")
    print(f"publish->commit latency:      p50 {percentile(lat, 50) * 1000:.0f} ms, "
          f"p99 {percentile(lat, 99) * 1000:.0f} ms, mean {statistics.fmean(lat) * 1000:.0f} ms")
    print(f"raw P-256 verifications/s:    {verify_rate:,.0f} (one core, same run)")
    print(f"ratio committed/raw verify:   {rate / verify_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
