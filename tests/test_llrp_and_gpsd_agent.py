"""An agent process with GPS from gpsd and a fixed LLRP reader, into a real ledger.

Real parts only: gpsd fed by gpsfake (a real receiver log), the LLRP reader shim on a
loopback port, `trustfleet agent run` signing in a SoftHSM token, Mosquitto and a ledger
node. The scans made at the reader and the fixes gpsd reports end up on the ledger as
`rfid` and `gps` readings, decoded and with seq contiguous.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from firmware_shims.gpsfake import GpsfakeShim, gpsfake_binary
from firmware_shims.llrp_reader import LlrpReaderShim
from tests.fleet import cli, spawn, start_node, write_enrollments
from trustfleet.broker import start_broker
from trustfleet.procs import free_port, stop_process, wait_for

pytestmark = pytest.mark.slow
DEV = "truck-b"
DATA = Path(__file__).parent / "data" / "nmea"
PALLET = "urn:epc:id:sscc:0614141.1234567890"
CRATE = "urn:epc:id:grai:0614141.12345.400"


def test_agent_with_gpsd_and_an_llrp_reader_delivers_both(tmp_path: Path,
                                                          device_rig: Any) -> None:
    if gpsfake_binary() is None:
        pytest.fail("gpsfake is not installed; scripts/bootstrap.sh (make test) installs it")
    port = free_port()
    broker = start_broker(tmp_path / "broker", port, tmp_path / "broker" / "mosquitto.log")
    enroll = write_enrollments(tmp_path / "enroll.json", {DEV: device_rig.public_key_der(DEV)})
    node = start_node(tmp_path / "node", device_rig.directory, port, enroll)
    agent = None
    try:
        with GpsfakeShim(DATA / "haicom-305N.log", cycle=0.01) as gpsd, \
                LlrpReaderShim(antennas=2) as reader:
            config = tmp_path / "agent.toml"
            config.write_text(
                f'[agent]\ndevice_id = "{DEV}"\nfleet = "test"\n'
                f'data_dir = "{tmp_path / DEV}"\nbroker_port = {port}\n'
                f'gps_source = "gpsd"\ngpsd_port = {gpsd.port}\n'
                f'llrp_host = "127.0.0.1"\nllrp_port = {reader.port}\n'
                f'llrp_antennas = "1,2"\nllrp_keepalive_s = 1.0\n'
                f"gps_interval_s = 0.05\nstatus_interval_s = 0\n")
            log = tmp_path / "agent.log"
            agent = spawn(cli("agent", "run", "--config", str(config), "--rig",
                              str(device_rig.directory), "-v"), log)
            wait_for(lambda: reader.inventorying, 30, "agent inventorying", proc=agent,
                     log_file=log)
            reader.scan(PALLET, antenna=1, rssi=-52)
            reader.scan(CRATE, antenna=2, rssi=-66)

            def delivered() -> bool:
                kinds = [r["kind"] for r in readings(node.get)]
                return kinds.count("rfid") == 2 and kinds.count("gps") >= 10

            wait_for(delivered, 60, "rfid and gps readings on the ledger", proc=agent,
                     log_file=log)
        assert stop_process(agent) == 0
        got = readings(node.get)
    finally:
        if agent is not None:
            stop_process(agent)
        node.stop()
        stop_process(broker)
    assert [r["seq"] for r in got] == list(range(1, len(got) + 1))
    rfid = [r["values"] for r in got if r["kind"] == "rfid"]
    assert [(v["epc"], v["rssi"], v["antenna"]) for v in rfid] == [(PALLET, -52.0, 1),
                                                                   (CRATE, -66.0, 2)]
    gps = [r for r in got if r["kind"] == "gps"]
    assert all(r["time_source"] == "gps" and -28 < r["values"]["lat"] < -27 for r in gps)
    assert "connected, watching" in log.read_text()


def readings(get: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = get(f"/v1/devices/{DEV}/readings?after_seq={after}&limit=1000")
        out.extend(page["readings"])
        if page["next_after_seq"] is None:
            return out
        after = page["next_after_seq"]
