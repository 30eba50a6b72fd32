"""GPS through a real gpsd: gpsfake feeds it the real receiver logs, GpsdCollector reads it.

Each log in tests/data/nmea is replayed by ``gpsfake`` (looping) into its private gpsd on a
free loopback port; the collector watches gpsd over TCP, as an agent with
``gps_source = "gpsd"`` does. The samples are held against gpsd's own decoding of the same
log in its regression run (``X.log.chk``, ``TPV`` lines), as tests/test_nmea_real_logs.py
does for the serial path: lat/lon within 1e-6 degrees, speed within 0.01 m/s (we keep two
decimals), course and altitude within 1e-3. Every timed fix of the ``.chk`` must be seen.

Where a live gpsd legitimately differs from its regression run, the rule is stated here and
asserted:

G1 (several reports per epoch) gpsd reports an epoch several times as its sentences arrive;
   the collector keeps the last, and that is what we compare with (as R1 there).
G2 (joining mid-log) gpsd opens its receiver only once a client watches, so the first epoch
   the collector sees may be cut short: the first sample is not compared.
G3 (the log wraps around) at the wrap gpsd still holds the previous pass's date and fix, so
   it dates positions that came before the log's first RMC (untimed in the .chk, R2 there),
   reports the first fix epoch though its mode lagged in the .chk (R3) and reports the log's
   last epoch (R4). Such a sample equals our own NMEA decoding of that epoch, or, for a
   position before the first RMC, the .chk's untimed report of it.
G4 (SiRF week era) bu303-moving.log is SiRF binary, which gpsd decodes itself (the serial
   path cannot: R6). Live, gpsd first dates its epochs 1024 weeks later than in the
   regression run, until its week resolution settles: such a sample's time minus 1024 weeks
   is a .chk fix, and it equals that fix.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.clock import AgentClock
from edge_agent.collectors.base import Sample
from edge_agent.collectors.errors import DeviceUnavailable, SerialLineError
from edge_agent.collectors.gps_gpsd import GpsdCollector
from edge_agent.collectors.nmea import GPS_WEEK_ROLLOVER_MS, NmeaAssembler
from edge_agent.config import AgentConfig
from edge_agent.sensors import build_collectors
from firmware_shims.gpsfake import GpsfakeShim, gpsfake_binary
from firmware_shims.nmea_gen import read_gpsfake_log
from trustfleet.procs import free_port

pytestmark = pytest.mark.hardware

DATA = Path(__file__).parents[1] / "tests" / "data" / "nmea"
NMEA_LOGS = ["bu353s4.log", "garmin25lp.log", "haicom-305N.log", "mt3339.log",
             "navika-100-fix.log", "neo-m8n.log", "sirfstarv-nmea.log", "ublox-8.log"]
PIVOT_2017_MS = 1_483_228_800_000


@pytest.fixture(autouse=True)
def _needs_gpsfake() -> None:
    if gpsfake_binary() is None:
        pytest.fail("gpsfake is not installed; scripts/bootstrap.sh (make test) installs it")


def _iso_ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def _chk(log: str) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
    """gpsd's last timed report with a position per epoch (G1), and its untimed positions."""
    fixes: dict[int, dict[str, Any]] = {}
    untimed: list[dict[str, Any]] = []
    for line in (DATA / f"{log}.chk").read_text().splitlines():
        if not line.startswith('{"class":"TPV"'):
            continue
        tpv = json.loads(line)
        if "lat" not in tpv:
            continue
        if "time" in tpv:
            fixes[_iso_ms(tpv["time"])] = tpv
        else:
            untimed.append(tpv)
    return fixes, untimed


def _nmea_decoding(log: str) -> dict[int, Sample]:
    assembler = NmeaAssembler(rollover_pivot_ms=PIVOT_2017_MS)
    out: list[Sample] = []
    for line in read_gpsfake_log(DATA / log):
        with contextlib.suppress(SerialLineError):
            out.extend(assembler.feed(line))
    return {s.t_ms: s for s in out + assembler.flush()}


def _read_until(collector: GpsdCollector, done: Callable[[list[Sample]], bool],
                timeout: float = 45.0) -> list[Sample]:
    samples: list[Sample] = []
    deadline = time.monotonic() + timeout
    while not done(samples):
        assert time.monotonic() < deadline, (
            f"timed out with {len(samples)} samples, stats {dict(collector.stats)}")
        with contextlib.suppress(DeviceUnavailable):
            samples.extend(collector.read_available())
        if not collector.is_connected:
            time.sleep(0.02)
    return samples


def _equals_tpv(sample: Sample, tpv: dict[str, Any]) -> None:
    assert sample.values["lat"] == pytest.approx(tpv["lat"], abs=1e-6)
    assert sample.values["lon"] == pytest.approx(tpv["lon"], abs=1e-6)
    if "speed" in tpv:
        assert sample.values["speed"] == pytest.approx(tpv["speed"], abs=0.01)
    if "track" in tpv:
        assert sample.values["course"] == pytest.approx(tpv["track"], abs=1e-3)
    if "altMSL" in tpv and sample.values["alt"] is not None:
        assert sample.values["alt"] == pytest.approx(tpv["altMSL"], abs=1e-3)


def _equals_nmea(sample: Sample, ours: Sample) -> None:
    for key in ("lat", "lon", "speed", "course", "alt"):
        mine = ours.values[key]
        if mine is None or sample.values[key] is None:
            continue
        assert sample.values[key] == pytest.approx(mine, abs=0.01 if key == "speed" else 1e-6)


def _cycle(log: str) -> float:
    """Seconds between sentences so that one pass of the log takes about two seconds."""
    lines = sum(1 for _ in read_gpsfake_log(DATA / log))
    return min(0.01, 2.0 / max(lines, 1))


@pytest.mark.parametrize("log", [*NMEA_LOGS, "bu303-moving.log"])
def test_gpsd_fed_a_real_log_gives_gpsds_fixes(log: str) -> None:
    fixes, untimed = _chk(log)
    nmea = {} if log.startswith("bu303") else _nmea_decoding(log)
    assert fixes

    def seen_every_fix(samples: list[Sample]) -> bool:
        times = {s.t_ms for s in samples[1:]}
        return fixes.keys() <= times | {t - GPS_WEEK_ROLLOVER_MS for t in times}

    with GpsfakeShim(DATA / log, cycle=_cycle(log)) as shim, \
            GpsdCollector("127.0.0.1", shim.port, read_timeout=0.05) as collector:
        samples = _read_until(collector, seen_every_fix)
        stats = dict(collector.stats)

    assert stats["class:TPV"] >= len(fixes) and stats.get("bad_lines", 0) == 0
    assert collector.assembler.version  # gpsd said which release it is
    assert all(s.kind == "gps" and s.time_source == "gps" for s in samples)
    for sample in samples[1:]:  # G2
        assert sample.values["fix"] in (1, 2)
        sats, hdop = sample.values["sats"], sample.values["hdop"]
        assert sats is None or (isinstance(sats, int) and 0 <= sats <= 64)
        assert hdop is None or (isinstance(hdop, float) and 0 <= hdop <= 100)
        if sample.t_ms in fixes:  # G1
            _equals_tpv(sample, fixes[sample.t_ms])
        elif sample.t_ms - GPS_WEEK_ROLLOVER_MS in fixes:  # G4
            assert log.startswith("bu303")
            _equals_tpv(sample, fixes[sample.t_ms - GPS_WEEK_ROLLOVER_MS])
        elif sample.t_ms in nmea:  # G3: R3 or R4 at the wrap
            _equals_nmea(sample, nmea[sample.t_ms])
        else:  # G3: a position from before the first RMC, dated at the wrap
            assert any(sample.values["lat"] == pytest.approx(u["lat"], abs=1e-6)
                       and sample.values["lon"] == pytest.approx(u["lon"], abs=1e-6)
                       for u in untimed), f"unexplained sample {sample}"
    if log == "mt3339.log":  # GGA quality 2: gpsd says status 2, DGPS, as our NMEA path
        assert {s.values["fix"] for s in samples[1:]} == {2}


def test_gpsd_with_a_receiver_that_has_no_fix_gives_no_samples() -> None:
    log = "bu303-nofix.log"
    with GpsfakeShim(DATA / log, cycle=_cycle(log)) as shim, \
            GpsdCollector("127.0.0.1", shim.port, read_timeout=0.05) as collector:
        samples = _read_until(collector, lambda _: collector.stats["class:TPV"] >= 20)
    assert samples == []
    assert collector.stats["no_fix"] >= 10 and collector.stats.get("bad_lines", 0) == 0


def test_gpsd_going_away_and_coming_back_is_reconnected() -> None:
    port = free_port()
    log = DATA / "sirfstarv-nmea.log"
    collector = GpsdCollector("127.0.0.1", port, read_timeout=0.05, backoff_max=0.2)
    with pytest.raises(DeviceUnavailable) as caught:
        collector.read_available()  # no gpsd yet
    assert caught.value.reason == "connect_failed"
    assert collector.read_available() == []  # within the backoff: no new attempt, no error
    try:
        with GpsfakeShim(log, port=port, cycle=0.005):
            first = _read_until(collector, lambda s: len(s) >= 5)
        # gpsd is gone: the collector notices, releases what it held, and retries
        _read_until(collector, lambda _: collector.stats["disconnects"] >= 1)
        failures = collector.stats["connect_failures"]
        _read_until(collector, lambda _: collector.stats["connect_failures"] > failures)
        with GpsfakeShim(log, port=port, cycle=0.005):
            again = _read_until(collector, lambda s: len(s) >= 5)
    finally:
        collector.close()
    assert collector.stats["connects"] >= 2
    assert {s.t_ms for s in first + again} <= set(_chk("sirfstarv-nmea.log")[0]) | set(
        _nmea_decoding("sirfstarv-nmea.log"))
    with pytest.raises(DeviceUnavailable, match="closed"):
        collector.read_available()


def test_agent_config_chooses_gpsd_and_reads_it(tmp_path: Path) -> None:
    log = DATA / "navika-100-fix.log"
    with GpsfakeShim(log, cycle=0.01) as shim:
        cfg = AgentConfig(gps_source="gpsd", gpsd_port=shim.port).validate()
        (collector,) = build_collectors(cfg, AgentClock())
        assert isinstance(collector, GpsdCollector)
        try:
            samples = _read_until(collector, lambda s: len(s) >= 3)
        finally:
            collector.close()
    assert all(s.kind == "gps" for s in samples)
    fixes = _chk("navika-100-fix.log")[0]
    assert {s.t_ms for s in samples[1:]} <= fixes.keys() | _nmea_decoding(log.name).keys()


@pytest.mark.skipif("TF_GPSD" not in os.environ,
                    reason="no real gpsd: set TF_GPSD=HOST:PORT (e.g. 127.0.0.1:2947) to test one")
def test_a_real_gpsd_with_a_receiver_gives_fixes() -> None:
    host, _, port = os.environ["TF_GPSD"].rpartition(":")
    with GpsdCollector(host or "127.0.0.1", int(port), read_timeout=0.2) as collector:
        samples = _read_until(collector, lambda s: len(s) >= 2,
                              timeout=float(os.environ.get("TF_GPSD_WAIT_S", "60")))
    assert all(-90 <= float(str(s.values["lat"])) <= 90 for s in samples)
