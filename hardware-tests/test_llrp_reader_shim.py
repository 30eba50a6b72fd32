"""RFID over LLRP through a real TCP socket: LlrpReaderShim is the reader, sllurp's client
(inside LlrpRfidCollector) is the agent's side.

The collector must give the same ``rfid`` samples as the serial reader (EPC decoded by
epcpy, rssi in dBm, antenna port), keep its session through a reader reboot, a hung reader
and garbage on the wire, and configure the reader the way the agent needs (AntennaID and
PeakRSSI in every report, a keepalive). With TF_LLRP_HOST set, a real reader is read too.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from edge_agent.clock import AgentClock
from edge_agent.collectors import rfid_llrp
from edge_agent.collectors.base import Sample
from edge_agent.collectors.errors import DeviceUnavailable
from edge_agent.collectors.rfid_llrp import LlrpRfidCollector
from edge_agent.config import AgentConfig
from edge_agent.sensors import build_collectors
from firmware_shims import llrp_codec as codec
from firmware_shims.llrp_reader import LlrpReaderShim
from firmware_shims.rfid_reader import epc_hex
from trustfleet.procs import free_port

pytestmark = pytest.mark.hardware

PALLET = "urn:epc:id:sscc:0614141.1234567890"
ITEM = "urn:epc:id:sgtin:0614141.812345.6789"
CRATE = "urn:epc:id:grai:0614141.12345.400"
RAW_TAG = "E2801160600002054E3B5C8A"  # a TID-like tag epcpy does not decode


def clock() -> Callable[[], tuple[int, str]]:
    now = [1_767_225_600_000]

    def tick() -> tuple[int, str]:
        now[0] += 100
        return now[0], "gps"

    return tick


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def read(collector: LlrpRfidCollector, count: int, timeout: float = 10.0) -> list[Sample]:
    out: list[Sample] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        assert time.monotonic() < deadline, f"{len(out)} samples, {dict(collector.stats)}"
        with contextlib.suppress(DeviceUnavailable):
            out.extend(collector.read_available())
        time.sleep(0.01)
    return out


def first_error(collector: LlrpRfidCollector, timeout: float = 10.0) -> DeviceUnavailable:
    """The next DeviceUnavailable read_available() raises (samples meanwhile are dropped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            collector.read_available()
        except DeviceUnavailable as err:
            return err
        time.sleep(0.01)
    raise AssertionError("no DeviceUnavailable")


@pytest.fixture
def reader() -> Iterator[LlrpReaderShim]:
    with LlrpReaderShim(antennas=4) as shim:
        yield shim


@pytest.fixture
def collector(reader: LlrpReaderShim) -> Iterator[LlrpRfidCollector]:
    made = LlrpRfidCollector("127.0.0.1", reader.port, antennas=(1, 2), clock=clock(),
                             repeat_s=5, keepalive_s=0.3, backoff_initial=0.05,
                             backoff_max=0.2)
    wait_for(lambda: made.inventorying)
    yield made
    made.close()


def test_scans_come_through_as_the_serial_readers_samples(
        reader: LlrpReaderShim, collector: LlrpRfidCollector) -> None:
    reader.scan(PALLET, antenna=2, rssi=-48)
    reader.scan(PALLET, antenna=2, rssi=-47)  # still in the field: a repeat
    reader.scan(ITEM, antenna=1, rssi=-61)
    reader.scan(CRATE, antenna=1, rssi=-70, count=3)
    reader.scan(RAW_TAG, antenna=2)
    reader.scan(RAW_TAG + "00001111", antenna=1)  # 128 bits: sent as EPCData, not EPC-96
    reader.scan(epc_hex(ITEM), antenna=3)  # an antenna this ROSpec does not inventory
    samples = read(collector, 5)
    assert [s.values["epc"] for s in samples] == [PALLET, ITEM, CRATE, None, None]
    first = samples[0].values
    assert first == {"epc": PALLET, "hex": epc_hex(PALLET), "scheme": "sscc", "decoded": True,
                     "rssi": -48.0, "antenna": 2}
    assert samples[3].values["hex"] == RAW_TAG and samples[3].values["decoded"] is False
    assert samples[4].values["hex"] == RAW_TAG + "00001111"
    assert all(s.kind == "rfid" and s.time_source == "gps" for s in samples)
    assert collector.stats["repeats"] == 1 and collector.stats["undecodable"] == 2
    assert reader.stats["tags_on_other_antennas"] == 1
    # the reader was set up the way the agent needs, and its keepalives are acknowledged
    assert reader.stats["rx:ADD_ROSPEC"] == 1 and reader.stats["rx:ENABLE_ROSPEC"] == 1
    assert reader.stats["rx:DELETE_ROSPEC"] == 1  # what a previous client left is deleted
    wait_for(lambda: reader.stats["rx:KEEPALIVE_ACK"] >= 2)
    assert collector.stats.get("bad_messages", 0) == 0


def test_a_reader_reboot_ends_the_session_and_the_collector_reconnects(
        reader: LlrpReaderShim, collector: LlrpRfidCollector) -> None:
    reader.scan(PALLET)
    assert read(collector, 1)[0].values["epc"] == PALLET
    reader.drop()
    assert first_error(collector).reason == "session_lost"  # reported once
    wait_for(lambda: collector.inventorying and reader.stats["connections"] == 2)
    reader.scan(ITEM)
    assert read(collector, 1)[0].values["epc"] == ITEM
    assert reader.stats["rx:ADD_ROSPEC"] == 2  # the ROSpec was set up again


def test_a_hung_reader_is_noticed_by_its_missing_keepalives(
        reader: LlrpReaderShim, collector: LlrpRfidCollector) -> None:
    reader.mute(for_s=2.0)  # the link stays up, the reader says nothing, then reboots
    wait_for(lambda: collector.stats["silent_sessions"] >= 1)
    assert reader.stats["reboots"] == 0  # noticed by the silence, before the reboot
    wait_for(lambda: collector.inventorying and reader.stats["connections"] == 2)
    reader.scan(CRATE)
    assert read(collector, 1)[0].values["epc"] == CRATE


def test_garbage_from_the_reader_is_counted_and_the_session_goes_on(
        reader: LlrpReaderShim, collector: LlrpRfidCollector) -> None:
    tag = bytes.fromhex(epc_hex(ITEM))
    reader.inject(codec.message(999, 7))  # a message type LLRP does not have
    reader.inject(codec.message(61, 8, struct.pack("!HH", 240, 200) + b"\x8d" + tag))
    reader.inject(codec.message(61, 9, codec.tlv(240, b"", codec.tv(1, "H", 1))))  # no EPC
    reader.inject(codec.message(61, 10, codec.tlv(240, b"", codec.tlv(
        241, struct.pack("!H", 20) + b"\x12\x34\x50"))))  # a 20-bit EPC
    reader.inject(codec.ro_access_report(11, [codec.TagRead(tag, 9, 20)],
                                         selector=frozenset({"EnableAntennaID",
                                                             "EnablePeakRSSI"}),
                                         rospec_id=1, utc_us=0))  # RSSI +20, antenna 9
    reader.inject(codec.message(62, 12, b"\x00\x01"))  # a KEEPALIVE with a stray byte
    samples = read(collector, 1)
    assert samples[0].values == {"epc": ITEM, "hex": epc_hex(ITEM), "scheme": "sgtin",
                                 "decoded": True, "rssi": None, "antenna": 9}
    wait_for(lambda: collector.stats["bad_messages"] >= 5)
    stats = collector.stats
    assert stats["bad:undecodable"] == 1 and stats["bad:bad_parameter"] == 2
    assert stats["bad:bad_epc"] == 2 and stats["bad_rssi"] == 1
    assert stats.get("disconnects", 0) == 0
    reader.scan(PALLET)
    assert read(collector, 1)[0].values["epc"] == PALLET
    # a length field no reader sends: the framing is lost, the session starts over
    reader.inject(struct.pack("!HII", (1 << 10) | 61, 0xFFFFFFF0, 13))
    wait_for(lambda: collector.stats["bad:bad_length"] == 1 and collector.inventorying
             and reader.stats["connections"] == 2)
    reader.scan(CRATE)
    assert read(collector, 1)[0].values["epc"] == CRATE


def test_no_reader_yet_is_reported_once_per_attempt_then_connected() -> None:
    port = free_port()
    collector = LlrpRfidCollector("127.0.0.1", port, clock=clock(), keepalive_s=0.3,
                                  backoff_initial=0.05, backoff_max=0.1)
    try:
        assert first_error(collector).reason == "connect_failed"
        wait_for(lambda: collector.stats["connect_failures"] >= 2)
        with LlrpReaderShim(port=port) as reader:
            wait_for(lambda: collector.inventorying)
            reader.scan(PALLET)
            got = read(collector, 1)
    finally:
        collector.close()
    assert got[0].values["epc"] == PALLET
    with pytest.raises(DeviceUnavailable, match="closed"):
        collector.read_available()


def test_a_second_client_is_refused_by_the_reader(
        reader: LlrpReaderShim, collector: LlrpRfidCollector) -> None:
    other = LlrpRfidCollector("127.0.0.1", reader.port, keepalive_s=0.3, handshake_s=1.0,
                              backoff_initial=0.05, backoff_max=0.1)
    try:
        wait_for(lambda: reader.stats["refused"] >= 1)
        assert not other.inventorying and collector.inventorying
    finally:
        other.close()
    reader.scan(ITEM)
    assert read(collector, 1)[0].values["epc"] == ITEM


def test_agent_config_builds_the_llrp_collector(reader: LlrpReaderShim) -> None:
    cfg = AgentConfig(llrp_host="127.0.0.1", llrp_port=reader.port, llrp_antennas="1, 2",
                      llrp_keepalive_s=0.5).validate()
    (collector,) = build_collectors(cfg, AgentClock())
    assert isinstance(collector, LlrpRfidCollector) and collector.antennas == [1, 2]
    try:
        wait_for(lambda: collector.inventorying)
        reader.scan(PALLET, antenna=2)
        assert read(collector, 1)[0].values["antenna"] == 2
    finally:
        collector.close()
    wait_for(lambda: not reader.connected)
    assert reader.stats["rx:DELETE_ROSPEC"] >= 2  # closing deletes the ROSpec politely
    assert collector.stats["close_unconfirmed"] == 0


def test_closing_with_a_hung_reader_gives_up_and_counts_it(
        reader: LlrpReaderShim, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rfid_llrp, "POLITE_CLOSE_S", 0.3)  # the wait is the same, only shorter
    collector = LlrpRfidCollector("127.0.0.1", reader.port, clock=clock(), keepalive_s=5.0)
    try:
        wait_for(lambda: collector.inventorying)
        reader.mute(for_s=30.0)  # the reader will never answer the ROSpec's deletion
        wait_for(lambda: reader.stats["muted_ticks"] >= 1)
    finally:
        collector.close()
    assert collector.stats["close_unconfirmed"] == 1
    assert reader.stats.get("rx:DELETE_ROSPEC", 0) == 1  # only the one from connecting


@pytest.mark.skipif("TF_LLRP_HOST" not in os.environ,
                    reason="no real LLRP reader: set TF_LLRP_HOST=reader-address to test one")
def test_a_real_reader_reports_a_tag_in_its_field() -> None:
    collector = LlrpRfidCollector(os.environ["TF_LLRP_HOST"],
                                  int(os.environ.get("TF_LLRP_PORT", "5084")))
    try:
        samples = read(collector, 1, timeout=float(os.environ.get("TF_LLRP_WAIT_S", "60")))
    finally:
        collector.close()
    assert samples[0].values["hex"]
