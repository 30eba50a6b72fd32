"""Delivery faults with the real parts: nothing lost, nothing doubled.

One truck (firmware shim: NMEA on a pty and a 1-wire tree) and its edge agent process sign
every reading in a SoftHSM token and publish to a real Mosquitto; a real ledger node
commits them and sends receipts. Each test breaks one part in the middle of the work:
the broker stopped, the ledger node stopped, the agent killed with SIGKILL (several times),
the broker killed with SIGKILL. Each ends the same way (`settle_and_check`): the sensors go
quiet, the agent drains its outbox, and then

- the agent's outbox is empty and its last seq is the ledger's highest contiguous seq;
- the ledger holds seq 1..N of the truck exactly once (node API), every prev linking to
  its predecessor (no `prev_mismatch` flag);
- `trustfleet verify` re-checks the whole store from disk.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge_agent.status import read_status
from tests.fleet import NodeProcess, cli, spawn, start_node, truck_agent_toml, write_enrollments
from trustfleet.broker import start_broker
from trustfleet.procs import free_port, stop_process, wait_for

pytestmark = pytest.mark.slow
DEV = "truck-a"


@dataclass
class Truck:
    tmp: Path
    rig_dir: Path
    port: int
    node: NodeProcess
    broker: subprocess.Popen[bytes]
    shim: subprocess.Popen[bytes] | None = None
    agent: subprocess.Popen[bytes] | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.tmp / DEV

    def start_broker(self) -> None:
        self.broker = start_broker(self.tmp / "broker", self.port,
                                   self.tmp / "broker" / "mosquitto.log")

    def start_agent(self) -> None:
        config = self.tmp / "agent.toml"
        config.write_text(truck_agent_toml(DEV, self.data, self.port, max_publish_per_s=100,
                                            window=200))
        self.agent = spawn(cli("agent", "run", "--config", str(config), "--rig",
                               str(self.rig_dir), "-v"), self.tmp / "agent.log")
        self.procs.append(self.agent)

    def status(self) -> dict[str, Any]:
        return read_status(self.data / "outbox.sqlite")

    def committed(self) -> int:
        devices = {d["id"]: d for d in self.node.get("/v1/devices")}
        return int(devices[DEV]["contiguous_seq"]) if DEV in devices else 0

    def wait(self, check: Any, what: str, timeout: float = 25) -> None:
        wait_for(check, timeout, what, interval=0.2, proc=self.agent,
                 log_file=self.tmp / "agent.log")


@pytest.fixture
def truck(tmp_path: Path, device_rig: Any) -> Iterator[Truck]:
    port = free_port()
    broker = start_broker(tmp_path / "broker", port, tmp_path / "broker" / "mosquitto.log")
    enroll = write_enrollments(tmp_path / "enroll.json", {DEV: device_rig.public_key_der(DEV)})
    node = start_node(tmp_path / "node", device_rig.directory, port, enroll)
    t = Truck(tmp_path, device_rig.directory, port, node, broker)
    t.shim = spawn(cli("shim", "truck", "--dir", str(t.data), "--index", "1", "--interval",
                       "0.2"), tmp_path / "shim.log")
    t.procs.append(t.shim)
    wait_for(lambda: (t.data / "gps.tty").exists(), 20, "truck shim", proc=t.shim,
             log_file=tmp_path / "shim.log")
    t.start_agent()
    t.wait(lambda: t.committed() >= 10, "first readings committed")
    try:
        yield t
    finally:
        for p in reversed(t.procs):
            stop_process(p)
        t.node.stop()
        stop_process(t.broker)


def ledger_readings(node: NodeProcess, dev: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = node.get(f"/v1/devices/{dev}/readings?after_seq={after}&limit=1000")
        out.extend(page["readings"])
        if page["next_after_seq"] is None:
            return out
        after = page["next_after_seq"]


def settle_and_check(t: Truck, *, at_least: int) -> list[dict[str, Any]]:
    """Quiet the sensors, let the agent drain, then check the ledger against the outbox."""
    assert t.shim is not None
    stop_process(t.shim)
    shutil.rmtree(t.data / "w1", ignore_errors=True)  # the 1-wire bus goes away too

    def drained() -> bool:
        st = t.status()
        return st["backlog"] == 0 and st["receipt_seq"] == st["last_seq"] >= at_least

    t.wait(drained, "agent outbox drained and receipted", timeout=30)
    st = t.status()
    readings = ledger_readings(t.node, DEV)
    seqs = [r["seq"] for r in readings]
    assert seqs == list(range(1, st["last_seq"] + 1)), "every seq exactly once, in order"
    assert all("prev_mismatch" not in r["flags"] for r in readings)
    device = {d["id"]: d for d in t.node.get("/v1/devices")}[DEV]
    assert device["contiguous_seq"] == device["last_seq"] == st["last_seq"]
    assert device["readings"] == st["last_seq"]
    assert t.agent is not None and stop_process(t.agent) == 0
    assert t.node.stop() == 0
    out = subprocess.run(cli("verify", "--data", str(t.node.data), "-q"), capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return readings


def test_readings_taken_while_the_broker_is_down_arrive_once_after_it_restarts(
        truck: Truck) -> None:
    before = truck.status()["last_seq"]
    stop_process(truck.broker)
    # the agent keeps collecting into its outbox while nobody can receive
    truck.wait(lambda: truck.status()["backlog"] >= 40, "a backlog while the broker is down")
    committed_during_outage = truck.committed()
    truck.start_broker()
    truck.wait(lambda: truck.committed() > committed_during_outage + 40,
               "backlog committed after the broker is back")
    readings = settle_and_check(truck, at_least=before + 40)
    assert {r["kind"] for r in readings} >= {"gps", "temp", "status"}
    assert "reconnecting to mqtt" in (truck.tmp / "agent.log").read_text()


def test_readings_taken_while_the_ledger_node_is_down_are_committed_once_it_is_back(
        truck: Truck) -> None:
    assert truck.node.stop() == 0
    truck.wait(lambda: truck.status()["backlog"] >= 60, "a backlog while the node is down")
    assert truck.status()["in_flight"] <= 200, "the send window bounds what is signed"
    truck.node = start_node(truck.node.data, truck.rig_dir, truck.port,
                            truck.tmp / "enroll.json")
    settle_and_check(truck, at_least=60)


def test_agent_killed_with_sigkill_mid_work_restarts_from_its_outbox(truck: Truck) -> None:
    for round_ in range(3):
        assert truck.agent is not None
        progress = truck.committed()
        truck.agent.send_signal(signal.SIGKILL)
        assert truck.agent.wait(10) == -signal.SIGKILL
        truck.start_agent()
        truck.wait(lambda p=progress: truck.committed() >= p + 10,
                   f"progress after kill {round_ + 1}")
    settle_and_check(truck, at_least=30)
    assert "received SIGTERM" in (truck.tmp / "agent.log").read_text()


def test_broker_killed_with_sigkill_loses_nothing_once_restarted(truck: Truck) -> None:
    progress = truck.committed()
    truck.broker.send_signal(signal.SIGKILL)
    truck.broker.wait(10)
    truck.wait(lambda: truck.status()["backlog"] >= 30, "a backlog while the broker is dead")
    truck.start_broker()
    truck.wait(lambda: truck.committed() >= progress + 40, "progress after the broker restart")
    settle_and_check(truck, at_least=progress + 40)


def test_ledger_node_killed_with_sigkill_loses_no_committed_block_and_shows_no_half_block(
        truck: Truck) -> None:
    """kill -9 of the node at arbitrary moments under load: after each restart the store's
    tip checks out (the node starts), every block receipted before the kill is still there
    with the same hash, and the agent's resends fill the rest."""
    for round_ in range(3):
        progress = truck.committed()
        head = truck.node.get("/v1/chain/head")
        truck.node.proc.send_signal(signal.SIGKILL)
        assert truck.node.proc.wait(10) == -signal.SIGKILL
        truck.node = start_node(truck.node.data, truck.rig_dir, truck.port,
                                truck.tmp / "enroll.json")
        again = truck.node.get(f"/v1/blocks/{head['height']}")
        assert again["hash"] == head["hash"], f"block {head['height']} changed after kill -9"
        truck.wait(lambda p=progress: truck.committed() >= p + 10,
                   f"progress after node kill {round_ + 1}")
    settle_and_check(truck, at_least=30)
