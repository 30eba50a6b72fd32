"""RFID scans from a serial reader that sends one tag per line (keyboard-wedge/serial format).

Accepted lines (ASCII, CR LF or LF): the EPC in hex, optionally followed by the RSSI in
dBm and the antenna port, separated by commas, semicolons or spaces::

    3074257BF7194E4000001A85
    3074257BF7194E4000001A85,-61.5,2

Each scan becomes an ``rfid`` sample ``{"epc": URI or None, "hex": ..., "scheme": ...,
"decoded": bool, "rssi": ..., "antenna": ...}`` (edge_agent.collectors.rfid_scan, shared
with the LLRP collector); undecodable EPCs are kept raw with ``decoded`` false and counted
(``undecodable``). A reader reports a tag in its field many times a second: the same EPC
again within ``repeat_s`` (on the agent's clock) is counted as ``repeats`` and not sampled.
A line that is not a tag (garbage at a wrong baud rate, a bad RSSI) is counted as a bad
line and skipped, never a crash.

The serial shell (open, backoff, reconnect, line splitting) is SerialGpsCollector's,
with the NMEA decoding replaced by tag parsing.
"""

from __future__ import annotations

import logging
import re

from edge_agent.collectors.base import Clock, Sample, system_clock
from edge_agent.collectors.epc import normalise_hex
from edge_agent.collectors.errors import SerialLineError
from edge_agent.collectors.gps_serial import SerialGpsCollector
from edge_agent.collectors.rfid_scan import ScanFilter

__all__ = ["SerialRfidCollector", "parse_tag_line"]

log = logging.getLogger(__name__)
_SPLIT = re.compile(r"[,; \t]+")


def parse_tag_line(line: bytes) -> tuple[str, float | None, int | None]:
    """(hex EPC, rssi, antenna) from one reader line. Raises SerialLineError."""
    try:
        text = line.decode("ascii").strip()
    except UnicodeDecodeError:
        raise SerialLineError("non_ascii", line) from None
    parts = [p for p in _SPLIT.split(text) if p]
    if not parts or len(parts) > 3:
        raise SerialLineError("bad_tag", line, "expected EPC[,RSSI[,ANTENNA]]")
    epc = normalise_hex(parts[0])
    if epc is None:
        raise SerialLineError("bad_tag", line, f"{parts[0][:40]!r} is not an EPC in hex")
    try:
        rssi = float(parts[1]) if len(parts) > 1 else None
        antenna = int(parts[2]) if len(parts) > 2 else None
    except ValueError:
        raise SerialLineError("bad_tag", line, "RSSI or antenna is not a number") from None
    if rssi is not None and not -120.0 <= rssi <= 0.0:
        raise SerialLineError("bad_rssi", line, f"rssi {rssi}")
    if antenna is not None and not 0 <= antenna <= 64:
        raise SerialLineError("bad_antenna", line, f"antenna {antenna}")
    return epc, rssi, antenna


class SerialRfidCollector(SerialGpsCollector):
    def __init__(self, port: str, baudrate: int = 9600, *, clock: Clock = system_clock,
                 repeat_s: float = 10.0, read_timeout: float = 0.05) -> None:
        super().__init__(port, baudrate, read_timeout=read_timeout)
        self.scans = ScanFilter(clock, repeat_s, self.stats, port)

    def _feed(self, line: bytes) -> list[Sample]:
        if not line.strip():
            return []
        self.stats["lines"] += 1
        try:
            epc, rssi, antenna = parse_tag_line(line.rstrip(b"\r"))
        except SerialLineError as err:
            self.stats["bad_lines"] += 1
            self.stats[f"bad:{err.reason}"] += 1
            log.debug("rfid %s: bad line (%s): %r", self.port, err.reason, err.line)
            return []
        sample = self.scans.sample(epc, rssi, antenna)
        return [] if sample is None else [sample]
