"""RFID over a real pseudo-terminal: RfidReaderShim writes tag lines, SerialRfidCollector reads.

EPC decoding is checked against the GS1 Tag Data Standard's own example
(3074257BF7194E4000001A85 is urn:epc:id:sgtin:0614141.812345.6789) and round trips of the
shim's encoder. With TF_RFID_PORT set (e.g. /dev/ttyACM0), a real reader is read too.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest

from edge_agent.collectors.base import Sample
from edge_agent.collectors.epc import decode_epc, normalise_hex
from edge_agent.collectors.errors import DeviceUnavailable, SerialLineError
from edge_agent.collectors.rfid_serial import SerialRfidCollector, parse_tag_line
from firmware_shims.rfid_reader import RfidReaderShim, epc_hex

pytestmark = pytest.mark.hardware

PALLET = "urn:epc:id:sscc:0614141.1234567890"
ITEM = "urn:epc:id:sgtin:0614141.812345.6789"
CRATE = "urn:epc:id:grai:0614141.12345.400"


def test_gs1_example_sgtin_decodes_to_its_pure_identity_uri() -> None:
    result = decode_epc("3074257BF7194E4000001A85")
    assert (result.uri, result.scheme, result.decoded) == (ITEM, "sgtin", True)


@pytest.mark.parametrize("uri", [PALLET, ITEM, CRATE])
def test_sscc_sgtin_and_grai_round_trip_through_a_96_bit_epc(uri: str) -> None:
    assert decode_epc(epc_hex(uri)).uri == uri


def test_a_tag_that_is_not_a_gs1_epc_is_kept_raw_and_flagged() -> None:
    result = decode_epc("E2801160600002054E3B5C8A")  # a TID-like header epcpy does not know
    assert result.uri is None and not result.decoded and result.hex.startswith("E280")
    assert result.reason and result.reason.startswith("undecodable")


@pytest.mark.parametrize("line", [b"hello", b"30742", b"3074257BF7194E4000001A85,loud",
                                  b"3074257BF7194E4000001A85,-200,1", b"\xff\xfe\x00",
                                  b"3074257BF7194E4000001A85,-50,1,extra"])
def test_lines_that_are_not_tags_are_rejected_with_a_reason(line: bytes) -> None:
    with pytest.raises(SerialLineError) as caught:
        parse_tag_line(line)
    assert caught.value.reason in {"bad_tag", "bad_rssi", "non_ascii"}


def test_hex_is_normalised_from_reader_spellings() -> None:
    assert normalise_hex("30 74 25 7b f7 19 4e 40 00 00 1a 85") == "3074257BF7194E4000001A85"
    assert normalise_hex("0x3074257BF7194E4000001A85") == "3074257BF7194E4000001A85"
    assert normalise_hex("3074Z") is None


def _read(collector: SerialRfidCollector, count: int, timeout: float = 5.0) -> list[Sample]:
    out: list[Sample] = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        with contextlib.suppress(DeviceUnavailable):
            out.extend(collector.read_available())
    return out


def test_scans_at_a_depot_come_through_the_pty_decoded_with_garbage_counted(
        tmp_path: Path) -> None:
    clock_ms = [1_767_225_600_000]

    def clock() -> tuple[int, str]:
        clock_ms[0] += 100
        return clock_ms[0], "gps"

    with RfidReaderShim(link=tmp_path / "rfid.tty") as shim:
        collector = SerialRfidCollector(str(tmp_path / "rfid.tty"), clock=clock, repeat_s=5)
        try:
            collector.open()
            shim.scan(PALLET, rssi=-48.5, antenna=2)
            shim.scan(PALLET, rssi=-47.0, antenna=2)  # still in the field: a repeat
            shim.send(b"\x93\xa7garbage at 4800 baud\xfe\r\n")
            shim.scan(ITEM)
            shim.scan(CRATE, rssi=None)
            shim.scan("E2801160600002054E3B5C8A")
            samples = _read(collector, 4)
        finally:
            collector.close()
    assert [s.values["epc"] for s in samples] == [PALLET, ITEM, CRATE, None]
    assert samples[0].values["rssi"] == -48.5 and samples[0].values["antenna"] == 2
    assert samples[2].values["rssi"] is None
    assert samples[3].values["decoded"] is False and samples[3].values["hex"] == (
        "E2801160600002054E3B5C8A")
    assert all(s.kind == "rfid" and s.time_source == "gps" for s in samples)
    assert collector.stats["repeats"] == 1 and collector.stats["undecodable"] == 1
    assert collector.stats["bad_lines"] == 1


@pytest.mark.skipif("TF_RFID_PORT" not in os.environ,
                    reason="no real RFID reader: set TF_RFID_PORT=/dev/ttyACM0 to test one")
def test_a_real_reader_reports_a_tag_held_to_it() -> None:
    collector = SerialRfidCollector(os.environ["TF_RFID_PORT"],
                                    int(os.environ.get("TF_RFID_BAUD", "9600")))
    try:
        samples = _read(collector, 1, timeout=float(os.environ.get("TF_RFID_WAIT_S", "30")))
    finally:
        collector.close()
    assert samples and samples[0].values["hex"]
