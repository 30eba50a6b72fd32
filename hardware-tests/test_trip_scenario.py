"""Trip scenarios: the shipped YAML loads, its script plays on the door line and RFID pty,
and `shim truck --scenario` brings both devices up for an agent."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.collectors.door_gpio import DoorCollector
from edge_agent.collectors.errors import DeviceUnavailable
from edge_agent.collectors.rfid_serial import SerialRfidCollector
from firmware_shims.gpio_sysfs import GpioLineShim
from firmware_shims.rfid_reader import RfidReaderShim
from firmware_shims.scenario import ScenarioDriver, load_scenario
from trustfleet.procs import stop_process, wait_for

pytestmark = pytest.mark.hardware
TRIP = Path(__file__).parents[1] / "firmware_shims" / "scenarios" / "cold-chain-trip.yaml"


def test_shipped_trip_scripts_an_excursion_doors_scans_and_a_shock() -> None:
    trip = load_scenario(TRIP)
    assert trip.loop_s == 300
    assert trip.temperature(30) < 8.0 < trip.temperature(150)  # the reefer failure
    assert [trip.door_open(t) for t in (19, 25, 36, 155, 320)] == [False, True, False, True,
                                                                  True]
    assert [s.depot for s in trip.due_scans(0, 300)] == ["Rotterdam Waalhaven",
                                                         "Duisburg logport"]
    assert [s.depot for s in trip.due_scans(300, 320)] == ["Rotterdam Waalhaven"]  # loop
    assert trip.due_scans(11, 249) == [] and len(trip.due_shocks(100, 130)) == 1


@pytest.mark.parametrize(("text", "error"), [
    ("name: x\nloop_s: 0\n", "loop_s must be > 0"),
    ("doors: [{at_s: ten, open_s: 5}]\n", "doors: at_s must be a number"),
    ("rfid: [{at_s: 1, tags: urn}]\n", r"rfid\[0\].tags must be a list"),
    ("weather: rain\n", "unknown key"),
])
def test_a_bad_scenario_is_refused_naming_the_key(tmp_path: Path, text: str,
                                                  error: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=error):
        load_scenario(path)


def test_driver_plays_door_and_scans_through_the_real_interfaces(tmp_path: Path) -> None:
    trip = load_scenario(TRIP)
    line = GpioLineShim(tmp_path / "gpio", 17).create()
    door = DoorCollector(line.value_path, debounce_reads=1)
    with RfidReaderShim(link=tmp_path / "rfid.tty") as reader:
        rfid = SerialRfidCollector(str(tmp_path / "rfid.tty"))
        driver = ScenarioDriver(trip, line, reader)
        states, scans = [], []
        for t_s in (0, 12, 25, 40):
            driver.step(t_s)
            states += [s.values["open"] for s in door.read_available()]
        deadline = time.monotonic() + 5
        while len(scans) < 3 and time.monotonic() < deadline:
            with contextlib.suppress(DeviceUnavailable):
                scans += rfid.read_available()
        rfid.close()
    assert states == [False, True, False]
    assert [s.values["scheme"] for s in scans] == ["sscc", "sscc", "grai"]


def test_shim_truck_with_a_scenario_brings_up_the_rfid_pty_and_door_line(
        tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "trustfleet.cli", "shim", "truck", "--dir",
                             str(tmp_path), "--index", "2", "--interval", "0.2", "--scenario",
                             str(TRIP)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (tmp_path / "rfid.tty").exists()
                 and (tmp_path / "gpio" / "gpio17" / "value").exists(), 20, "scenario devices",
                 proc=proc)  # type: ignore[arg-type]
        assert (tmp_path / "gps.tty").exists()
        assert (tmp_path / "gpio" / "gpio17" / "value").read_text().strip() in ("0", "1")
    finally:
        assert stop_process(proc) == 0  # type: ignore[arg-type]
