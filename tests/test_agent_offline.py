"""An agent offline for long, on a clock it cannot trust: real broker, real ledger node.

The agent runs in this process (so its clock and collectors can be chosen), with a real
outbox, a real Mosquitto (conftest `broker`) and a real ledger node process; it signs with
an in-memory P-256 key enrolled in the node (the SoftHSM path is covered by the process
tests in test_delivery_faults.py and test_e2e_fleet.py).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import EdgeAgent, Polled
from edge_agent.clock import AgentClock
from edge_agent.collectors.base import Sample
from edge_agent.collectors.w1_temp import W1TemperatureCollector
from edge_agent.config import AgentConfig
from edge_agent.status import read_status
from firmware_shims.w1_sysfs import W1SysfsShim
from hsm import SoftwareSigner
from tests.fleet import NodeProcess
from trustfleet.procs import wait_for

pytestmark = pytest.mark.slow
DEV = "box-1"
T0 = 1_763_700_000_000


class Scripted:
    """Hands out prepared samples, `per_read` at a time (a fast sensor)."""

    def __init__(self, samples: list[Sample], per_read: int) -> None:
        self.samples, self.per_read = list(samples), per_read

    def read_available(self) -> list[Sample]:
        out, self.samples = self.samples[:self.per_read], self.samples[self.per_read:]
        return out

    def close(self) -> None:
        pass


@pytest.fixture
def agent_device() -> str:
    """The device conftest's `node_factory` enrols (under conftest's `signer`)."""
    return DEV


def ledger(node: NodeProcess) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = node.get(f"/v1/devices/{DEV}/readings?after_seq={after}&limit=1000")
        out.extend(page["readings"])
        if page["next_after_seq"] is None:
            return out
        after = page["next_after_seq"]


def config(tmp_path: Path, broker: Any, **changes: Any) -> AgentConfig:
    base = AgentConfig(device_id=DEV, fleet="test", data_dir=tmp_path / DEV,
                       broker_port=broker.port, w1_dir=tmp_path / "w1", resend_after_s=1.0,
                       resend_max_s=2.0, reconnect_min_s=0.2, reconnect_max_s=1.0)
    return replace(base, **changes).validate()


def drained(cfg: AgentConfig) -> bool:
    st = read_status(cfg.outbox_path)
    return bool(st["backlog"] == 0 and st["receipt_seq"] == st["last_seq"] > 0)


def test_a_full_outbox_is_thinned_and_the_ledger_gets_a_gapless_chain_with_every_event(
        tmp_path: Path, broker: Any, signer: SoftwareSigner, node_factory: Any,
        run_agent: Any) -> None:
    cfg = config(tmp_path, broker, outbox_max_mb=1, window=100, status_interval_s=1,
                 max_publish_per_s=2000, message_max=100)
    samples: list[Sample] = []
    for i in range(16_000):  # about 2.2 MB of readings into a 1 MB outbox
        samples.append(Sample("gps", {"lat": 51.0 + i * 1e-5, "lon": 4.0, "speed": 12.5,
                                      "course": 90.0, "fix": 1, "sats": 9, "hdop": 0.9,
                                      "alt": 3.0}, T0 + i * 1000, "gps"))
        if i % 4 == 0:
            samples.append(Sample("temp", {"c": 4.5, "probe": "28-000000000001"},
                                  T0 + i * 1000, "gps"))
        if i % 1000 == 0:
            samples += [Sample("rfid", {"epc": f"urn:epc:id:sscc:0614141.{i:010d}"},
                               T0 + i * 1000, "gps"),
                        Sample("door", {"open": i % 2000 == 0}, T0 + i * 1000, "gps"),
                        Sample("temp", {"c": 12.5, "probe": "28-000000000001"},
                               T0 + i * 1000, "gps")]
    source = Scripted(samples, per_read=400)
    run = run_agent(EdgeAgent(cfg, signer, [source], AgentClock()))
    try:
        wait_for(lambda: not source.samples and run.agent.stats.thinned > 0, 30,
                 "backlog thinned while the ledger is away")
        st = read_status(cfg.outbox_path)
        assert st["outbox_bytes"] <= cfg.outbox_max_bytes
        node = node_factory()
        wait_for(lambda: drained(cfg), 60, "thinned backlog delivered")
    finally:
        run.stop()
    readings = ledger(node)
    assert [r["seq"] for r in readings] == list(range(1, len(readings) + 1))
    assert all(not set(r["flags"]) & {"gap", "prev_mismatch"} for r in readings)
    kinds = [r["kind"] for r in readings]
    assert kinds.count("rfid") == 16 and kinds.count("door") == 16
    assert sum(1 for r in readings if r["kind"] == "temp" and r["values"]["c"] > 8) == 16
    assert kinds.count("gps") < 16_000
    statuses = [r["values"] for r in readings if r["kind"] == "status"]
    assert statuses and max(s["thinned"] for s in statuses) > 0
    assert max(s["backlog"] for s in statuses) > 100


def test_after_a_power_cut_the_rtc_reads_1970_and_readings_keep_seq_order_marked_rtc(
        tmp_path: Path, broker: Any, signer: SoftwareSigner, node_factory: Any,
        run_agent: Any) -> None:
    w1 = W1SysfsShim(tmp_path / "w1", index=1, count=1).create()
    w1.update(time.time())
    cfg = config(tmp_path, broker, status_interval_s=1)
    node = node_factory()

    # Before the cut: a GPS fix anchors the clock, temperatures carry GPS time.
    gps_time = T0 + 3_600_000
    clock = AgentClock()
    fix = Scripted([Sample("gps", {"lat": 51.9, "lon": 4.4, "speed": 0.0, "course": None,
                                   "fix": 1}, gps_time, "gps")], per_read=1)
    w1c = W1TemperatureCollector(cfg.w1_dir or Path(), clock=clock.now)
    run = run_agent(EdgeAgent(cfg, signer, [fix, Polled(w1c.read, 0.2)], clock))
    wait_for(lambda: read_status(cfg.outbox_path)["receipt_seq"] >= 5, 30, "readings before")
    node.stop()  # the ledger is away at the moment the power goes: some are unreceipted
    time.sleep(0.5)
    run.stop()
    before = read_status(cfg.outbox_path)["last_seq"]

    # After the cut: the RTC restarted at the epoch, no GPS fix yet.
    boot = time.monotonic()
    rtc = AgentClock(wall_ms=lambda: int((time.monotonic() - boot) * 1000))
    w1c = W1TemperatureCollector(cfg.w1_dir or Path(), clock=rtc.now)
    run = run_agent(EdgeAgent(cfg, signer, [Polled(w1c.read, 0.2)], rtc))
    node = node_factory()
    try:
        wait_for(lambda: drained(cfg) and read_status(cfg.outbox_path)["last_seq"] > before + 8,
                 40, "readings after the power cut delivered")
    finally:
        run.stop()

    readings = ledger(node)
    assert [r["seq"] for r in readings] == list(range(1, len(readings) + 1))
    first = [r for r in readings if r["seq"] <= before]
    after = [r for r in readings if r["seq"] > before]
    assert all(r["time_source"] == "gps" and r["device_time"] >= gps_time for r in first
               if r["kind"] == "temp")
    assert all(r["time_source"] == "rtc" and r["device_time"] < 86_400_000 for r in after)
    assert any(r["kind"] == "status" and r["values"]["rtc_ok"] is False for r in after)
    times = [r["device_time"] for r in readings]
    assert times != sorted(times), "device time went back; seq order did not"
