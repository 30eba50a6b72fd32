"""`make bench` (signing part): the device HSM, per-reading against batch signing.

Everything in a temporary folder on loopback ports: a SoftHSM2 rig, Mosquitto and a ledger
node (block key in its own token). This process opens the device token itself (PKCS#11,
CKM_ECDSA over a host SHA-256, as the agent does).

1. Token speed. SoftHSM signatures per second through PKCS#11, one thread, for
   ``--sign-s`` seconds, next to in-memory P-256 signatures per second (OpenSSL through
   `cryptography`, the same curve and digest) measured in the same run: the ratio is what
   the PKCS#11 path costs.
2. Sealing a backlog. ``--backlog`` readings stored in a fresh outbox, then sealed with the
   token at its own speed, once per-reading and once in batches of ``--batch-max``: HSM
   operations per 1,000 readings, the median HSM time per reading (each signature's
   duration shared out over the readings it covers), readings sealed per second into the
   fsync'd outbox, and the bytes each reading takes on the wire (a batched reading carries
   the batch's signed header and its inclusion proof).
3. Keeping up. A slowed token (every signature takes at least ``--sign-delay-ms``, 115 ms:
   an ATECC608) and a sensor at ``--rate`` readings/s for ``--paced-s`` seconds, through the
   broker into the node (edge_agent.paced, in a child process), in both modes: HSM
   operations per 1,000 readings, median HSM time per reading, median time from a reading
   being due to its signature, and the backlog (due, unsigned) when the sensor stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.collectors.base import Sample
from edge_agent.outbox import Outbox
from edge_agent.paced import ATECC608_SIGN_S
from hsm import SoftHsmRig, SoftwareSigner, open_signer
from hsm.signer import Signer
from ledger_node.auth import local_token
from ledger_node.softpki import software_enrolment
from trustfleet.broker import start_broker
from trustfleet.procs import free_port, stop_process

FLEET = "bench"
DEVICES = ("bench-seal", "bench-per-reading", "bench-batch")
NODE = "node-1"
_T0_MS = 1_767_225_600_000


def sign_rate(sign: Callable[[bytes], bytes], seconds: float) -> tuple[float, list[float]]:
    """Signatures per second over `seconds`, and each call's duration (s)."""
    message = b"x" * 200
    durations: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        sign(message)
        durations.append(time.perf_counter() - t0)
    return len(durations) / (time.perf_counter() - start), durations


@dataclass
class Sealing:
    mode: str
    readings: int
    ops: int
    seconds: float
    hsm_ms_per_reading_p50: float
    bytes_per_reading: float

    @property
    def ops_per_1000(self) -> float:
        return 1000 * self.ops / self.readings


def seal_backlog(path: Path, signer: Signer, readings: int, batch_max: int | None) -> Sealing:
    """Store `readings` readings, then seal them all; per-reading if batch_max is None."""
    box = Outbox(path)
    box.add([Sample("temp", {"c": 4.0 + (i % 40) / 10, "probe": "28-000000000001"},
                    _T0_MS + i * 100, "gps") for i in range(readings)])
    calls: list[float] = []  # duration of each signature (s)
    covers: list[int] = []   # readings each signature covered

    def timed(message: bytes) -> bytes:
        t0 = time.perf_counter()
        signature = signer.sign(message)
        calls.append(time.perf_counter() - t0)
        return signature

    start = time.perf_counter()
    if batch_max is None:
        while box.seal("bench", signer.kid, timed, limit=500):
            pass
        covers = [1] * len(calls)
    else:
        while (n := min(batch_max, box.unsealed_span()[0])) > 0:
            box.seal_batch("bench", signer.kid, timed, n, _T0_MS)
            covers.append(n)
    seconds = time.perf_counter() - start
    size = box.conn.execute("SELECT AVG(LENGTH(envelope)) FROM outbox").fetchone()[0]
    box.close()
    per_reading = [took / n for took, n in zip(calls, covers, strict=True) for _ in range(n)]
    return Sealing("batch" if batch_max else "per-reading", readings, len(calls), seconds,
                   statistics.median(per_reading) * 1000, float(size))


def backlog_trend(run: dict[str, Any]) -> float:
    """Least-squares slope of the backlog over the sensing time, readings per second: about
    0 when signing keeps up (a sawtooth), the shortfall when it does not."""
    samples = run["backlog_samples"]
    if len(samples) < 2:
        return 0.0
    slope, _ = statistics.linear_regression([float(t) for t, _, _ in samples],
                                            [float(a - s) for _, a, s in samples])
    return slope


def _wait_node(api: int, node: subprocess.Popen[bytes], log: Path, token: str) -> None:
    import urllib.request

    deadline = time.monotonic() + 60
    while True:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{api}/v1/node/status",
                                         headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=2) as resp:
                if json.loads(resp.read())["broker_connected"]:
                    return
        except OSError:
            pass
        if node.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise SystemExit(f"bench: the ledger node did not start\n{tail}")
        time.sleep(0.2)


def paced(tmp: Path, rig: SoftHsmRig, port: int, dev: str, signing: str,
          args: argparse.Namespace) -> dict[str, Any]:
    report = tmp / f"{dev}.json"
    log = tmp / f"{dev}.log"
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    with log.open("wb") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "edge_agent.paced", "--rig", str(rig.directory),
             "--device-id", dev, "--fleet", FLEET, "--broker-port", str(port),
             "--data", str(tmp / dev), "--signing", signing, "--rate", str(args.rate),
             "--seconds", str(args.paced_s), "--sign-delay-ms", str(args.sign_delay_ms),
             "--batch-max", str(args.batch_max), "--batch-delay-s", str(args.batch_delay_s),
             "--drain-s", "60", "--report", str(report)],
            stdout=out, stderr=subprocess.STDOUT, env=env, timeout=args.paced_s + 180,
            check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench: paced agent ({signing}) failed\n"
                         f"{log.read_text(errors='replace')[-3000:]}")
    data: dict[str, Any] = json.loads(report.read_text())
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge_agent.bench_signing",
                                 description="Device HSM signing: per-reading against batch.")
    ap.add_argument("--sign-s", type=float, default=3.0,
                    help="seconds of signing to measure each signer (3)")
    ap.add_argument("--backlog", type=int, default=1000, help="readings sealed (1000)")
    ap.add_argument("--batch-max", type=int, default=64, help="readings per batch (64)")
    ap.add_argument("--batch-delay-s", type=float, default=2.0,
                    help="batch_delay_s of the paced agent (2.0)")
    ap.add_argument("--rate", type=float, default=10.0, help="paced readings per second (10)")
    ap.add_argument("--paced-s", type=float, default=15.0,
                    help="seconds of paced sensing per mode; 0: skip (15)")
    ap.add_argument("--sign-delay-ms", type=float, default=ATECC608_SIGN_S * 1000,
                    help="least time per signature in the paced runs (115, an ATECC608)")
    args = ap.parse_args(argv)
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="tf-sign-bench-") as name:
        tmp = Path(name)
        print("bench: SoftHSM tokens...", flush=True)
        rig = SoftHsmRig(tmp / "hsm")
        rig.ensure_tokens([*DEVICES, NODE])
        os.environ.update(rig.env())
        print(f"bench: signatures per second, SoftHSM via PKCS#11 and in memory, "
              f"{args.sign_s:g} s each...", flush=True)
        with open_signer(rig, DEVICES[0]) as token:
            hsm_rate, hsm_calls = sign_rate(token.sign, args.sign_s)
            soft_rate, _ = sign_rate(SoftwareSigner.generate().sign, args.sign_s)
            print(f"bench: sealing {args.backlog} stored readings with the token, per-reading "
                  f"and in batches of {args.batch_max}...", flush=True)
            sealing = [seal_backlog(tmp / "seal-single.sqlite", token, args.backlog, None),
                       seal_backlog(tmp / "seal-batch.sqlite", token, args.backlog,
                                    args.batch_max)]
        if args.paced_s > 0:
            print(f"bench: {args.rate:g} readings/s for {args.paced_s:g} s with a "
                  f"{args.sign_delay_ms:g} ms signer, per-reading then batch, through the "
                  f"broker into a node...", flush=True)
            procs: list[subprocess.Popen[bytes]] = []
            try:
                port = free_port()
                procs.append(start_broker(tmp / "broker", port, tmp / "mosquitto.log"))
                ca_path, enroll = software_enrolment(
                    tmp / "pki", {d: rig.public_key_der(d) for d in DEVICES[1:]}, FLEET)
                api = free_port()
                log = tmp / "node.log"
                with log.open("ab") as out:
                    node = subprocess.Popen(
                        [sys.executable, "-m", "trustfleet.cli", "node", "run", "--data",
                         str(tmp / "node"), "--rig", str(rig.directory), "--token", NODE,
                         "--enroll", str(enroll), "--fleet-ca", str(ca_path), "--broker-port",
                         str(port), "--api-port", str(api)], stdout=out, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL)
                procs.append(node)
                _wait_node(api, node, log, local_token(tmp / "node", prefix="bench"))
                runs["per-reading"] = paced(tmp, rig, port, DEVICES[1], "per-reading", args)
                runs["batch"] = paced(tmp, rig, port, DEVICES[2], "batch", args)
            finally:
                for proc in reversed(procs):
                    stop_process(proc, timeout=20)
    report(hsm_rate, statistics.median(hsm_calls) * 1000, soft_rate, sealing, runs, args)
    return 0


def report(hsm_rate: float, hsm_p50_ms: float, soft_rate: float, sealing: list[Sealing],
           runs: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print()
    print(f"SoftHSM signatures/s:         {hsm_rate:,.0f} (PKCS#11 CKM_ECDSA, one thread; "
          f"median {hsm_p50_ms:.2f} ms per signature)")
    print(f"in-memory P-256 signatures/s: {soft_rate:,.0f} (same run); SoftHSM/in-memory "
          f"{hsm_rate / soft_rate:.2f}")
    for s in sealing:
        print(f"sealing {s.readings} stored, {s.mode + ':':<13} {s.ops_per_1000:,.1f} HSM ops "
              f"per 1,000 readings, median {s.hsm_ms_per_reading_p50:.3f} ms HSM time per "
              f"reading, {s.readings / s.seconds:,.0f} readings/s sealed (fsync'd outbox), "
              f"{s.bytes_per_reading:,.0f} bytes per reading on the wire")
    if runs:
        single, batch = runs["per-reading"], runs["batch"]
        print(f"{args.rate:g} readings/s, {args.sign_delay_ms:g} ms per signature "
              f"(ATECC608-like), {args.paced_s:g} s through broker and node:")
        for name, r in (("per-reading", single), ("batch", batch)):
            print(f"  {name + ':':<13} {r['ops_per_1000']:,.1f} HSM ops per 1,000 readings, "
                  f"median {r['hsm_ms_per_reading_p50']:.1f} ms HSM time per reading, "
                  f"due->signed p50 {r['seal_latency_ms_p50']:,.0f} ms "
                  f"(p95 {r['seal_latency_ms_p95']:,.0f})")
            print(f"  {'':<13} backlog (due, unsigned) when the sensor stopped "
                  f"{r['backlog_at_end']} of {r['arrived']}, at most {r['backlog_max']}; "
                  f"trend {backlog_trend(r):+.2f} readings/s; {r['receipt_seq']} committed")
        cap = 1000 / args.sign_delay_ms
        print(f"  signing capacity at {args.sign_delay_ms:g} ms: {cap:.1f} signatures/s = "
              f"{cap:.1f} readings/s per-reading, up to {cap * args.batch_max:,.0f} readings/s "
              f"in batches of {args.batch_max} (the sensor: {args.rate:g}/s)")


if __name__ == "__main__":
    sys.exit(main())
