"""Batch signing keeps up with a slow secure element; per-reading signing does not.

Real parts: Mosquitto, a ledger node process (block key in SoftHSM), and an edge agent
process (`python -m edge_agent.paced`) that signs in the truck's REAL SoftHSM token through
PKCS#11, wrapped so that every signature takes at least 115 ms (an ATECC608's ECDSA P-256
sign; edge_agent.paced.SlowSigner). The token is used in that child process because a
process works with one SoftHSM config and this test process never loads the module. Its
sensor produces 10 readings per second for 20 s on schedule, whether the agent keeps up or
not; then it goes quiet and the agent drains.

Batch mode: everything committed exactly once, contiguous, no prev_mismatch, every stored
item a batched reading that verifies alone against the token's key; and the backlog is
bounded by counts (`backlog_bounds`): when the sensor stops, the unsigned readings are at
most what arrived in the last batch_delay_s + 2 s, and the backlog's peak does not grow
from the second 5 s of sensing to the last. Per-reading mode with the same signer is
correct too, but falls behind (8.7 signatures/s for 10 readings/s): its backlog is printed,
and whether those bounds would hold, not asserted.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hsm import verify_es256
from tests.fleet import NodeProcess, cli, start_node, write_enrollments
from trustfleet.batch import open_reading
from trustfleet.broker import start_broker
from trustfleet.procs import free_port, stop_process

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RATE, SECONDS, DELAY_MS, BATCH_DELAY_S = 10.0, 20.0, 115.0, 2.0


@dataclass
class Rig:
    tmp: Path
    rig_dir: Path
    port: int
    node: NodeProcess
    keys: dict[str, bytes]


@pytest.fixture
def fleet(tmp_path: Path, device_rig: Any) -> Iterator[Rig]:
    port = free_port()
    broker = start_broker(tmp_path / "broker", port, tmp_path / "broker" / "mosquitto.log")
    keys = {d: device_rig.public_key_der(d) for d in ("truck-a", "truck-b")}
    enroll = write_enrollments(tmp_path / "enroll.json", keys)
    node = start_node(tmp_path / "node", device_rig.directory, port, enroll)
    try:
        yield Rig(tmp_path, device_rig.directory, port, node, keys)
    finally:
        node.stop()
        stop_process(broker)


def run_paced(rig: Rig, dev: str, signing: str) -> dict[str, Any]:
    report = rig.tmp / f"{dev}-{signing}.json"
    log = rig.tmp / f"{dev}-{signing}.log"
    with log.open("wb") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "edge_agent.paced", "--rig", str(rig.rig_dir), "--token", dev,
             "--device-id", dev, "--fleet", "test", "--broker-port", str(rig.port),
             "--data", str(rig.tmp / dev), "--signing", signing, "--rate", str(RATE),
             "--seconds", str(SECONDS), "--sign-delay-ms", str(DELAY_MS), "--batch-delay-s",
             str(BATCH_DELAY_S), "--drain-s", "60", "--report", str(report), "-v"],
            stdout=out, stderr=subprocess.STDOUT, timeout=180, check=False, cwd=ROOT)
    assert proc.returncode == 0, log.read_text()[-3000:]
    data: dict[str, Any] = json.loads(report.read_text())
    return data


def ledger_seqs(node: NodeProcess, dev: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = node.get(f"/v1/devices/{dev}/readings?after_seq={after}&limit=1000")
        out.extend(page["readings"])
        if page["next_after_seq"] is None:
            return out
        after = page["next_after_seq"]


def check_ledger(rig: Rig, dev: str, total: int) -> None:
    readings = ledger_seqs(rig.node, dev)
    assert [r["seq"] for r in readings] == list(range(1, total + 1)), "each seq exactly once"
    assert all("prev_mismatch" not in r["flags"] for r in readings)
    device = {d["id"]: d for d in rig.node.get("/v1/devices")}[dev]
    assert device["contiguous_seq"] == device["last_seq"] == device["readings"] == total
    assert device["prev_mismatches"] == 0 and device["gaps"] == 0


def growth(report: dict[str, Any]) -> str:
    """The largest backlog (arrived - signed) in each 5 s of sensing, for the test log."""
    worst: dict[int, int] = {}
    for t, arrived, signed in report["backlog_samples"]:
        step = min(int(t // 5), int(SECONDS // 5) - 1)
        worst[step] = max(worst.get(step, 0), arrived - signed)
    return " ".join(f"{5 * k}-{5 * k + 5}s:{v}" for k, v in sorted(worst.items()))


def backlog_bounds(report: dict[str, Any]) -> tuple[bool, str]:
    """Signing keeps up if (1) what is unsigned when the sensor stops arrived within the
    last batch_delay_s + 2 s, and (2) the backlog does not grow: its peak in the last 5 s
    is at most its peak in 5..10 s plus one second of readings. Counts, not timings."""
    windows = [int(w.split(":")[1]) for w in growth(report).split()]
    bound = int(RATE * (BATCH_DELAY_S + 2.0))
    ok = report["backlog_at_end"] <= bound and windows[-1] <= windows[1] + int(RATE)
    return ok, (f"backlog at the end {report['backlog_at_end']} (bound {bound}); peaks per "
                f"5 s {windows} (last at most {windows[1]} + {int(RATE)})")


def test_batch_signing_with_a_115_ms_hsm_keeps_up_with_10_readings_per_second(
        fleet: Rig) -> None:
    report = run_paced(fleet, "truck-a", "batch")
    total = int(RATE * SECONDS)
    print(f"\nbatch: backlog over time {growth(report)}; at the end {report['backlog_at_end']}, "
          f"max {report['backlog_max']}; {report['sign_calls']} HSM signatures "
          f"({report['ops_per_1000']:.0f} per 1,000 readings), due->signed p50 "
          f"{report['seal_latency_ms_p50']:.0f} ms")
    assert report["arrived"] == total
    assert report["drained"], report
    assert report["last_seq"] == report["receipt_seq"] == total
    check_ledger(fleet, "truck-a", total)

    # bounded, counted in readings: see `backlog_bounds`
    ok, why = backlog_bounds(report)
    assert ok, why
    # one signature covered many readings
    assert report["sign_calls"] < total / 5

    # what the node stored: batched readings, each verifying alone against the token's key
    assert fleet.node.stop() == 0
    with sqlite3.connect(fleet.tmp / "node" / "ledger.sqlite") as conn:
        rows = conn.execute("SELECT e.data FROM readings r JOIN entries e ON e.idx = r.idx "
                            "WHERE r.dev = 'truck-a' ORDER BY r.seq").fetchall()
    assert len(rows) == total
    signatures = set()
    for (data,) in rows:
        opened = open_reading(bytes(data))
        assert opened.batched
        assert verify_es256(fleet.keys["truck-a"], opened.to_be_signed, opened.signature)
        signatures.add(opened.signature)
    assert len(signatures) == report["sign_calls"]
    out = subprocess.run(cli("verify", "--data", str(fleet.tmp / "node"), "-q"),
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_per_reading_signing_with_the_same_hsm_is_correct_but_falls_behind(
        fleet: Rig) -> None:
    report = run_paced(fleet, "truck-b", "per-reading")
    total = int(RATE * SECONDS)
    # reported, not asserted: how far behind one signature per reading falls
    print(f"\nper-reading: backlog over time {growth(report)}; at the end "
          f"{report['backlog_at_end']}, max {report['backlog_max']}; "
          f"{report['sign_calls']} HSM signatures, due->signed p50 "
          f"{report['seal_latency_ms_p50']:.0f} ms, p95 {report['seal_latency_ms_p95']:.0f} ms")
    print(f"per-reading: would the batch test's bounds hold? {backlog_bounds(report)}")
    assert report["sign_calls"] == total
    assert report["drained"], report
    check_ledger(fleet, "truck-b", total)
