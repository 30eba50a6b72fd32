"""W1TemperatureCollector over a real file tree written by the 1-wire sysfs shim."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.collectors.errors import DeviceUnavailable
from edge_agent.collectors.w1_temp import W1TemperatureCollector
from firmware_shims.w1_sysfs import Excursion, W1SysfsShim, cold_chain_profile, probe_ids


def _clock() -> tuple[int, str]:
    return 1_700_000_000_123, "ntp"


def test_reads_every_probe_with_the_callers_clock(tmp_path: Path) -> None:
    shim = W1SysfsShim(tmp_path, index=3, count=2).create()
    written = shim.update(600.0)
    (tmp_path / "w1_bus_master1").mkdir()  # the kernel's master entry is not a probe
    collector = W1TemperatureCollector(tmp_path, clock=_clock)
    samples = collector.read()
    assert [s.values["probe"] for s in samples] == sorted(written)
    for sample in samples:
        assert sample.kind == "temp"
        assert (sample.t_ms, sample.time_source) == _clock()
        assert sample.values["c"] == pytest.approx(written[sample.values["probe"]], abs=1 / 32)
        assert 4.0 <= float(sample.values["c"]) <= 6.0
    assert collector.stats["samples"] == 2


def test_a_faulty_probe_is_counted_and_the_others_still_read(tmp_path: Path) -> None:
    shim = W1SysfsShim(tmp_path, index=0, count=3).create()
    shim.update(0.0)
    bad = shim.probes[1]
    shim.set_fault(bad, "power_on_reset")
    collector = W1TemperatureCollector(tmp_path, clock=_clock)
    samples = collector.read()
    assert {s.values["probe"] for s in samples} == set(shim.probes) - {bad}
    assert collector.last_errors[bad].reason == "power_on_reset"
    assert collector.stats["error:power_on_reset"] == 1
    shim.set_temperature(bad, 4.5)
    assert len(collector.read()) == 3
    assert bad not in collector.last_errors


def test_missing_bus_is_device_unavailable(tmp_path: Path) -> None:
    collector = W1TemperatureCollector(tmp_path / "nope", clock=_clock)
    with pytest.raises(DeviceUnavailable) as caught:
        collector.read()
    assert caught.value.reason == "bus_missing"


def test_unplugged_probe_disappears_and_an_empty_bus_reads_nothing(tmp_path: Path) -> None:
    shim = W1SysfsShim(tmp_path, count=1).create()
    shim.update(0.0)
    collector = W1TemperatureCollector(tmp_path, clock=_clock)
    assert len(collector.read()) == 1
    shim.unplug(shim.probes[0])
    assert collector.read() == []


def test_probe_folder_without_its_file_is_counted_as_gone(tmp_path: Path) -> None:
    (tmp_path / probe_ids(0, 1)[0]).mkdir()
    collector = W1TemperatureCollector(tmp_path, clock=_clock)
    assert collector.read() == []
    assert collector.stats["error:probe_gone"] == 1


def test_updates_replace_the_file_atomically(tmp_path: Path) -> None:
    shim = W1SysfsShim(tmp_path, count=1).create()
    for t in range(50):
        shim.update(float(t))
    folder = tmp_path / shim.probes[0]
    assert sorted(p.name for p in folder.iterdir()) == ["w1_slave"]


def test_cold_chain_profile_stays_in_band_and_excursions_leave_it() -> None:
    values = [cold_chain_profile(t) for t in range(0, 7200, 13)]
    assert min(values) >= 4.0 and max(values) <= 6.0
    exc = Excursion(start_s=1000.0, duration_s=400.0, peak_c=11.0)
    assert cold_chain_profile(1200.0, excursions=[exc]) == pytest.approx(11.0)
    assert cold_chain_profile(999.0, excursions=[exc]) == cold_chain_profile(999.0)
    assert cold_chain_profile(1050.0, excursions=[exc]) > 6.0
