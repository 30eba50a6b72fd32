"""`trustfleet nmea-decode FILE` against gpsd's own decoding of every real log.

For each log in tests/data/nmea, gpsd's last time-stamped TPV report of an epoch that has
a position is its fix (rule R1 of test_nmea_real_logs.py). Every one of those must be a
line of ours with the same time, lat/lon (1e-6 degrees), alt (altMSL, 1e-3 m), speed
(0.01 m/s), track (1e-3 degrees) and mode. Our extra lines are the epochs that module's
rules R3 (gpsd's mode lags at fix acquisition) and R4 (log cut mid-epoch) explain, so the
line count equals the samples the agent's assembler emits for that log.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_nmea_real_logs import BINARY_LOGS, EXPECTED_SAMPLES, LOGS
from trustfleet.cli import main

DATA = Path(__file__).parent / "data" / "nmea"


def decode(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict], str]:
    code = main(["nmea-decode", *args])
    out = capsys.readouterr()
    return code, [json.loads(line) for line in out.out.splitlines()], out.err


def gpsd_fixes(log: str) -> dict[str, dict]:
    fixes: dict[str, dict] = {}
    for line in (DATA / f"{log}.chk").read_text().splitlines():
        if line.startswith('{"class":"TPV"'):
            tpv = json.loads(line)
            if "time" in tpv and "lat" in tpv:
                fixes[tpv["time"]] = tpv
    return fixes


@pytest.mark.parametrize("log", LOGS)
def test_every_gpsd_fix_of_the_log_is_printed_with_the_same_values(
        capsys: pytest.CaptureFixture[str], log: str) -> None:
    code, ours, err = decode(capsys, str(DATA / log), "--rollover-pivot", "2017-01-01")
    assert code == 0
    assert len(ours) == EXPECTED_SAMPLES[log]
    assert f"nmea-decode: {len(ours)} fixes" in err
    by_time = {rec["time"]: rec for rec in ours}
    assert len(by_time) == len(ours)
    for rec in ours:
        assert set(rec) == {"time", "lat", "lon", "alt", "speed", "track", "mode"}
        assert rec["mode"] in (2, 3)
    if log in BINARY_LOGS:  # SiRF binary: every line rejected, nothing printed (R6)
        assert "rejected" in err and ours == []
        return
    for when, tpv in gpsd_fixes(log).items():
        rec = by_time[when]
        assert rec["mode"] == tpv["mode"]
        assert rec["lat"] == pytest.approx(tpv["lat"], abs=1e-6)
        assert rec["lon"] == pytest.approx(tpv["lon"], abs=1e-6)
        assert rec["alt"] == pytest.approx(tpv["altMSL"], abs=1e-3)
        if "speed" in tpv:
            assert rec["speed"] == pytest.approx(tpv["speed"], abs=0.01)
        if "track" in tpv:
            assert rec["track"] == pytest.approx(tpv["track"], abs=1e-3)


def test_comment_lines_are_skipped_and_an_rmc_without_gga_is_a_2d_fix(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "capture.nmea"
    capture.write_bytes(b"# captured on truck 7\n"
                        b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\n"
                        b"# a comment between sentences\n"
                        b"$GPRMC,123520,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*60\n"
                        b"garbage at the wrong baud rate \xff\xfe\n")
    code, ours, err = decode(capsys, str(capture))
    assert code == 0
    assert [r["time"] for r in ours] == ["1994-03-23T12:35:19.000Z", "1994-03-23T12:35:20.000Z"]
    assert ours[0]["mode"] == 2 and ours[0]["alt"] is None
    assert ours[0]["speed"] == pytest.approx(22.4 * 1852 / 3600, abs=0.01)
    assert ours[0]["track"] == 84.4
    assert "1 rejected" in err


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["nmea-decode", str(tmp_path / "nope.log")])
    assert code == 1
    assert "nope.log" in capsys.readouterr().err


def test_the_installed_command_reads_standard_input() -> None:
    log = (DATA / "mt3339.log").read_bytes()
    out = subprocess.run([sys.executable, "-m", "trustfleet.cli", "nmea-decode", "-"],
                         input=log, capture_output=True, timeout=60, check=True)
    assert len(out.stdout.splitlines()) == EXPECTED_SAMPLES["mt3339.log"]
