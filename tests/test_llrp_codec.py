"""The LLRP reader shim's byte encoding against sllurp's own encoder and decoder.

What the shim sends must decode in sllurp exactly as a reader's message does; what sllurp
sends (its ROSpec, its KeepaliveSpec) must be understood by the shim's walker. And the
agent's framing check (edge_agent.collectors.rfid_llrp.malformed) accepts every message the
shim can send and rejects parameters that run past their container.
"""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sllurp.llrp import LLRPMessage
from sllurp.llrp_proto import LLRPROSpec

from edge_agent.collectors.rfid_llrp import malformed
from firmware_shims import llrp_codec as codec
from firmware_shims.llrp_codec import MSG, LlrpFormatError, TagRead

EPC = bytes.fromhex("3074257BF7194E4000001A85")
ALL = frozenset(codec.SELECTOR_BITS)


def decoded(raw: bytes) -> tuple[str, dict[str, object]]:
    msg = LLRPMessage(msgbytes=raw)
    assert malformed(raw) is None
    return msg.getName(), msg.msgdict[msg.getName()]


def test_connection_event_is_a_successful_connection_attempt() -> None:
    name, body = decoded(codec.connection_event(5, 1_767_225_600_000_000))
    assert name == "READER_EVENT_NOTIFICATION" and body["ID"] == 5
    data = body["ReaderEventNotificationData"]
    assert data["ConnectionAttemptEvent"] == {"Status": "Success"}
    assert data["UTCTimestamp"] == {"Microseconds": 1_767_225_600_000_000}
    refused = decoded(codec.connection_event(6, 0, status=2))[1]
    assert LLRPMessage(msgbytes=codec.connection_event(6, 0, status=2)).isSuccess() is False
    assert "Client initiated" in refused["ReaderEventNotificationData"][
        "ConnectionAttemptEvent"]["Status"]


def test_capabilities_decode_to_what_sllurp_parses() -> None:
    power = [10.0 + 0.25 * i for i in range(81)]
    name, body = decoded(codec.capabilities_response(9, antennas=4, model="TF",
                                                     power_dbm=power))
    assert name == "GET_READER_CAPABILITIES_RESPONSE" and body["ID"] == 9
    assert body["LLRPStatus"]["StatusCode"] == "Success"
    general = body["GeneralDeviceCapabilities"]
    assert general["MaxNumberOfAntennaSupported"] == 4
    assert general["ReaderFirmwareVersion"] == b"TF"
    assert general["HasUTCClockCapability"] is True
    assert len(general["PerAntennaAirProtocol"]) == 4
    band = body["RegulatoryCapabilities"]["UHFBandCapabilities"]
    table = band["TransmitPowerLevelTableEntry"]
    assert [e["Index"] for e in table] == list(range(1, 82))
    assert table[-1]["TransmitPowerValue"] == 3000  # 30 dBm
    assert band["FrequencyInformation"]["Hopping"] is True
    (mode,) = band["UHFC1G2RFModeTable"]["UHFC1G2RFModeTableEntry"]
    assert mode["ModeIdentifier"] == 1 and mode["MaxTari"] == 25000
    assert body["C1G2LLRPCapabilities"]["MaxNumSelectFiltersPerQuery"] == 2
    assert body["LLRPCapabilities"]["MaxNumROSpec"] == 1


def test_reader_config_and_status_responses() -> None:
    name, body = decoded(codec.reader_config_response(3, antennas=2, keepalive_ms=500))
    assert name == "GET_READER_CONFIG_RESPONSE"
    assert body["KeepaliveSpec"] == {"KeepaliveTriggerType": "Immediate", "TimeInterval": 500}
    assert [a["AntennaID"] for a in body["AntennaProperties"]] == [1, 2]
    for request, response in ((MSG["ADD_ROSPEC"], MSG["ADD_ROSPEC_RESPONSE"]),
                              (MSG["DELETE_ROSPEC"], MSG["DELETE_ROSPEC_RESPONSE"])):
        name, body = decoded(codec.status_response(response, request + 100))
        assert name.endswith("_RESPONSE") and body["ID"] == request + 100
        assert body["LLRPStatus"]["StatusCode"] == "Success"
    name, body = decoded(codec.error_message(4, "UnsupportedMessage", "type 999"))
    assert name == "ERROR_MESSAGE"
    assert body["LLRPStatus"] == {"StatusCode": "UnsupportedMessage",
                                  "ErrorDescription": b"type 999"}


def test_tag_report_carries_exactly_the_selected_fields() -> None:
    tags = [TagRead(EPC, antenna=2, rssi=-48, count=3),
            TagRead(EPC + b"\x00\x01", antenna=1, rssi=-70)]
    raw = codec.ro_access_report(7, tags, selector=ALL, rospec_id=1, utc_us=123)
    name, body = decoded(raw)
    assert name == "RO_ACCESS_REPORT"
    first, second = body["TagReportData"]
    assert first == {"EPC-96": EPC.hex().encode(), "EPC": EPC.hex().encode(), "ROSpecID": 1,
                     "AntennaID": 2, "PeakRSSI": -48, "LastSeenTimestampUTC": 123,
                     "TagSeenCount": 3}
    assert second["EPC"] == (EPC + b"\x00\x01").hex().encode() and "EPC-96" not in second
    bare = decoded(codec.ro_access_report(8, tags[:1], selector=frozenset(), rospec_id=1,
                                          utc_us=0))[1]
    assert bare["TagReportData"] == [{"EPC-96": EPC.hex().encode(),
                                      "EPC": EPC.hex().encode()}]


def test_keepalive_decodes_and_sllurp_acks_it() -> None:
    assert decoded(codec.keepalive(11))[0] == "KEEPALIVE"
    ack = LLRPMessage(msgdict={"KEEPALIVE_ACK": {"ID": 11}}).msgbytes
    assert codec.parse_header(ack) == (1, MSG["KEEPALIVE_ACK"], 10, 11)


def sllurp_bytes(name: str, body: dict[str, object]) -> bytes:
    raw: bytes = LLRPMessage(msgdict={name: body}).msgbytes
    return raw


def test_the_shim_reads_sllurps_rospec() -> None:
    selector = {"EnableAntennaID": True, "EnablePeakRSSI": True, "EnableROSpecID": False,
                "EnableLastSeenTimestamp": True, "EnableTagSeenCount": False}
    rospec = LLRPROSpec(None, 7, antennas=[1, 3], report_every_n_tags=1,
                        tag_content_selector=selector)
    raw = sllurp_bytes("ADD_ROSPEC", {"ID": 1, "ROSpecID": 7, "ROSpec": rospec})
    version, msg_type, length, msg_id = codec.parse_header(raw)
    assert (version, msg_type, length, msg_id) == (1, MSG["ADD_ROSPEC"], len(raw), 1)
    info = codec.parse_rospec(raw[10:])
    assert info.rospec_id == 7 and info.immediate and info.antennas == (1, 3)
    assert info.selector == {"EnableAntennaID", "EnablePeakRSSI", "EnableLastSeenTimestamp"}


def test_the_shim_reads_sllurps_keepalive_spec() -> None:
    raw = sllurp_bytes("SET_READER_CONFIG", {
        "ID": 2, "ResetToFactoryDefaults": False,
        "ReaderEventNotificationSpec": {"EventNotificationState": {"AntennaEvent": False}},
        "KeepaliveSpec": {"KeepaliveTriggerType": 1, "TimeInterval": 2500}})
    assert codec.parse_keepalive_spec(raw[10:]) == 2500
    no_spec = sllurp_bytes("SET_READER_CONFIG", {"ID": 3, "ResetToFactoryDefaults": False})
    assert codec.parse_keepalive_spec(no_spec[10:]) is None


@pytest.mark.parametrize("body", [
    struct.pack("!HH", 177, 3),  # shorter than its own header
    struct.pack("!HH", 177, 40) + b"\x00" * 8,  # runs past the message
    b"\x8d" + b"\x00" * 4,  # EPC-96 cut short
    b"\xe3\x00",  # TV type 99 does not exist
])
def test_the_walker_rejects_parameters_that_do_not_fit(body: bytes) -> None:
    with pytest.raises(LlrpFormatError):
        list(codec.iter_params(body))
    assert malformed(codec.message(MSG["RO_ACCESS_REPORT"], 1, codec.tlv(240, b"", body)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_walker_and_framing_check_never_fail_otherwise(body: bytes) -> None:
    with contextlib.suppress(LlrpFormatError):
        list(codec.iter_params(body))
    for msg_type in (MSG["RO_ACCESS_REPORT"], MSG["KEEPALIVE"], 1023):
        problem = malformed(codec.message(msg_type, 1, body))
        assert problem is None or isinstance(problem, str)
