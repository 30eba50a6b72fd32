"""NMEA 0183 sentences as a receiver would send them, and gpsfake log files.

Pure builders: :func:`rmc` and :func:`gga` format one :class:`Fix` into a sentence with
its checksum (no line ending; the writer adds CR LF). Latitude and longitude carry five
decimals of minutes (about 2 cm), time carries milliseconds.

gpsfake logs (gpsd's test format, e.g. tests/data/nmea/*.log) are a block of ``#`` header
lines followed by the raw bytes the receiver sent. :func:`read_gpsfake_log` yields those
raw lines; :func:`group_epochs` cuts them into receiver epochs (a new epoch starts when
the UTC time in an RMC, GGA, GNS, GLL or ZDA sentence changes) so a replay can pace them.

This module deliberately shares no code with ``edge_agent.collectors.nmea``: the shim is a
second, independent implementation the collector is tested against.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Fix",
    "checksum",
    "epoch_sentences",
    "gga",
    "group_epochs",
    "read_gpsfake_log",
    "rmc",
    "sentence",
]

_KNOT_MPS = 1852.0 / 3600.0
_TIME_FIELD = {"RMC": 1, "GGA": 1, "GNS": 1, "ZDA": 1, "GLL": 5}


@dataclass(frozen=True)
class Fix:
    """One receiver fix. ``quality``: GGA fix quality (0 none, 1 GPS, 2 DGPS)."""

    t_ms: int
    lat: float
    lon: float
    speed: float = 0.0
    course: float | None = None
    quality: int = 1
    sats: int = 9
    hdop: float = 0.9
    alt: float = 12.0


def checksum(body: str) -> str:
    """Two upper-case hex digits: XOR of the characters between ``$`` and ``*``."""
    value = 0
    for char in body.encode("ascii"):
        value ^= char
    return f"{value:02X}"


def sentence(body: str) -> str:
    """``$`` + body + ``*`` + checksum."""
    return f"${body}*{checksum(body)}"


def _coord(value: float, degree_digits: int, hemis: str) -> tuple[str, str]:
    units = round(abs(value) * 60 * 100_000)  # 1e-5 minutes
    degrees, rest = divmod(units, 60 * 100_000)
    minutes, fraction = divmod(rest, 100_000)
    text = f"{degrees:0{degree_digits}d}{minutes:02d}.{fraction:05d}"
    return text, hemis[1] if value < 0 else hemis[0]


def _utc(t_ms: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=t_ms)


def _hhmmss(t_ms: int) -> str:
    when = _utc(t_ms)
    return f"{when:%H%M%S}.{when.microsecond // 1000:03d}"


def rmc(fix: Fix, talker: str = "GP") -> str:
    """An RMC sentence (NMEA 2.3, with mode indicator) for ``fix``; status V if quality 0."""
    lat, ns = _coord(fix.lat, 2, "NS")
    lon, ew = _coord(fix.lon, 3, "EW")
    status = "A" if fix.quality > 0 else "V"
    mode = {0: "N", 2: "D"}.get(fix.quality, "A")
    course = "" if fix.course is None else f"{fix.course % 360.0:.2f}"
    date = f"{_utc(fix.t_ms):%d%m%y}"
    knots = f"{fix.speed / _KNOT_MPS:.3f}"
    return sentence(
        f"{talker}RMC,{_hhmmss(fix.t_ms)},{status},{lat},{ns},{lon},{ew},"
        f"{knots},{course},{date},,,{mode}"
    )


def gga(fix: Fix, talker: str = "GP") -> str:
    """A GGA sentence for ``fix`` (geoid separation left empty)."""
    lat, ns = _coord(fix.lat, 2, "NS")
    lon, ew = _coord(fix.lon, 3, "EW")
    return sentence(
        f"{talker}GGA,{_hhmmss(fix.t_ms)},{lat},{ns},{lon},{ew},{fix.quality},"
        f"{fix.sats:02d},{fix.hdop:.1f},{fix.alt:.1f},M,,M,,"
    )


def epoch_sentences(fix: Fix, talker: str = "GP") -> list[str]:
    """What a receiver sends in one epoch, in the order u-blox uses: RMC, then GGA."""
    return [rmc(fix, talker), gga(fix, talker)]


def read_gpsfake_log(path: Path) -> Iterator[bytes]:
    """The raw lines of a gpsfake log after its ``#`` header, without line endings.

    Binary logs (e.g. SiRF) come out as the byte runs between newline bytes. Empty lines
    are skipped.
    """
    data = Path(path).read_bytes()
    in_header = True
    for line in data.split(b"\n"):
        if in_header and line.startswith(b"#"):
            continue
        in_header = False
        line = line.rstrip(b"\r")
        if line:
            yield line


def _epoch_key(line: bytes) -> bytes | None:
    start = line.rfind(b"$")
    if start < 0:
        return None
    fields = line[start + 1 :].split(b"*", 1)[0].split(b",")
    kind = fields[0][2:].decode("ascii", "replace")
    index = _TIME_FIELD.get(kind)
    if index is None or len(fields) <= index or not fields[index]:
        return None
    return fields[index]


def group_epochs(lines: Iterable[bytes]) -> list[list[bytes]]:
    """Cut raw lines into epochs: a new epoch starts when a sentence's UTC time changes.

    Lines without a time (GSV, GSA, garbage) stay with the epoch they follow. A log with
    no timed sentences (binary) comes out one line per epoch.
    """
    epochs: list[list[bytes]] = []
    current: list[bytes] = []
    current_key: bytes | None = None
    timed = False
    for line in lines:
        key = _epoch_key(line)
        if key is not None:
            timed = True
            if current_key is not None and key != current_key and current:
                epochs.append(current)
                current = []
            current_key = key
        current.append(line)
    if current:
        epochs.append(current)
    if not timed:
        return [[line] for epoch in epochs for line in epoch]
    return epochs
