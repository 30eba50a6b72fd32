"""NmeaAssembler against gpsd on real receiver logs (tests/data/nmea, gpsd project, BSD-2).

Each ``X.log`` is what a receiver sent (gpsfake format); ``X.log.chk`` is what gpsd decoded
from it, JSON lines, where ``TPV`` objects are position reports. We feed the log through
our assembler and hold the result against gpsd's fixes: same fix times, lat/lon within
1e-6 degrees, speed within 0.01 m/s, course within 0.001 degrees.

Where we legitimately differ from gpsd, the rule is stated here and asserted:

R1 (several reports per epoch) gpsd reports an epoch several times as its sentences
   arrive (after GGA, after RMC, ...); its last report of an epoch is the complete one, and
   that is what we compare with.
R2 (no date, no sample) gpsd reports positions from GGA/GLL before the first RMC, with no
   time because no date is known yet. We cannot timestamp those, so we emit nothing; such
   reports only ever come before gpsd's first time-stamped one.
R3 (fix acquisition) On the first epoch with a fix after epochs without one, gpsd still
   reports mode 1 and no position (its mode lags by an epoch); we emit that epoch because
   its RMC says A and its GGA quality is >= 1. Asserted: the previous RMC in the log said V,
   and our sample equals the RMC sentence decoded independently here.
R4 (log cut mid-epoch) gpsd reports an epoch at its end-of-cycle sentence; when a log
   ends before that sentence, gpsd never reports the last epoch. We emit it (on its GGA or
   at flush). Asserted: it is the last RMC of the log, and equals the RMC decoded here.
R5 (GPS week rollover) gpsd moved every NMEA date before 2017-01-01 forward by 1024 weeks
   in these runs (e.g. 2005-03-15 became 2024-10-29). By default we report the receiver's
   own date; with ``rollover_pivot_ms`` set to 2017-01-01 our times equal gpsd's exactly.
R6 (binary protocol) bu303-*.log are SiRF binary, not NMEA: gpsd decodes SiRF itself. We
   speak NMEA only, so every line is rejected and no sample comes out. gpsd re-emits what it
   decoded as NMEA in the .chk; fed that, our assembler reproduces gpsd's fixes.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from edge_agent.collectors.base import Sample
from edge_agent.collectors.errors import SerialLineError
from edge_agent.collectors.nmea import GPS_WEEK_ROLLOVER_MS, NmeaAssembler
from firmware_shims.nmea_gen import read_gpsfake_log

DATA = Path(__file__).parent / "data" / "nmea"
LOGS = sorted(path.name for path in DATA.glob("*.log"))
BINARY_LOGS = {"bu303-moving.log", "bu303-nofix.log"}
PIVOT_2017_MS = 1_483_228_800_000  # 2017-01-01T00:00:00Z

# Fixes we emit per log: a regression guard on top of the per-fix comparison.
EXPECTED_SAMPLES = {
    "bu303-moving.log": 0,
    "bu303-nofix.log": 0,
    "bu353s4.log": 25,
    "garmin25lp.log": 10,
    "haicom-305N.log": 68,
    "mt3339.log": 30,
    "navika-100-fix.log": 20,
    "neo-m8n.log": 23,
    "sirfstarv-nmea.log": 59,
    "ublox-8.log": 72,
}


def test_every_log_has_its_gpsd_decoding_and_licence() -> None:
    assert (DATA / "COPYING.gpsd").is_file()
    assert sorted(EXPECTED_SAMPLES) == LOGS
    for log in LOGS:
        assert (DATA / f"{log}.chk").is_file()


def _iso_ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def _assemble(
    lines: list[bytes], pivot: int | None = PIVOT_2017_MS
) -> tuple[list[Sample], list[SerialLineError], NmeaAssembler]:
    assembler = NmeaAssembler(rollover_pivot_ms=pivot)
    samples: list[Sample] = []
    errors: list[SerialLineError] = []
    for line in lines:
        try:
            samples.extend(assembler.feed(line))
        except SerialLineError as err:
            errors.append(err)
    samples.extend(assembler.flush())
    return samples, errors, assembler


def _tpvs(log: str) -> list[dict[str, object]]:
    lines = (DATA / f"{log}.chk").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith('{"class":"TPV"')]


def _rmcs(lines: list[bytes]) -> list[dict[str, object]]:
    """RMC sentences decoded here, independently of the code under test."""
    out = []
    for raw in lines:
        text = raw[raw.rfind(b"$") :].decode("ascii", "replace")
        fields = text.split("*")[0].split(",")
        if not fields[0].endswith("RMC") or len(fields) < 10:
            continue
        hhmmss, status, lat, ns, lon, ew, knots, course, ddmmyy = fields[1:10]
        if len(ddmmyy) != 6:
            continue
        day = dt.date(2000 + int(ddmmyy[4:]), int(ddmmyy[2:4]), int(ddmmyy[:2]))
        tod = dt.timedelta(
            hours=int(hhmmss[:2]), minutes=int(hhmmss[2:4]), seconds=float(hhmmss[4:])
        )
        when = dt.datetime.combine(day, dt.time(), dt.UTC) + tod
        rmc: dict[str, object] = {"t_ms": round(when.timestamp() * 1000), "status": status}
        if status == "A":
            rmc["lat"] = (int(lat[:2]) + float(lat[2:]) / 60) * (-1 if ns == "S" else 1)
            rmc["lon"] = (int(lon[:3]) + float(lon[3:]) / 60) * (-1 if ew == "W" else 1)
            rmc["speed"] = float(knots) * 1852 / 3600
            rmc["course"] = float(course) if course else None
        out.append(rmc)
    return out


def _matches_rmc(sample: Sample, rmc: dict[str, object]) -> None:
    assert rmc["status"] == "A"
    assert sample.values["lat"] == pytest.approx(rmc["lat"], abs=1e-6)
    assert sample.values["lon"] == pytest.approx(rmc["lon"], abs=1e-6)
    assert sample.values["speed"] == pytest.approx(rmc["speed"], abs=0.01)


@pytest.mark.parametrize("log", LOGS)
def test_log_decodes_to_gpsd_fixes(log: str) -> None:
    lines = list(read_gpsfake_log(DATA / log))
    samples, _errors, _ = _assemble(lines)
    tpvs = _tpvs(log)
    assert len(samples) == EXPECTED_SAMPLES[log]
    assert all(s.kind == "gps" and s.time_source == "gps" for s in samples)
    assert all(s.values["fix"] in (1, 2) for s in samples)

    # R1: the last timed report of an epoch that carries a position is gpsd's fix
    gpsd_fix: dict[int, dict[str, object]] = {}
    for tpv in tpvs:
        if "time" in tpv and "lat" in tpv:
            gpsd_fix[_iso_ms(str(tpv["time"]))] = tpv
    # R2: untimed positions come only before gpsd's first time-stamped report
    timed_at = [i for i, tpv in enumerate(tpvs) if "time" in tpv]
    untimed_fixes = [i for i, tpv in enumerate(tpvs) if "time" not in tpv and "lat" in tpv]
    if untimed_fixes:
        assert max(untimed_fixes) < min(timed_at)

    ours = {s.t_ms: s for s in samples}
    assert len(ours) == len(samples), "one sample per epoch"

    if log in BINARY_LOGS:  # R6
        assert samples == []
        return

    for t_ms in sorted(ours.keys() & gpsd_fix.keys()):
        sample, tpv = ours[t_ms], gpsd_fix[t_ms]
        assert sample.values["lat"] == pytest.approx(tpv["lat"], abs=1e-6)
        assert sample.values["lon"] == pytest.approx(tpv["lon"], abs=1e-6)
        if "speed" in tpv:
            assert sample.values["speed"] == pytest.approx(tpv["speed"], abs=0.01)
        if "track" in tpv:
            assert sample.values["course"] == pytest.approx(tpv["track"], abs=1e-3)
        if "altMSL" in tpv and sample.values["alt"] is not None:
            assert sample.values["alt"] == pytest.approx(tpv["altMSL"], abs=1e-3)

    assert gpsd_fix.keys() <= ours.keys(), "every gpsd fix is one of ours"

    rmcs = _rmcs(lines)
    rmc_at = {rmc["t_ms"]: (i, rmc) for i, rmc in enumerate(_rmcs_with_gpsd_dates(rmcs, log))}
    for t_ms in sorted(ours.keys() - gpsd_fix.keys()):
        i, rmc = rmc_at[t_ms]
        _matches_rmc(ours[t_ms], rmc)
        after_no_fix = i > 0 and rmcs[i - 1]["status"] == "V"  # R3
        last_of_log = i == len(rmcs) - 1  # R4
        assert after_no_fix or last_of_log, f"unexplained extra fix at {t_ms}"

    # gpsd's timed reports without a position: no sample from us, or R3
    for tpv in tpvs:
        if "time" in tpv and "lat" not in tpv:
            t_ms = _iso_ms(str(tpv["time"]))
            if t_ms in ours and t_ms not in gpsd_fix:
                i, _ = rmc_at[t_ms]
                assert rmcs[i - 1]["status"] == "V"


def _rmcs_with_gpsd_dates(rmcs: list[dict[str, object]], log: str) -> list[dict[str, object]]:
    """The RMC times moved by gpsd's rollover rule (R5), to index them by gpsd's clock."""
    moved = []
    for rmc in rmcs:
        t_ms = int(str(rmc["t_ms"]))
        if t_ms < PIVOT_2017_MS:
            t_ms += GPS_WEEK_ROLLOVER_MS
        moved.append({**rmc, "t_ms": t_ms})
    return moved


@pytest.mark.parametrize("log", sorted(set(LOGS) - BINARY_LOGS))
def test_dates_are_the_receivers_own_unless_a_rollover_pivot_is_given(log: str) -> None:
    lines = list(read_gpsfake_log(DATA / log))
    raw, _, _ = _assemble(lines, pivot=None)
    pivoted, _, _ = _assemble(lines, pivot=PIVOT_2017_MS)
    rmc_times = {rmc["t_ms"] for rmc in _rmcs(lines)}
    assert {s.t_ms for s in raw} <= rmc_times
    for before, after in zip(raw, pivoted, strict=True):
        expected_shift = GPS_WEEK_ROLLOVER_MS if before.t_ms < PIVOT_2017_MS else 0
        assert after.t_ms - before.t_ms == expected_shift
        assert after.values == before.values


@pytest.mark.parametrize("log", sorted(BINARY_LOGS))
def test_binary_sirf_log_is_rejected_line_by_line_and_yields_nothing(log: str) -> None:
    lines = list(read_gpsfake_log(DATA / log))
    samples, errors, assembler = _assemble(lines)
    assert samples == []
    assert len(errors) == len(lines) > 0
    assert {err.reason for err in errors} <= {"no_sentence_start", "too_long"}
    assert assembler.stats["samples"] == 0


@pytest.mark.parametrize("log", sorted(BINARY_LOGS))
def test_gpsds_nmea_reemission_of_a_binary_log_decodes_to_gpsds_fixes(log: str) -> None:
    chk = (DATA / f"{log}.chk").read_bytes().splitlines()
    samples, errors, _ = _assemble([line for line in chk if line.startswith(b"$")], pivot=None)
    assert errors == []
    fixes = [tpv for tpv in _tpvs(log) if "time" in tpv and "lat" in tpv]
    assert [s.t_ms for s in samples] == [_iso_ms(str(tpv["time"])) for tpv in fixes]
    for sample, tpv in zip(samples, fixes, strict=True):
        assert sample.values["lat"] == pytest.approx(tpv["lat"], abs=1e-6)
        assert sample.values["lon"] == pytest.approx(tpv["lon"], abs=1e-6)
        assert sample.values["speed"] == pytest.approx(tpv["speed"], abs=0.01)


def test_nofix_log_yields_no_samples_even_through_gpsds_reemission() -> None:
    chk = (DATA / "bu303-nofix.log.chk").read_bytes().splitlines()
    samples, _, assembler = _assemble([line for line in chk if line.startswith(b"$")])
    assert samples == []
    assert assembler.stats["no_fix"] == 7


@pytest.mark.parametrize("log", sorted(set(LOGS) - BINARY_LOGS - {"ublox-8.log"}))
def test_nmea_logs_have_no_rejected_lines(log: str) -> None:
    _, errors, _ = _assemble(list(read_gpsfake_log(DATA / log)))
    assert errors == []


def test_ublox_log_quirks_garbage_before_a_sentence_and_a_cut_last_line() -> None:
    lines = list(read_gpsfake_log(DATA / "ublox-8.log"))
    samples, errors, assembler = _assemble(lines)
    assert assembler.stats["resync"] == 1  # binary noise, then $GNRMC, on one line
    noisy = next(line for line in lines if not line.startswith(b"$"))
    assert b"$GNRMC,000941.00" in noisy
    assert samples[0].t_ms == _iso_ms("2017-01-10T00:09:41.000Z")
    assert samples[0].values["course"] is None  # u-blox leaves course empty when still
    assert [err.reason for err in errors] == ["missing_checksum"]
    assert lines[-1].startswith(b"$GNRMC,001053.00") and b"*" not in lines[-1]


def test_mt3339_82_character_sentences_are_accepted_and_dgps_is_reported() -> None:
    lines = list(read_gpsfake_log(DATA / "mt3339.log"))
    assert max(len(line.rstrip(b"\r")) for line in lines) == 82
    samples, errors, _ = _assemble(lines)
    assert errors == []
    assert {s.values["fix"] for s in samples} == {2}  # GGA quality 2, RMC mode D


def test_sirfstarv_gps_gga_wins_over_the_glonass_only_gga_of_the_same_epoch() -> None:
    lines = list(read_gpsfake_log(DATA / "sirfstarv-nmea.log"))
    samples, _, _ = _assemble(lines)
    gp_sats = {}
    for line in lines:
        if line.startswith(b"$GPGGA"):
            fields = line.decode().split(",")
            gp_sats[fields[1]] = int(fields[7])
    assert any(line.startswith(b"$GLGGA") for line in lines)
    for sample in samples:
        when = dt.datetime.fromtimestamp(sample.t_ms / 1000, dt.UTC)
        assert sample.values["sats"] == gp_sats[f"{when:%H%M%S}.000"]
