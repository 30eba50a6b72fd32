"""End to end with the real parts: Mosquitto, SoftHSM2 tokens, a ledger node, two trucks.

Each truck is a firmware shim (NMEA on a pty, a 1-wire sysfs tree) and an edge agent that
signs every reading in its own SoftHSM token and publishes it over MQTT. The node commits
blocks and sends receipts. Then `trustfleet verify` re-checks the store from disk.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
from pathlib import Path

import pytest

from hsm import verify_es256
from tests.fleet import NodeProcess, cli, spawn, start_node, write_enrollments
from trustfleet.cose import decode_sign1
from trustfleet.payload import GENESIS_PREV, decode_payload
from trustfleet.procs import stop_process, wait_for

pytestmark = pytest.mark.slow
TRUCKS = ("truck-a", "truck-b")


def start_truck(tmp: Path, name: str, index: int, rig_dir: Path, broker_port: int
                ) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    truck_dir = tmp / name
    shim = spawn(cli("shim", "truck", "--dir", str(truck_dir), "--index", str(index),
                     "--interval", "0.2"), tmp / f"{name}-shim.log")
    wait_for(lambda: (truck_dir / "gps.tty").exists(), 20, f"{name} shim", proc=shim,
             log_file=tmp / f"{name}-shim.log")
    agent = spawn(cli("agent", "run", "--device-id", name, "--fleet", "test", "--data",
                      str(truck_dir), "--gps-port", str(truck_dir / "gps.tty"), "--w1-dir",
                      str(truck_dir / "w1"), "--rig", str(rig_dir), "--broker-port",
                      str(broker_port), "-v"), tmp / f"{name}.log")
    return shim, agent


def committed(node: NodeProcess, dev: str) -> int:
    for d in node.get("/v1/devices"):
        if d["id"] == dev:
            return int(d["contiguous_seq"])
    return 0


def test_two_trucks_readings_are_committed_signed_contiguous_and_verifiable(
        tmp_path: Path, broker: object, device_rig: object) -> None:
    from hsm import SoftHsmRig

    assert isinstance(device_rig, SoftHsmRig)
    port = broker.port  # type: ignore[attr-defined]
    keys = {name: device_rig.public_key_der(name) for name in TRUCKS}
    enroll = write_enrollments(tmp_path / "enroll.json", keys)
    node = start_node(tmp_path / "node", device_rig.directory, port, enroll)
    procs = []
    try:
        for i, name in enumerate(TRUCKS, start=1):
            procs.extend(start_truck(tmp_path, name, i, device_rig.directory, port))
        wait_for(lambda: all(committed(node, n) >= 12 for n in TRUCKS), 90,
                 "12 committed readings per truck", proc=node.proc, log_file=node.log)
    finally:
        for p in reversed(procs):
            stop_process(p)
    height = node.get("/v1/chain/head")["height"]
    genesis_hash = node.get("/v1/blocks/0")["hash"]
    assert node.stop() == 0

    # Every committed reading verifies against the public key read from the truck's token,
    # and each truck's seq runs 1..n with every prev linking to its predecessor.
    db = tmp_path / "node" / "ledger.sqlite"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT e.data, r.dev, r.seq FROM readings r JOIN entries e "
                            "ON e.idx = r.idx ORDER BY r.dev, r.seq").fetchall()
    by_dev: dict[str, list[int]] = {}
    prev_hash: dict[str, bytes] = {}
    for data, dev, seq in rows:
        msg = decode_sign1(bytes(data))
        reading = decode_payload(msg.payload)
        assert verify_es256(keys[dev], msg.to_be_signed(), msg.signature)
        assert reading.prev == prev_hash.get(dev, GENESIS_PREV)
        prev_hash[dev] = hashlib.sha256(bytes(data)).digest()
        by_dev.setdefault(dev, []).append(seq)
    for name in TRUCKS:
        assert by_dev[name] == list(range(1, len(by_dev[name]) + 1))
        kinds = {decode_payload(decode_sign1(bytes(d)).payload).k for d, dv, _ in rows
                 if dv == name}
        assert kinds == {"gps", "temp"}

    # The agents logged receipts from the node.
    for name in TRUCKS:
        assert "receipt: seq" in (tmp_path / f"{name}.log").read_text()

    out = subprocess.run(cli("verify", "--data", str(tmp_path / "node")), capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"(height {height})" in out.stdout

    # A restarted node resumes the same chain: no new genesis, height continues.
    node2 = start_node(tmp_path / "node", device_rig.directory, port, enroll)
    try:
        assert node2.get("/v1/blocks/0")["hash"] == genesis_hash
        head = node2.get("/v1/chain/head")
        assert head["height"] >= height
        assert node2.get("/v1/blocks/0")["entries"][0]["kind"] == "genesis"
        assert len(node2.get("/v1/devices")) == len(TRUCKS)
    finally:
        node2.stop()
