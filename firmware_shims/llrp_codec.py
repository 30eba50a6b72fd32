"""LLRP 1.0.1 framing for a reader: the messages a fixed UHF reader sends, and a walker for
the ones a client sends (pure: bytes in, bytes out).

Written from the EPCglobal LLRP 1.0.1 standard's binary encoding, cross-checked field by
field against sllurp's decoder (``sllurp.llrp_proto``), so a client that speaks LLRP
decodes these bytes as it decodes a real reader's. All integers are big-endian.

- Message header (10 bytes): ``reserved:3 | version:3 | type:10`` (u16), total length
  including the header (u32), message ID (u32). A response echoes the request's ID.
- TLV parameter: ``reserved:6 | type:10`` (u16), total length including the 4-byte header
  (u16), then fields and sub-parameters.
- TV parameter (types 1..127, fixed size): one byte ``0x80 | type`` then the value, e.g.
  ``EPC-96`` (13) is 12 bytes, ``PeakRSSI`` (6) one signed byte in dBm.

:func:`iter_params` walks a client's parameters without trusting them: a length that runs
past its container, a TLV shorter than its header or an unknown TV type raises
:class:`LlrpFormatError`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = [
    "MSG",
    "PARAM",
    "LlrpFormatError",
    "ROSpecInfo",
    "TagRead",
    "capabilities_response",
    "connection_event",
    "error_message",
    "find_param",
    "iter_params",
    "keepalive",
    "message",
    "parse_header",
    "parse_keepalive_spec",
    "parse_rospec",
    "reader_config_response",
    "ro_access_report",
    "status_response",
    "tlv",
]

HEADER = struct.Struct("!HII")
VERSION = 1

MSG = {
    "GET_READER_CAPABILITIES": 1, "GET_READER_CONFIG": 2, "SET_READER_CONFIG": 3,
    "CLOSE_CONNECTION_RESPONSE": 4, "GET_READER_CAPABILITIES_RESPONSE": 11,
    "GET_READER_CONFIG_RESPONSE": 12, "SET_READER_CONFIG_RESPONSE": 13, "CLOSE_CONNECTION": 14,
    "ADD_ROSPEC": 20, "DELETE_ROSPEC": 21, "START_ROSPEC": 22, "STOP_ROSPEC": 23,
    "ENABLE_ROSPEC": 24, "DISABLE_ROSPEC": 25, "ADD_ROSPEC_RESPONSE": 30,
    "DELETE_ROSPEC_RESPONSE": 31, "START_ROSPEC_RESPONSE": 32, "STOP_ROSPEC_RESPONSE": 33,
    "ENABLE_ROSPEC_RESPONSE": 34, "DISABLE_ROSPEC_RESPONSE": 35, "ADD_ACCESSSPEC": 40,
    "DELETE_ACCESSSPEC": 41, "ENABLE_ACCESSSPEC": 42, "DISABLE_ACCESSSPEC": 43,
    "ADD_ACCESSSPEC_RESPONSE": 50, "DELETE_ACCESSSPEC_RESPONSE": 51,
    "ENABLE_ACCESSSPEC_RESPONSE": 52, "DISABLE_ACCESSSPEC_RESPONSE": 53,
    "RO_ACCESS_REPORT": 61, "KEEPALIVE": 62, "READER_EVENT_NOTIFICATION": 63,
    "ENABLE_EVENTS_AND_REPORTS": 64, "KEEPALIVE_ACK": 72, "ERROR_MESSAGE": 100,
}
MSG_NAME = {v: k for k, v in MSG.items()}

PARAM = {
    "AntennaID": 1, "LastSeenTimestampUTC": 4, "PeakRSSI": 6, "TagSeenCount": 8,
    "ROSpecID": 9, "EPC-96": 13, "UTCTimestamp": 128, "GeneralDeviceCapabilities": 137,
    "ReceiveSensitivityTableEntry": 139, "PerAntennaAirProtocol": 140, "GPIOCapabilities": 141,
    "LLRPCapabilities": 142, "RegulatoryCapabilities": 143, "UHFBandCapabilities": 144,
    "TransmitPowerLevelTableEntry": 145, "FrequencyInformation": 146,
    "FrequencyHopTable": 147, "ROSpec": 177, "ROBoundarySpec": 178,
    "ROSpecStartTrigger": 179, "AISpec": 183, "KeepaliveSpec": 220, "AntennaProperties": 221,
    "ROReportSpec": 237, "TagReportContentSelector": 238, "TagReportData": 240, "EPCData": 241,
    "ReaderEventNotificationData": 246, "ConnectionAttemptEvent": 256, "LLRPStatus": 287,
    "C1G2LLRPCapabilities": 327, "UHFC1G2RFModeTable": 328, "UHFC1G2RFModeTableEntry": 329,
}

# LLRP 1.0.1 TV parameters: type -> value size in bytes
TV_SIZES = {1: 2, 2: 8, 3: 8, 4: 8, 5: 8, 6: 1, 7: 2, 8: 2, 9: 4, 10: 2, 11: 2, 12: 2,
            13: 12, 14: 2, 15: 2, 16: 4, 17: 2, 18: 4, 19: 2, 20: 2}

STATUS = {"Success": 0, "FieldError": 101, "UnsupportedMessage": 109,
          "UnsupportedVersion": 110, "A_Invalid": 300, "DeviceError": 401}

# TagReportContentSelector flag bits, most significant first (LLRP 1.0.1 §13.2.1.1)
SELECTOR_BITS = ("EnableROSpecID", "EnableSpecIndex", "EnableInventoryParameterSpecID",
                 "EnableAntennaID", "EnableChannelIndex", "EnablePeakRSSI",
                 "EnableFirstSeenTimestamp", "EnableLastSeenTimestamp", "EnableTagSeenCount",
                 "EnableAccessSpecID")


class LlrpFormatError(ValueError):
    """A client's message or parameter does not follow the LLRP binary encoding."""


# -- encoding ---------------------------------------------------------------------------------

def message(msg_type: int, msg_id: int, body: bytes = b"") -> bytes:
    return HEADER.pack((VERSION << 10) | msg_type, HEADER.size + len(body), msg_id) + body


def tlv(param_type: int, value: bytes = b"", *children: bytes) -> bytes:
    payload = value + b"".join(children)
    return struct.pack("!HH", param_type, 4 + len(payload)) + payload


def tv(param_type: int, fmt: str, value: int | bytes) -> bytes:
    return bytes([0x80 | param_type]) + struct.pack("!" + fmt, value)


def llrp_status(code: str = "Success", description: str = "") -> bytes:
    text = description.encode("utf-8")
    return tlv(PARAM["LLRPStatus"], struct.pack("!HH", STATUS[code], len(text)) + text)


def status_response(msg_type: int, msg_id: int, code: str = "Success",
                    description: str = "") -> bytes:
    return message(msg_type, msg_id, llrp_status(code, description))


def error_message(msg_id: int, code: str, description: str) -> bytes:
    return message(MSG["ERROR_MESSAGE"], msg_id, llrp_status(code, description))


def connection_event(msg_id: int, utc_us: int, status: int = 0) -> bytes:
    """READER_EVENT_NOTIFICATION with a ConnectionAttemptEvent (0 = Success)."""
    data = tlv(PARAM["ReaderEventNotificationData"], b"",
               tlv(PARAM["UTCTimestamp"], struct.pack("!Q", utc_us)),
               tlv(PARAM["ConnectionAttemptEvent"], struct.pack("!H", status)))
    return message(MSG["READER_EVENT_NOTIFICATION"], msg_id, data)


def keepalive(msg_id: int) -> bytes:
    return message(MSG["KEEPALIVE"], msg_id)


def capabilities_response(msg_id: int, *, antennas: int, model: str,
                          power_dbm: Sequence[float]) -> bytes:
    firmware = model.encode("ascii")
    general = tlv(
        PARAM["GeneralDeviceCapabilities"],
        struct.pack("!HHIIH", antennas, 0xC000, 0x5446, 1, len(firmware)) + firmware,
        tlv(PARAM["ReceiveSensitivityTableEntry"], struct.pack("!HH", 1, 0)),
        *[tlv(PARAM["PerAntennaAirProtocol"], struct.pack("!HHB", a, 1, 1))
          for a in range(1, antennas + 1)],
        tlv(PARAM["GPIOCapabilities"], struct.pack("!HH", 0, 0)))
    llrp = tlv(PARAM["LLRPCapabilities"], struct.pack("!BBHIIIII", 0, 0, 0, 1, 1, 1, 0, 0))
    powers = [tlv(PARAM["TransmitPowerLevelTableEntry"],
                  struct.pack("!Hh", i, round(dbm * 100)))
              for i, dbm in enumerate(power_dbm, start=1)]
    channels = [865_700 + 600 * k for k in range(4)]  # ETSI EN 302 208 channels, kHz
    hop_table = tlv(PARAM["FrequencyHopTable"],
                    struct.pack(f"!BBH{len(channels)}I", 1, 0, len(channels), *channels))
    frequency = tlv(PARAM["FrequencyInformation"], struct.pack("!B", 0x80), hop_table)
    mode = tlv(PARAM["UHFC1G2RFModeTableEntry"],
               struct.pack("!IBBBBIIIII", 1, 0x80, 2, 0, 2, 320_000, 1500, 6250, 25000, 0))
    band = tlv(PARAM["UHFBandCapabilities"], b"", *powers, frequency,
               tlv(PARAM["UHFC1G2RFModeTable"], b"", mode))
    regulatory = tlv(PARAM["RegulatoryCapabilities"], struct.pack("!HH", 276, 2), band)
    c1g2 = tlv(PARAM["C1G2LLRPCapabilities"], struct.pack("!BH", 0, 2))
    return message(MSG["GET_READER_CAPABILITIES_RESPONSE"], msg_id,
                   llrp_status() + general + llrp + regulatory + c1g2)


def reader_config_response(msg_id: int, *, antennas: int, keepalive_ms: int) -> bytes:
    props = [tlv(PARAM["AntennaProperties"], struct.pack("!BHh", 0x80, a, 600))
             for a in range(1, antennas + 1)]
    spec = tlv(PARAM["KeepaliveSpec"], struct.pack("!BI", 1 if keepalive_ms else 0,
                                                   keepalive_ms))
    return message(MSG["GET_READER_CONFIG_RESPONSE"], msg_id,
                   llrp_status() + b"".join(props) + spec)


@dataclass(frozen=True)
class TagRead:
    """One tag as a reader reports it: EPC bytes, antenna, peak RSSI (dBm), reads."""

    epc: bytes
    antenna: int = 1
    rssi: int = -55
    count: int = 1


def ro_access_report(msg_id: int, tags: Sequence[TagRead], *, selector: frozenset[str],
                     rospec_id: int, utc_us: int) -> bytes:
    """RO_ACCESS_REPORT: one TagReportData per tag, with the fields the ROSpec asked for."""
    reports = []
    for tag in tags:
        if len(tag.epc) == 12:
            parts = [tv(PARAM["EPC-96"], "12s", tag.epc)]
        else:
            parts = [tlv(PARAM["EPCData"], struct.pack("!H", len(tag.epc) * 8) + tag.epc)]
        if "EnableROSpecID" in selector:
            parts.append(tv(PARAM["ROSpecID"], "I", rospec_id))
        if "EnableAntennaID" in selector:
            parts.append(tv(PARAM["AntennaID"], "H", tag.antenna))
        if "EnablePeakRSSI" in selector:
            parts.append(tv(PARAM["PeakRSSI"], "b", tag.rssi))
        if "EnableLastSeenTimestamp" in selector:
            parts.append(tv(PARAM["LastSeenTimestampUTC"], "Q", utc_us))
        if "EnableTagSeenCount" in selector:
            parts.append(tv(PARAM["TagSeenCount"], "H", tag.count))
        reports.append(tlv(PARAM["TagReportData"], b"", *parts))
    return message(MSG["RO_ACCESS_REPORT"], msg_id, b"".join(reports))


# -- decoding what a client sends -----------------------------------------------------------

def parse_header(data: bytes) -> tuple[int, int, int, int]:
    """(version, type, total length, message ID) of the message at the start of ``data``."""
    word, length, msg_id = HEADER.unpack_from(data)
    return (word >> 10) & 0x7, word & 0x3FF, length, msg_id


def iter_params(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, value) of each parameter in ``data``; TLV values exclude their header."""
    i = 0
    while i < len(data):
        first = data[i]
        if first & 0x80:
            param_type = first & 0x7F
            size = TV_SIZES.get(param_type)
            if size is None or i + 1 + size > len(data):
                raise LlrpFormatError(f"TV parameter {param_type} at byte {i}")
            yield param_type, data[i + 1:i + 1 + size]
            i += 1 + size
            continue
        if i + 4 > len(data):
            raise LlrpFormatError(f"truncated parameter header at byte {i}")
        param_type, length = struct.unpack_from("!HH", data, i)
        if length < 4 or i + length > len(data):
            raise LlrpFormatError(f"parameter {param_type & 0x3FF} length {length} at byte {i}")
        yield param_type & 0x3FF, data[i + 4:i + length]
        i += length


def find_param(data: bytes, param_type: int) -> bytes | None:
    return next((value for t, value in iter_params(data) if t == param_type), None)


def parse_keepalive_spec(body: bytes) -> int | None:
    """SET_READER_CONFIG body -> keepalive period in ms (0: off), or None if not given."""
    spec = find_param(body[1:], PARAM["KeepaliveSpec"])
    if spec is None:
        return None
    if len(spec) < 5:
        raise LlrpFormatError("KeepaliveSpec too short")
    trigger, interval = struct.unpack_from("!BI", spec)
    return int(interval) if trigger == 1 else 0


@dataclass(frozen=True)
class ROSpecInfo:
    rospec_id: int
    immediate: bool
    antennas: tuple[int, ...]
    selector: frozenset[str]


def parse_rospec(body: bytes) -> ROSpecInfo:
    """ADD_ROSPEC body -> what the reader needs to run it. Raises LlrpFormatError."""
    rospec = find_param(body, PARAM["ROSpec"])
    if rospec is None or len(rospec) < 6:
        raise LlrpFormatError("ADD_ROSPEC without a ROSpec")
    rospec_id = struct.unpack_from("!I", rospec)[0]
    inner = rospec[6:]
    boundary = find_param(inner, PARAM["ROBoundarySpec"]) or b""
    start = find_param(boundary, PARAM["ROSpecStartTrigger"]) or b"\x00"
    antennas: tuple[int, ...] = ()
    aispec = find_param(inner, PARAM["AISpec"])
    if aispec is not None and len(aispec) >= 2:
        count = struct.unpack_from("!H", aispec)[0]
        if len(aispec) < 2 + 2 * count:
            raise LlrpFormatError("AISpec antenna list runs past the parameter")
        antennas = struct.unpack_from(f"!{count}H", aispec, 2)
    selector: frozenset[str] = frozenset()
    report = find_param(inner, PARAM["ROReportSpec"])
    if report is not None and len(report) >= 3:
        content = find_param(report[3:], PARAM["TagReportContentSelector"])
        if content is not None and len(content) >= 2:
            flags = struct.unpack_from("!H", content)[0]
            selector = frozenset(name for bit, name in enumerate(SELECTOR_BITS)
                                 if flags & (1 << (15 - bit)))
    return ROSpecInfo(rospec_id, start[0] == 1, tuple(antennas), selector)
