"""GPS over a real pseudo-terminal: NmeaPtyShim writes, SerialGpsCollector reads via pyserial.

Same code path as on a truck: the collector opens a tty device path and never knows it is
a shim. Epochs are sped up (``speedup``) to keep the tests short.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import pytest

from edge_agent.collectors.base import Sample
from edge_agent.collectors.errors import DeviceUnavailable, SerialLineError
from edge_agent.collectors.gps_serial import SerialGpsCollector
from edge_agent.collectors.nmea import NmeaAssembler
from firmware_shims.nmea_gen import read_gpsfake_log
from firmware_shims.nmea_pty import NmeaPtyShim
from firmware_shims.route import route_for_truck

pytestmark = pytest.mark.hardware

DATA = Path(__file__).parents[1] / "tests" / "data" / "nmea"
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _collect(collector: SerialGpsCollector, count: int, timeout: float = 5.0) -> list[Sample]:
    samples: list[Sample] = []
    deadline = time.monotonic() + timeout
    while len(samples) < count and time.monotonic() < deadline:
        with contextlib.suppress(DeviceUnavailable):
            samples.extend(collector.read_available())
        if not collector.is_open:
            time.sleep(0.02)
    assert len(samples) >= count, f"only {len(samples)} samples, stats {dict(collector.stats)}"
    return samples


def _decoded_directly(log: str) -> list[Sample]:
    assembler = NmeaAssembler()
    out: list[Sample] = []
    for line in read_gpsfake_log(DATA / log):
        with contextlib.suppress(SerialLineError):
            out.extend(assembler.feed(line))
    return out + assembler.flush()


def _is_cyclic_run(got: list[Sample], expected: list[Sample]) -> bool:
    """``got`` is a contiguous run of ``expected`` repeated (the replay loops)."""
    start = expected.index(got[0])
    return all(s == expected[(start + i) % len(expected)] for i, s in enumerate(got))


@pytest.mark.parametrize("log", ["mt3339.log", "ublox-8.log"])
def test_replayed_real_log_reads_back_as_the_direct_decoding(tmp_path: Path, log: str) -> None:
    expected = _decoded_directly(log)
    link = tmp_path / "gps.tty"
    with NmeaPtyShim.replay(DATA / log, interval=1.0, speedup=100, link=link) as shim:
        assert link.is_symlink() and os.readlink(link) == shim.device_path
        with SerialGpsCollector(str(link), read_timeout=0.05) as collector:
            got = _collect(collector, len(expected) + 5)  # through the loop back to the start
    assert not link.exists()
    # the first epoch may have been cut by the moment the port opened: compare from the 2nd
    assert _is_cyclic_run(got[1:], expected)
    assert {s.t_ms for s in got} == {s.t_ms for s in expected}


def test_synthetic_route_reads_back_as_the_route(tmp_path: Path) -> None:
    route = route_for_truck(2)
    shim = NmeaPtyShim.synthetic(2, interval=1.0, speedup=50, start_ms=START_MS)
    with shim, SerialGpsCollector(shim.path, read_timeout=0.05) as collector:
        got = _collect(collector, 15)
    times = [s.t_ms for s in got]
    assert times == list(range(times[0], times[0] + 1000 * len(got), 1000))
    assert (times[0] - START_MS) % 1000 == 0
    for sample in got:
        point = route.at(sample.t_ms / 1000)
        assert sample.values["lat"] == pytest.approx(point.lat, abs=1e-6)
        assert sample.values["lon"] == pytest.approx(point.lon, abs=1e-6)
        assert sample.values["speed"] == pytest.approx(point.speed, abs=0.01)
        assert sample.values["course"] == pytest.approx(point.course, abs=0.01)
        assert sample.values["fix"] == 1 and sample.time_source == "gps"


def test_shim_keeps_running_when_the_reader_closes_and_reopens(tmp_path: Path) -> None:
    with NmeaPtyShim.synthetic(5, interval=1.0, speedup=50, start_ms=START_MS) as shim:
        with SerialGpsCollector(shim.path, read_timeout=0.05) as first:
            before = _collect(first, 3)
        epochs = shim.stats["epochs"]
        _wait_for(lambda: shim.stats["epochs"] >= epochs + 15)  # nobody reading meanwhile
        assert shim.running
        with SerialGpsCollector(shim.path, read_timeout=0.05) as second:
            after = _collect(second, 3)
    # fresh data, not what piled up while the port was closed
    assert after[0].t_ms >= before[-1].t_ms + 10_000


def test_nobody_reading_never_blocks_the_shim(tmp_path: Path) -> None:
    with NmeaPtyShim.synthetic(1, interval=1.0, speedup=2000, start_ms=START_MS) as shim:
        deadline = time.monotonic() + 5
        while shim.stats["overruns"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert shim.stats["overruns"] >= 1 and shim.running
        with SerialGpsCollector(shim.path, read_timeout=0.05) as collector:
            assert _collect(collector, 3)


def test_garbage_injected_into_the_pty_is_skipped(tmp_path: Path) -> None:
    shim = NmeaPtyShim.synthetic(0, interval=1.0, speedup=50, start_ms=START_MS)
    with shim, SerialGpsCollector(shim.path, read_timeout=0.05) as collector:
        got = _collect(collector, 2)
        shim.inject(bytes(range(256)) * 2 + b"\r\n")  # binary noise
        shim.inject(b"\xaa" * 500 + b"\r\n")  # a long run without newline
        shim.inject(b"$GPRMC,000000.000,A,9999.0,N,00000.0,E,0,0,010125,,,A*00\r\n")
        shim.inject("$GPTXT,Grüße*00\r\n".encode())
        got += _collect(collector, 8)
        stats = dict(collector.stats)
    times = [s.t_ms for s in got]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert all(-90 <= float(str(s.values["lat"])) <= 90 for s in got)
    assert stats["bad_lines"] >= 3
    assert stats["bad:bad_checksum"] >= 1 and stats["bad:non_ascii"] >= 1


def test_port_that_disappears_is_reopened_when_it_comes_back(tmp_path: Path) -> None:
    link = tmp_path / "gps.tty"
    collector = SerialGpsCollector(str(link), read_timeout=0.05, backoff_max=0.2)
    with pytest.raises(DeviceUnavailable) as caught:
        collector.read_available()  # no port yet
    assert caught.value.reason == "open_failed"
    assert collector.read_available() == []  # within the backoff: no new attempt, no error
    got: list[Sample] = []

    def reader() -> None:
        for sample in collector.samples():
            got.append(sample)

    thread = threading.Thread(target=reader)
    with NmeaPtyShim.synthetic(6, interval=1.0, speedup=50, start_ms=START_MS, link=link):
        thread.start()
        _wait_for(lambda: len(got) >= 3)
    _wait_for(lambda: collector.stats["disconnects"] >= 1)
    count = len(got)
    with NmeaPtyShim.synthetic(6, interval=1.0, speedup=50, start_ms=START_MS, link=link):
        _wait_for(lambda: len(got) >= count + 3)
    collector.close()
    thread.join(5)
    assert not thread.is_alive()
    assert collector.stats["opens"] >= 2 and collector.stats["open_failures"] >= 1


def _wait_for(condition: object, timeout: float = 5.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
