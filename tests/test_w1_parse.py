"""DS18B20 ``w1_slave`` parsing: good files, every known failure, and the shim's encoder.

Ground truth for the encoding is the DS18B20 datasheet's temperature/data table; the CRC is
checked against the datasheet's power-on scratchpad and a real kernel output line.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.collectors.errors import CollectorError, SensorReadError
from edge_agent.collectors.w1_temp import crc8_maxim, parse_w1_slave
from firmware_shims import w1_sysfs
from firmware_shims.w1_sysfs import FAULTS, fault_text, scratchpad, w1_slave_text

GOOD = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"
PROBE = "28-0316a279d5ff"

# DS18B20 datasheet, table 1 "Temperature/Data Relationship" (12-bit)
DATASHEET = [
    (125.0, 0x07D0),
    (85.0, 0x0550),
    (25.0625, 0x0191),
    (10.125, 0x00A2),
    (0.5, 0x0008),
    (0.0, 0x0000),
    (-0.5, 0xFFF8),
    (-10.125, 0xFF5E),
    (-25.0625, 0xFE6F),
    (-55.0, 0xFC90),
]


def _file(pad: bytes, milli: int, verdict: str = "YES", crc: int | None = None) -> str:
    hexes = " ".join(f"{b:02x}" for b in pad)
    shown = crc8_maxim(pad[:8]) if crc is None else crc
    return f"{hexes} : crc={shown:02x} {verdict}\n{hexes} t={milli}\n"


def test_good_file_gives_millidegrees() -> None:
    assert parse_w1_slave(GOOD, PROBE) == 23125
    assert parse_w1_slave(GOOD.encode()) == 23125


def test_crc_of_known_scratchpads() -> None:
    assert crc8_maxim(bytes.fromhex("72014b467fff0e10")) == 0x57
    assert crc8_maxim(bytes.fromhex("50054b467fff0c10")) == 0x1C  # datasheet power-on
    assert crc8_maxim(bytes(8)) == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=16))
def test_table_crc_agrees_with_the_shims_bitwise_crc(data: bytes) -> None:
    assert crc8_maxim(data) == w1_sysfs.crc8(data)


def _reason(text: str) -> str:
    with pytest.raises(SensorReadError) as caught:
        parse_w1_slave(text, PROBE)
    assert isinstance(caught.value, CollectorError)
    assert caught.value.device == PROBE
    return caught.value.reason


def test_kernel_crc_no_is_rejected() -> None:
    assert _reason(GOOD.replace("YES", "NO")) == "crc_no"


def test_crc_byte_mismatch_is_rejected_even_when_the_file_says_yes() -> None:
    pad = bytearray(bytes.fromhex("72014b467fff0e1057"))
    pad[8] = 0x58
    assert _reason(_file(bytes(pad), 23125, crc=0x58)) == "crc_mismatch"
    flipped = bytearray(bytes.fromhex("72014b467fff0e1057"))
    flipped[0] ^= 0x01  # a data bit flipped, CRC byte and verdict left alone
    assert _reason(_file(bytes(flipped), 23125, crc=0x57)) == "crc_mismatch"


def test_kernel_crc_field_must_match_the_crc_byte() -> None:
    assert _reason(GOOD.replace("crc=57", "crc=58")) == "crc_mismatch"


def test_the_two_lines_must_carry_the_same_bytes() -> None:
    first, second = GOOD.splitlines()
    assert _reason(first + "\n" + second.replace("72 01", "73 01") + "\n") == "crc_mismatch"


def test_85000_power_on_reset_value_is_rejected() -> None:
    assert _reason(fault_text("power_on_reset")) == "power_on_reset"
    assert fault_text("power_on_reset").startswith("50 05 4b 46 7f ff 0c 10 1c : crc=1c YES")


def test_minus_127_no_reading_is_rejected() -> None:
    assert _reason(GOOD.replace("t=23125", "t=-127000")) == "no_reading"


def test_value_outside_the_chips_range_is_rejected() -> None:
    assert _reason(GOOD.replace("t=23125", "t=126000")) == "out_of_range"


def test_t_value_disagreeing_with_the_bytes_is_rejected() -> None:
    assert _reason(GOOD.replace("t=23125", "t=24125")) == "t_mismatch"


@pytest.mark.parametrize(
    "text",
    ["", "\n", GOOD.splitlines()[0] + "\n", GOOD.replace(" t=23125", ""), GOOD[:50]],
    ids=["empty", "blank", "first-line-only", "no-t", "cut-mid-line"],
)
def test_truncated_file_is_rejected(text: str) -> None:
    assert _reason(text) in {"truncated", "malformed"}


def test_garbled_first_line_is_malformed() -> None:
    assert _reason(GOOD.replace(": crc=57", ": cRc=57")) == "malformed"


def test_shorted_bus_all_zeros_passes_crc_but_is_rejected() -> None:
    assert crc8_maxim(bytes(8)) == 0
    assert _reason(fault_text("shorted")) == "bad_config"


@pytest.mark.parametrize("kind", FAULTS)
def test_every_fault_the_shim_produces_is_rejected(kind: str) -> None:
    expected = {
        "crc_no": "crc_no",
        "power_on_reset": "power_on_reset",
        "shorted": "bad_config",
        "disconnected": "crc_no",
        "truncated": "truncated",
    }
    assert _reason(fault_text(kind)) == expected[kind]


def test_disconnected_probe_reads_like_the_real_kernel_output() -> None:
    assert fault_text("disconnected") == (
        "ff ff ff ff ff ff ff ff ff : crc=c9 NO\nff ff ff ff ff ff ff ff ff t=-62\n"
    )


@pytest.mark.parametrize(("celsius", "raw"), DATASHEET)
def test_shim_encodes_the_datasheet_table_and_the_parser_decodes_it(
    celsius: float, raw: int
) -> None:
    pad = scratchpad(celsius)
    assert pad[0:2] == raw.to_bytes(2, "little")
    if celsius != 85.0:  # 85.0 has the power-on bytes: indistinguishable, rejected by design
        assert parse_w1_slave(w1_slave_text(celsius)) == round(celsius * 1000)


def test_negative_temperature_is_twos_complement() -> None:
    text = w1_slave_text(-10.125)
    assert text.startswith("5e ff ")
    assert text.splitlines()[1].endswith(" t=-10125")
    assert parse_w1_slave(text) == -10125


def test_smallest_negative_step_truncates_toward_zero_like_the_kernel() -> None:
    assert parse_w1_slave(w1_slave_text(-0.0625)) == -62
    assert parse_w1_slave(w1_slave_text(0.0625)) == 62


@pytest.mark.parametrize("bits", [9, 10, 11, 12])
def test_lower_resolutions_parse(bits: int) -> None:
    assert parse_w1_slave(w1_slave_text(4.5, resolution=bits)) == 4500


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-55.0, max_value=125.0))
def test_round_trip_through_the_shims_encoder(celsius: float) -> None:
    raw = round(celsius * 16)
    if raw == 0x0550:  # 85.0 C: the power-on bytes, rejected by design (tested above)
        return
    milli = parse_w1_slave(w1_slave_text(celsius))
    assert milli == int(raw * 1000 / 16)
    assert abs(milli / 1000 - celsius) <= 1 / 32 + 0.001
