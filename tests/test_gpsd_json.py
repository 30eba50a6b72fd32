"""The pure gpsd JSON report assembler: reports in, one GPS sample per fix epoch out."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.collectors.errors import ProtocolError
from edge_agent.collectors.gpsd_json import (
    MAX_LINE_BYTES,
    GpsdReportAssembler,
    parse_report,
    parse_time,
)


def line(obj: object) -> bytes:
    return json.dumps(obj).encode()


def tpv(second: int, **fields: object) -> bytes:
    report: dict[str, object] = {"class": "TPV", "device": "/dev/ttyUSB0", "mode": 3,
                                 "time": f"2026-01-01T00:00:{second:02d}.000Z",
                                 "lat": 51.9, "lon": 4.1, "altMSL": 3.5, "speed": 12.3456,
                                 "track": 90.0}
    report.update(fields)
    return line({k: v for k, v in report.items() if v is not None})


T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def test_time_is_iso_8601_utc_to_the_millisecond() -> None:
    assert parse_time("2026-01-01T00:00:01.250Z") == T0 + 1250
    assert parse_time("2026-01-01T00:00:01Z") == T0 + 1000
    for bad in ("2026-01-01T00:00:01", "yesterday", 1767225600, "1969-12-31T23:59:59.000Z"):
        with pytest.raises(ProtocolError) as caught:
            parse_time(bad)
        assert caught.value.reason == "bad_time"


def test_the_last_report_of_an_epoch_becomes_its_sample() -> None:
    asm = GpsdReportAssembler()
    assert asm.feed(tpv(1, speed=None, track=None)) == []  # after GGA: no speed yet
    assert asm.feed(tpv(1, speed=5.0)) == []  # after RMC: complete
    (sample,) = asm.feed(tpv(2))
    assert sample.t_ms == T0 + 1000 and sample.time_source == "gps" and sample.kind == "gps"
    assert sample.values == {"lat": 51.9, "lon": 4.1, "speed": 5.0, "course": 90.0, "fix": 1,
                             "sats": None, "hdop": None, "alt": 3.5}
    (last,) = asm.flush()
    assert last.t_ms == T0 + 2000 and last.values["speed"] == 12.35  # two decimals
    assert asm.flush() == []


def test_sky_gives_satellites_used_and_hdop() -> None:
    asm = GpsdReportAssembler()
    asm.feed(line({"class": "SKY", "hdop": 0.9, "uSat": 9}))
    asm.feed(tpv(1))
    (sample,) = asm.flush()
    assert (sample.values["sats"], sample.values["hdop"]) == (9, 0.9)
    asm.feed(line({"class": "SKY", "satellites": [{"PRN": 1, "used": True},
                                                  {"PRN": 2, "used": False}, "junk"]}))
    asm.feed(tpv(2))
    (sample,) = asm.flush()
    assert (sample.values["sats"], sample.values["hdop"]) == (1, 0.9)


@pytest.mark.parametrize(("fields", "counter"), [
    ({"mode": 1}, "no_fix"),
    ({"status": 5}, "no_fix"),  # dead reckoning only
    ({"status": 8}, "no_fix"),  # simulated
    ({"lat": None, "lon": None, "mode": 2}, "no_position"),
])
def test_epochs_without_a_satellite_fix_give_no_sample(fields: dict[str, object],
                                                       counter: str) -> None:
    asm = GpsdReportAssembler()
    asm.feed(tpv(1, **fields))
    assert asm.flush() == []
    assert asm.stats[counter] == 1


@pytest.mark.parametrize("status", [2, 3, 4])
def test_dgps_and_rtk_are_fix_2(status: int) -> None:
    asm = GpsdReportAssembler()
    asm.feed(tpv(1, status=status))
    assert asm.flush()[0].values["fix"] == 2


def test_untimed_and_late_reports_are_counted_not_sampled() -> None:
    asm = GpsdReportAssembler()
    assert asm.feed(tpv(1, time=None)) == []  # a position before the date is known
    asm.feed(tpv(1))
    assert [s.t_ms for s in asm.feed(tpv(2))] == [T0 + 1000]
    assert [s.t_ms for s in asm.feed(tpv(1))] == [T0 + 2000]  # a replayed log: new again
    asm.flush()
    assert asm.feed(tpv(1)) == []  # the epoch just emitted, reported once more: late
    assert asm.flush() == []
    assert (asm.stats["untimed"], asm.stats["late"], asm.stats["samples"]) == (1, 1, 3)


@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"class":"TPV",', "bad_json"),
    (b'{"class":"TPV","lat":NaN}', "bad_json"),
    (b"[1,2,3]", "not_object"),
    (b'{"lat":1}', "no_class"),
    (b'{"class":7}', "no_class"),
    (b"\xff\xfe{}", "non_utf8"),
    (b"[" * 100_000, "too_long"),
    (b"[" * 50_000 + b"]" * 50_000, "too_long"),
    (b"[" * 30_000 + b"]" * 30_000, "bad_json"),  # deeper than the parser's recursion limit
])
def test_malformed_lines_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    asm = GpsdReportAssembler()
    with pytest.raises(ProtocolError) as caught:
        asm.feed(raw)
    assert caught.value.reason == reason and len(caught.value.evidence) <= 200
    assert asm.stats["bad_lines"] == 1 and asm.stats[f"bad:{reason}"] == 1


@pytest.mark.parametrize("fields", [
    {"lat": 91.0}, {"lon": -181.0}, {"lat": "51.9"}, {"mode": 4}, {"mode": True},
    {"speed": -1.0}, {"track": 400.0}, {"altMSL": "high"}, {"time": "noon"},
])
def test_a_tpv_with_impossible_values_is_rejected_and_the_held_epoch_kept(
        fields: dict[str, object]) -> None:
    asm = GpsdReportAssembler()
    asm.feed(tpv(1))
    with pytest.raises(ProtocolError) as caught:
        asm.feed(tpv(1, **fields))
    assert caught.value.reason in {"bad_tpv", "bad_time"}
    (sample,) = asm.flush()
    assert sample.values["lat"] == 51.9


def test_unknown_classes_and_gpsd_errors_are_counted_and_skipped() -> None:
    asm = GpsdReportAssembler()
    for report in ({"class": "VERSION", "release": "3.22"}, {"class": "WATCH"},
                   {"class": "BOGUS"}, {"class": "ERROR", "message": "unrecognized request"},
                   {"class": "PPS"}):
        assert asm.feed(line(report)) == []
    assert asm.version == "3.22"
    assert asm.stats["unknown_class"] == 1 and asm.stats["gpsd_error"] == 1
    assert asm.stats["class:PPS"] == 1 and asm.stats.get("bad_lines", 0) == 0


def test_device_filter_keeps_one_receiver() -> None:
    asm = GpsdReportAssembler(device="/dev/ttyUSB0")
    asm.feed(tpv(1, device="/dev/ttyACM0"))
    assert asm.flush() == [] and asm.stats["other_device"] == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode)
       | st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(),
                      lambda kids: st.lists(kids) | st.dictionaries(st.text(), kids),
                      max_leaves=20).map(lambda v: json.dumps({"class": "TPV", **(
                          v if isinstance(v, dict) else {"x": v})}).encode()))
def test_any_line_is_a_sample_nothing_or_a_protocol_error(raw: bytes) -> None:
    asm = GpsdReportAssembler()
    with contextlib.suppress(ProtocolError):
        asm.feed(raw)
    asm.flush()
    assert len(raw) <= MAX_LINE_BYTES or asm.stats["bad:too_long"] == 1
    assert parse_report(b'{"class":"TPV"}')["class"] == "TPV"
