"""`trustfleet up --scenario`: a truck plays a trip; its RFID scans and door openings reach
the ledger as signed readings, EPCs decoded to pure-identity URIs."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fleet import cli, http_json_auth, operator_token
from trustfleet.procs import free_port, wait_for

pytestmark = pytest.mark.slow

TRIP = """name: short-trip
loop_s: 600
temperature: {base_c: 5.0, excursions: [{at_s: 1, duration_s: 30, peak_c: 12.0}]}
doors: [{at_s: 3, open_s: 2}]
rfid:
  - {at_s: 2, depot: Venlo Trade Port, tags: [urn:epc:id:sscc:0614141.1234567890,
                                              urn:epc:id:grai:0614141.12345.400,
                                              E2801160600002054E3B5C8A]}
"""


def test_a_scenario_trip_puts_scans_and_door_openings_on_the_ledger(tmp_path: Path) -> None:
    trip = tmp_path / "trip.yaml"
    trip.write_text(TRIP)
    data = tmp_path / "var"
    proc = subprocess.Popen(cli("up", "--data", str(data), "--trucks", "1", "--api-port",
                                str(free_port()), "--mqtt-port", str(free_port()),
                                "--scenario", str(trip)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    readings: list[dict[str, Any]] = []
    try:
        wait_for(lambda: (data / "ports.json").exists(), 30, "ports.json", proc=proc)  # type: ignore[arg-type]
        api = f"http://127.0.0.1:{json.loads((data / 'ports.json').read_text())['api']}"
        token = operator_token(data / "node-1")

        def trip_recorded() -> bool:
            page = http_json_auth(api + "/v1/devices/truck-1/readings?limit=1000", token)
            readings[:] = page["readings"]
            kinds = [r["kind"] for r in readings]
            doors = [r["values"]["open"] for r in readings if r["kind"] == "door"]
            excursion = any(r["kind"] == "temp" and r["values"]["c"] > 8 for r in readings)
            return kinds.count("rfid") == 3 and doors[:3] == [False, True, False] and excursion

        wait_for(trip_recorded, 60, "scans and door openings on the ledger", proc=proc,  # type: ignore[arg-type]
                 log_file=data / "logs" / "truck-1.log")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    scans = [r["values"] for r in readings if r["kind"] == "rfid"]
    assert [s["epc"] for s in scans] == ["urn:epc:id:sscc:0614141.1234567890",
                                         "urn:epc:id:grai:0614141.12345.400", None]
    assert scans[2]["decoded"] is False and scans[2]["hex"] == "E2801160600002054E3B5C8A"
