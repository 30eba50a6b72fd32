"""`make bench` (second part): do valid devices slow down while an attacker floods the node?

Starts Mosquitto and a real ledger node (as ledger_node.bench does). D valid devices publish
pre-signed readings at a steady rate, first for S seconds with no one else on the broker
("quiet"), then for S seconds while a separate attacker process floods the broker with
invalid messages ("flood"). For each phase it prints the publish-to-commit latency of the
valid readings (p50, p99: commit as the device sees it, when the receipt covering the reading
arrives) and the ratio flood / quiet. It then checks the node's accounting: every flood
message the attacker sent is either stored in quarantine or counted in its summary.

The attacker's mix (its own process, so its CPU is not the measuring process's):
  * garbage: random bytes on up topics of devices that do not exist;
  * unknown: well-formed, signed COSE_Sign1 envelopes from devices that are not enrolled;
  * forged:  envelopes that name an enrolled (idle) victim device, its kid, on its topic,
             with a signature that does not verify: each costs the node a P-256 verification.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hsm import SoftwareSigner
from ledger_node.bench_rig import Latencies, SignedDevice, client, percentile, running_node
from trustfleet.cose import sign1
from trustfleet.payload import GENESIS_PREV, Reading, encode_payload
from trustfleet.topics import up_topic

FLEET = "flood"
VICTIM = "victim-0"
ATTACK_KINDS = ("garbage", "unknown", "forged")


def _attack_pool(victim_kid: bytes, size: int = 300) -> list[tuple[str, str, bytes]]:
    """(kind, topic, payload) messages the attacker cycles through."""
    rnd = random.Random(7)
    own = SoftwareSigner.generate()
    pool: list[tuple[str, str, bytes]] = []
    for i in range(size):
        kind = ATTACK_KINDS[i % 3]
        if kind == "garbage":
            pool.append((kind, up_topic(FLEET, f"attacker-{i % 50}"),
                         rnd.randbytes(rnd.randint(20, 300))))
            continue
        dev = VICTIM if kind == "forged" else f"attacker-{i % 50}"
        r = Reading(dev=dev, seq=1 + i, prev=GENESIS_PREV, t=1_763_700_000_000 + i, ts="gps",
                    k="temp", d={"c": 99.0})
        kid = victim_kid if kind == "forged" else own.kid
        pool.append((kind, up_topic(FLEET, dev), sign1(encode_payload(r), kid, own.sign)))
    return pool


def attack(port: int, rate: float, seconds: float, victim_kid: bytes) -> dict[str, int]:
    """Publish the attack mix at `rate` messages/s (QoS 1) for `seconds`; return what was sent."""
    pool = _attack_pool(victim_kid)
    c = client(port, f"attacker-{os.getpid()}")
    sent = dict.fromkeys(ATTACK_KINDS, 0)
    start, i, info = time.perf_counter(), 0, None
    while (elapsed := time.perf_counter() - start) < seconds:
        due = int(elapsed * rate)
        while i < due:
            kind, topic, payload = pool[i % len(pool)]
            info = c.publish(topic, payload, qos=1)
            sent[kind] += 1
            i += 1
        time.sleep(0.005)
    if info is not None:
        try:
            info.wait_for_publish(60)
        except (RuntimeError, ValueError) as exc:  # the broker cut us off: report what was sent
            print(f"attacker: {exc}", file=sys.stderr)
    c.disconnect()
    c.loop_stop()
    return sent


def _publish_phase(c: object, devices: list[SignedDevice], lat: Latencies, rate: float,
                   seconds: float, offset: int) -> list[tuple[str, int]]:
    """Publish readings [offset, offset + rate * seconds) of every device, evenly spread."""
    from trustfleet.topics import up_topic as topic_of

    per_device = int(rate * seconds)
    topics = {d.dev: topic_of(FLEET, d.dev) for d in devices}
    keys: list[tuple[str, int]] = []
    start, done = time.perf_counter(), 0
    while done < per_device:
        due = min(per_device, int((time.perf_counter() - start) * rate) + 1)
        for n in range(done, due):
            for d in devices:
                seq = offset + n + 1
                with lat.lock:
                    lat.sent[(d.dev, seq)] = time.perf_counter()
                c.publish(topics[d.dev], d.readings[seq - 1], qos=1)  # type: ignore[attr-defined]
                keys.append((d.dev, seq))
        done = due
        time.sleep(0.005)
    return keys


def _summary(name: str, lat: Latencies, keys: list[tuple[str, int]]) -> tuple[float, float]:
    values = [lat.latency[k] for k in keys if k in lat.latency]
    p50, p99 = percentile(values, 50) * 1000, percentile(values, 99) * 1000
    print(f"  {name:<6} {len(values):>6} readings   p50 {p50:7.1f} ms   p99 {p99:7.1f} ms")
    return p50, p99


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ledger_node.bench_flood",
                                 description="Valid-reading latency with and without a flood.")
    ap.add_argument("--devices", type=int, default=20, help="valid devices (20)")
    ap.add_argument("--rate", type=float, default=10, help="readings/s per valid device (10)")
    ap.add_argument("--seconds", type=float, default=10, help="length of each phase (10)")
    ap.add_argument("--flood-rate", type=float, default=10_000,
                    help="invalid messages/s the attacker sends (10000)")
    ap.add_argument("--node-arg", action="append", default=[],
                    help="extra argument for `trustfleet node run` (repeatable)")
    ap.add_argument("--attack", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--victim-kid", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.attack:
        sent = attack(args.port, args.flood_rate, args.seconds, bytes.fromhex(args.victim_kid))
        print(json.dumps(sent))
        return 0

    per_device = int(args.rate * args.seconds) * 2
    print(f"bench-flood: signing {per_device} readings for each of {args.devices} devices...",
          flush=True)
    devices = [SignedDevice(f"valid-{i:03d}", per_device) for i in range(args.devices)]
    victim = SoftwareSigner.generate()
    keys = {d.dev: d.signer.public_key_der() for d in devices}
    keys[VICTIM] = victim.public_key_der()
    with tempfile.TemporaryDirectory(prefix="tf-flood-") as tmp_name, \
            running_node(Path(tmp_name), keys, FLEET, args.node_arg) as node:
        lat = Latencies()
        sub = client(node.mqtt_port, "flood-receipts")
        sub.on_message = lat.on_message
        sub.subscribe(f"tf/v1/{FLEET}/+/receipt", qos=1)
        pub = client(node.mqtt_port, "flood-valid")
        time.sleep(0.5)
        total = args.devices * args.rate * args.seconds
        print(f"bench-flood: quiet phase, {args.devices} devices x {args.rate:g} readings/s "
              f"for {args.seconds:g} s ({total:.0f} readings)...", flush=True)
        quiet = _publish_phase(pub, devices, lat, args.rate, args.seconds, 0)
        print(f"bench-flood: flood phase, the same while an attacker sends "
              f"{args.flood_rate:,.0f} invalid messages/s...", flush=True)
        attacker = subprocess.Popen(
            [sys.executable, "-m", "ledger_node.bench_flood", "--attack", "--port",
             str(node.mqtt_port), "--flood-rate", str(args.flood_rate), "--seconds",
             str(args.seconds + 1.0), "--victim-kid", victim.kid.hex()],
            stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        flood = _publish_phase(pub, devices, lat, args.rate, args.seconds,
                               int(args.rate * args.seconds))
        out, _ = attacker.communicate(timeout=args.seconds + 120)
        sent = json.loads(out.strip().splitlines()[-1])
        deadline, last, stable = time.monotonic() + 120, -1, 0
        while time.monotonic() < deadline and stable < 5:  # until nothing more arrives
            status = node.get("/v1/node/status")
            done = all(lat.committed(d.dev) == per_device for d in devices)
            stable = stable + 1 if done and status["queue"] == 0 and \
                status["received"] == last else 0
            last = status["received"]
            time.sleep(0.3)
        status = node.get("/v1/node/status")
        q = node.get("/v1/quarantine?limit=1")
        pub.disconnect()
        sub.disconnect()
    missing = [d.dev for d in devices if lat.committed(d.dev) != per_device]
    print()
    print(f"valid readings, publish->commit ({args.devices} devices, "
          f"{args.devices * args.rate:g} readings/s):")
    q50, q99 = _summary("quiet", lat, quiet)
    f50, f99 = _summary("flood", lat, flood)
    print(f"flood ratio (flood / quiet):  p50 {f50 / q50:.2f}x   p99 {f99 / q99:.2f}x   "
          f"(attacker: {sum(sent.values()):,} messages at {args.flood_rate:,.0f}/s: "
          + ", ".join(f"{k} {v:,}" for k, v in sent.items()) + ")")
    stored, summarised = sum(q["counts"].values()), q["summarised"]
    flood_received = status["received"] - len(quiet) - len(flood)
    print(f"quarantine: {stored:,} stored + {summarised:,} summarised = "
          f"{stored + summarised:,}; the node received {flood_received:,} of the "
          f"{sum(sent.values()):,} flood messages sent"
          + ("" if flood_received == sum(sent.values()) else
             " (the broker drops what its queue for the node cannot hold)"))
    print(f"  examined and rejected {sum(status['rejected'].values()):,}, summarised "
          f"unexamined (ingest overload) {status['summarised_unexamined']:,}")
    if missing:
        print(f"bench-flood: readings of {len(missing)} devices were not all committed",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
