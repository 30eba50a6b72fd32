"""``shim truck`` as a real process: devices appear, the collectors read them, SIGTERM ends it.

Runs ``python -m firmware_shims shim truck ...`` (the same ``register()`` the umbrella CLI
uses) and talks to it only through the device files it creates.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.collectors.base import Sample
from edge_agent.collectors.errors import DeviceUnavailable
from edge_agent.collectors.gps_serial import SerialGpsCollector
from edge_agent.collectors.w1_temp import W1TemperatureCollector
from firmware_shims.route import route_for_truck

pytestmark = pytest.mark.hardware

ROOT = Path(__file__).parents[1]
DATA = ROOT / "tests" / "data" / "nmea"


def _start(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "firmware_shims", "shim", "truck", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def truck(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    proc = _start("--dir", str(tmp_path), "--index", "7", "--interval", "1", "--speedup", "20")
    try:
        yield proc, _ready(proc)
    finally:
        _reap(proc)


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=5)  # waits and closes the pipes


def _ready(proc: subprocess.Popen[str]) -> dict[str, str]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert " ready: " in line, f"no ready line; stderr: {proc.stderr.read() if proc.stderr else ''}"
    return dict(part.split("=", 1) for part in line.split(" ready: ", 1)[1].split())


def _gps(path: str, count: int) -> list[Sample]:
    got: list[Sample] = []
    deadline = time.monotonic() + 5
    with SerialGpsCollector(path, read_timeout=0.05) as collector:
        while len(got) < count and time.monotonic() < deadline:
            with contextlib.suppress(DeviceUnavailable):
                got.extend(collector.read_available())
            if not collector.is_open:
                time.sleep(0.02)
    assert len(got) >= count
    return got


def _stop(proc: subprocess.Popen[str], sig: int) -> int:
    proc.send_signal(sig)
    proc.communicate(timeout=5)
    return proc.returncode


def test_truck_shim_serves_gps_and_temperatures_and_exits_0_on_sigterm(
    tmp_path: Path, truck: tuple[subprocess.Popen[str], dict[str, str]]
) -> None:
    proc, ready = truck
    assert ready["gps_tty"] == str(tmp_path / "gps.tty")
    assert os.readlink(tmp_path / "gps.tty") == ready["device"]
    assert ready["w1"] == str(tmp_path / "w1")

    route = route_for_truck(7)
    for sample in _gps(ready["gps_tty"], 4):
        assert sample.values["lat"] == pytest.approx(route.at(sample.t_ms / 1000).lat, abs=1e-6)

    temps = W1TemperatureCollector(Path(ready["w1"])).read()
    assert sorted(str(s.values["probe"]) for s in temps) == ready["probes"].split(",")
    assert all(4.0 <= float(str(s.values["c"])) <= 6.0 for s in temps)

    assert _stop(proc, signal.SIGTERM) == 0
    assert not (tmp_path / "gps.tty").exists()


def test_truck_shim_replays_a_log_and_exits_0_on_sigint(tmp_path: Path) -> None:
    log = str(DATA / "bu353s4.log")
    proc = _start("--dir", str(tmp_path), "--index", "0", "--speedup", "50", "--replay", log)
    try:
        ready = _ready(proc)
        samples = _gps(ready["gps_tty"], 5)
        assert all(s.values["lat"] == pytest.approx(-37.7848, abs=1e-3) for s in samples)
        assert _stop(proc, signal.SIGINT) == 0
    finally:
        _reap(proc)


def test_bad_arguments_fail_with_usage(tmp_path: Path) -> None:
    proc = _start("--dir", str(tmp_path), "--index", "1", "--interval", "0")
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 2
    assert "--interval" in stderr


def test_missing_replay_log_exits_1_with_a_message(tmp_path: Path) -> None:
    proc = _start("--dir", str(tmp_path), "--index", "1", "--replay", str(tmp_path / "no.log"))
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert "no.log" in stderr
    assert not (tmp_path / "gps.tty").exists()
