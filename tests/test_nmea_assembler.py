"""How NmeaAssembler turns sentences into one GPS sample per fix epoch."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.collectors.base import Sample
from edge_agent.collectors.nmea import KNOT_MPS, NmeaAssembler
from firmware_shims import nmea_gen
from firmware_shims.nmea_gen import Fix, gga, group_epochs, rmc, sentence
from firmware_shims.route import route_for_truck

T0 = int(dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=dt.UTC).timestamp() * 1000)
FIX = Fix(t_ms=T0, lat=-33.8688197, lon=151.2092955, speed=12.5, course=271.3, alt=58.2)


def _feed(assembler: NmeaAssembler, *lines: str) -> list[Sample]:
    out: list[Sample] = []
    for line in lines:
        out.extend(assembler.feed(line))
    return out


def test_rmc_then_gga_of_the_same_time_make_one_merged_sample() -> None:
    assembler = NmeaAssembler()
    assert assembler.feed(rmc(FIX)) == []  # held until its GGA
    [sample] = assembler.feed(gga(FIX))
    assert sample.kind == "gps" and sample.time_source == "gps" and sample.t_ms == T0
    assert sample.values == {
        "lat": -33.8688197,
        "lon": 151.2092955,
        "speed": 12.5,
        "course": 271.3,
        "fix": 1,
        "sats": 9,
        "hdop": 0.9,
        "alt": 58.2,
    }


def test_gga_then_rmc_emit_at_the_rmc() -> None:
    assembler = NmeaAssembler()
    assert assembler.feed(gga(FIX)) == []
    assert len(assembler.feed(rmc(FIX))) == 1


def test_rmc_without_gga_goes_out_when_the_next_epoch_starts_or_at_flush() -> None:
    assembler = NmeaAssembler()
    later = Fix(t_ms=T0 + 1000, lat=FIX.lat, lon=FIX.lon)
    assert assembler.feed(rmc(FIX)) == []
    [first] = assembler.feed(rmc(later))
    assert first.t_ms == T0
    assert first.values["sats"] is None and first.values["alt"] is None
    assert first.values["fix"] == 1
    [second] = assembler.flush()
    assert second.t_ms == T0 + 1000
    assert assembler.flush() == []


def test_gga_of_another_time_does_not_merge() -> None:
    assembler = NmeaAssembler()
    other = Fix(t_ms=T0 - 1000, lat=0.0, lon=0.0, sats=3, alt=1.0)
    assembler.feed(gga(other))
    assert assembler.feed(rmc(FIX)) == []
    [sample] = assembler.flush()
    assert sample.values["sats"] is None


def test_status_v_yields_nothing_and_is_counted() -> None:
    assembler = NmeaAssembler()
    no_fix = Fix(t_ms=T0, lat=FIX.lat, lon=FIX.lon, quality=0)
    assert _feed(assembler, rmc(no_fix), gga(no_fix)) == []
    assert assembler.flush() == []
    assert assembler.stats["no_fix"] == 1


@pytest.mark.parametrize("quality", [0, 6, 7, 8])
def test_gga_without_a_satellite_fix_suppresses_the_epoch(quality: int) -> None:
    assembler = NmeaAssembler()
    odd = Fix(t_ms=T0, lat=FIX.lat, lon=FIX.lon, quality=quality)
    assert _feed(assembler, rmc(FIX), gga(odd)) == []
    assert assembler.flush() == []


@pytest.mark.parametrize("mode", ["N", "E", "M", "S"])
def test_rmc_mode_indicator_without_a_satellite_fix_yields_nothing(mode: str) -> None:
    body = rmc(FIX)[1:-3].rsplit(",", 1)[0] + f",{mode}"
    assembler = NmeaAssembler()
    assert _feed(assembler, sentence(body), gga(FIX)) == []
    assert assembler.stats["no_fix"] == 1


def test_dgps_is_fix_2_from_gga_quality_or_rmc_mode() -> None:
    dgps = Fix(t_ms=T0, lat=FIX.lat, lon=FIX.lon, quality=2)
    [from_gga] = _feed(NmeaAssembler(), rmc(FIX), gga(dgps))
    assert from_gga.values["fix"] == 2
    assert rmc(dgps).endswith(",D*" + rmc(dgps)[-2:])
    assembler = NmeaAssembler()
    assert assembler.feed(rmc(dgps)) == []
    [from_rmc] = assembler.flush()
    assert from_rmc.values["fix"] == 2


def test_gprmc_and_gnrmc_of_one_epoch_give_one_sample() -> None:
    assembler = NmeaAssembler()
    samples = _feed(assembler, rmc(FIX, "GP"), gga(FIX, "GN"), rmc(FIX, "GN"), gga(FIX))
    assert len(samples) == 1
    assert assembler.stats["duplicate"] == 1


def test_empty_course_is_none_and_speed_is_converted_from_knots() -> None:
    still = Fix(t_ms=T0, lat=1.0, lon=2.0, speed=10 * KNOT_MPS, course=None)
    [sample] = _feed(NmeaAssembler(), rmc(still), gga(still))
    assert sample.values["course"] is None
    assert sample.values["speed"] == 5.14


def test_date_rollover_pivot_moves_old_dates_forward_by_1024_weeks() -> None:
    old = Fix(t_ms=T0 - 1024 * 7 * 86_400_000, lat=1.0, lon=2.0)
    [raw] = _feed(NmeaAssembler(), rmc(old), gga(old))
    [fixed] = _feed(NmeaAssembler(rollover_pivot_ms=T0 - 86_400_000), rmc(old), gga(old))
    assert raw.t_ms == old.t_ms and fixed.t_ms == T0


def test_leap_second_235960_is_accepted() -> None:
    body = rmc(FIX)[1:-3].replace(rmc(FIX).split(",")[1], "235960.000")
    assembler = NmeaAssembler()
    [sample] = _feed(assembler, sentence(body)) + assembler.flush()
    assert sample.t_ms % 86_400_000 == 0  # the instant 00:00:00 of the next day


@settings(max_examples=150, deadline=None)
@given(
    t_ms=st.integers(315_964_800_000, 3_471_292_799_000),  # GPS dates 1980..2079
    lat=st.floats(-89.9999, 89.9999),
    lon=st.floats(-179.9999, 179.9999),
    speed=st.floats(0, 120),
    course=st.one_of(st.none(), st.floats(0, 359.99)),
)
def test_generated_sentences_round_trip_through_the_assembler(
    t_ms: int, lat: float, lon: float, speed: float, course: float | None
) -> None:
    fix = Fix(t_ms=t_ms, lat=lat, lon=lon, speed=speed, course=course)
    [sample] = _feed(NmeaAssembler(), *nmea_gen.epoch_sentences(fix))
    assert sample.t_ms == t_ms
    assert sample.values["lat"] == pytest.approx(lat, abs=2e-7)
    assert sample.values["lon"] == pytest.approx(lon, abs=2e-7)
    assert sample.values["speed"] == pytest.approx(speed, abs=0.006)
    if course is None:
        assert sample.values["course"] is None
    else:
        assert sample.values["course"] == pytest.approx(course, abs=0.006)


def test_route_epochs_decode_to_the_route() -> None:
    route = route_for_truck(4)
    assembler = NmeaAssembler()
    for k in range(0, 3600, 97):
        point = route.at(T0 / 1000 + k)
        fix = Fix(T0 + k * 1000, point.lat, point.lon, point.speed, point.course)
        [sample] = _feed(assembler, *nmea_gen.epoch_sentences(fix))
        assert sample.values["lat"] == pytest.approx(point.lat, abs=1e-6)
        assert sample.values["speed"] == pytest.approx(point.speed, abs=0.01)


def test_group_epochs_cuts_where_the_utc_time_changes() -> None:
    a = Fix(t_ms=T0, lat=1.0, lon=2.0)
    b = Fix(t_ms=T0 + 1000, lat=1.0, lon=2.0)
    lines = [s.encode() for s in (gga(a), "$GPGSA,A,3*00", rmc(a), gga(b), rmc(b))]
    assert group_epochs(lines) == [lines[:3], lines[3:]]
    assert group_epochs([b"\x01\x02", b"\x03"]) == [[b"\x01\x02"], [b"\x03"]]
