"""Batch signing through restarts and delivery faults, with the real parts.

A truck (firmware shim: NMEA on a pty, a 1-wire tree) and `trustfleet agent run` signing in
its SoftHSM token publish to a real Mosquitto and a real ledger node.

1. Switching modes: the agent runs per-reading, is killed with SIGKILL, comes back with
   `signing = "batch"`, is killed again mid-work, and comes back per-reading. Each restart
   finds sealed-but-unreceipted items of the other mode in its outbox (resent as they are)
   and unsealed readings (sealed in the new mode).
2. Faults in batch mode: the ledger node stopped for a while (the send window bounds what is
   signed; items are resent after the timeout), then the broker killed with SIGKILL.

Each ends the same way: the sensors go quiet, the agent drains, and the ledger holds seq
1..N exactly once with no prev_mismatch, linked by the rule of trustfleet.batch, and
`trustfleet verify` re-checks the store from disk.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import pytest

from edge_agent.status import read_status
from tests.fleet import NodeProcess, cli, spawn, start_node, truck_agent_toml, write_enrollments
from trustfleet.batch import open_reading
from trustfleet.broker import start_broker
from trustfleet.payload import GENESIS_PREV
from trustfleet.procs import free_port, stop_process, wait_for

pytestmark = pytest.mark.slow
DEV = "truck-a"
WINDOW = 200


@dataclass
class Truck:
    tmp: Path
    rig_dir: Path
    port: int
    node: NodeProcess
    broker: subprocess.Popen[bytes]
    shim: subprocess.Popen[bytes]
    agent: subprocess.Popen[bytes] | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.tmp / DEV

    @property
    def log(self) -> Path:
        return self.tmp / "agent.log"

    def start_agent(self, signing: str) -> None:
        config = self.tmp / f"agent-{signing}.toml"
        config.write_text(truck_agent_toml(DEV, self.data, self.port, window=WINDOW,
                                           signing=signing, batch_max=16, batch_delay_s=0.5))
        self.agent = spawn(cli("agent", "run", "--config", str(config), "--rig",
                               str(self.rig_dir), "-v"), self.log)
        self.procs.append(self.agent)

    def kill_agent(self) -> None:
        assert self.agent is not None
        self.agent.send_signal(signal.SIGKILL)
        assert self.agent.wait(10) == -signal.SIGKILL

    def status(self) -> dict[str, Any]:
        return read_status(self.data / "outbox.sqlite")

    def committed(self) -> int:
        devices = {d["id"]: d for d in self.node.get("/v1/devices")}
        return int(devices[DEV]["contiguous_seq"]) if DEV in devices else 0

    def wait(self, check: Any, what: str, timeout: float = 40) -> None:
        wait_for(check, timeout, what, interval=0.2, proc=self.agent, log_file=self.log)

    def progress(self, n: int, what: str) -> None:
        before = self.committed()
        self.wait(lambda: self.committed() >= before + n, what)


@pytest.fixture
def truck(tmp_path: Path, device_rig: Any) -> Iterator[Truck]:
    port = free_port()
    broker = start_broker(tmp_path / "broker", port, tmp_path / "broker" / "mosquitto.log")
    enroll = write_enrollments(tmp_path / "enroll.json", {DEV: device_rig.public_key_der(DEV)})
    node = start_node(tmp_path / "node", device_rig.directory, port, enroll)
    shim = spawn(cli("shim", "truck", "--dir", str(tmp_path / DEV), "--index", "1",
                     "--interval", "0.2"), tmp_path / "shim.log")
    t = Truck(tmp_path, device_rig.directory, port, node, broker, shim, procs=[shim])
    try:
        wait_for(lambda: (t.data / "gps.tty").exists(), 20, "truck shim", proc=shim,
                 log_file=tmp_path / "shim.log")
        yield t
    finally:
        for p in reversed(t.procs):
            stop_process(p)
        t.node.stop()
        stop_process(t.broker)


def settle_and_check(t: Truck) -> str:
    """Quiet the sensors, drain, check the ledger; returns the runs of envelope kinds in seq
    order ('s' single envelopes, 'b' batched readings), e.g. "sbs"."""
    stop_process(t.shim)
    shutil.rmtree(t.data / "w1", ignore_errors=True)

    def drained() -> bool:
        st = t.status()
        return bool(st["backlog"] == 0 and st["receipt_seq"] == st["last_seq"] > 0)

    t.wait(drained, "agent outbox drained and receipted", timeout=40)
    last = int(t.status()["last_seq"])
    readings: list[dict[str, Any]] = []
    after = 0
    while True:
        page = t.node.get(f"/v1/devices/{DEV}/readings?after_seq={after}&limit=1000")
        readings.extend(page["readings"])
        if page["next_after_seq"] is None:
            break
        after = page["next_after_seq"]
    assert [r["seq"] for r in readings] == list(range(1, last + 1)), "each seq exactly once"
    assert all("prev_mismatch" not in r["flags"] for r in readings)
    assert t.agent is not None and stop_process(t.agent) == 0
    assert t.node.stop() == 0

    with sqlite3.connect(t.tmp / "node" / "ledger.sqlite") as conn:
        rows = conn.execute("SELECT e.data FROM readings r JOIN entries e ON e.idx = r.idx "
                            "WHERE r.dev = ? ORDER BY r.seq", (DEV,)).fetchall()
    assert len(rows) == last
    prev, modes = GENESIS_PREV, []
    for (data,) in rows:
        opened = open_reading(bytes(data))
        assert opened.reading.prev == prev
        prev = opened.chain_hash
        if opened.batched:  # chained by its payload's hash, not its item bytes
            assert prev == hashlib.sha256(cbor2.loads(bytes(data)).value[3]).digest()
        modes.append("b" if opened.batched else "s")
    out = subprocess.run(cli("verify", "--data", str(t.tmp / "node"), "-q"),
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return "".join(m for i, m in enumerate(modes) if i == 0 or modes[i - 1] != m)


def test_per_reading_then_batch_then_per_reading_through_sigkills_keeps_one_chain(
        truck: Truck) -> None:
    truck.start_agent("per-reading")
    truck.progress(25, "per-reading progress")
    truck.kill_agent()
    truck.start_agent("batch")
    truck.progress(25, "batch progress after a SIGKILL and a mode switch")
    truck.kill_agent()
    truck.start_agent("per-reading")
    truck.progress(25, "per-reading progress after a SIGKILL and a mode switch")
    runs = settle_and_check(truck)
    assert runs == "sbs", f"expected single, then batched, then single envelopes: {runs}"
    text = truck.log.read_text()
    assert "batch signing, up to 16 readings" in text and "per-reading signing" in text


def test_batch_mode_survives_a_node_outage_and_a_broker_sigkill(truck: Truck) -> None:
    truck.start_agent("batch")
    truck.progress(20, "first batched readings committed")
    assert truck.node.stop() == 0
    truck.wait(lambda: truck.status()["backlog"] >= 60, "a backlog while the node is down")
    assert truck.status()["in_flight"] <= WINDOW, "the send window bounds what is signed"
    truck.node = start_node(truck.node.data, truck.rig_dir, truck.port,
                            truck.tmp / "enroll.json")
    truck.progress(60, "backlog committed after the node is back")
    truck.broker.send_signal(signal.SIGKILL)
    truck.broker.wait(10)
    truck.wait(lambda: truck.status()["backlog"] >= 30, "a backlog while the broker is dead")
    truck.broker = start_broker(truck.tmp / "broker", truck.port,
                                truck.tmp / "broker" / "mosquitto.log")
    truck.progress(30, "progress after the broker restart")
    assert settle_and_check(truck) == "b"
