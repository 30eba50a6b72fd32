"""Pure NMEA 0183 parsing: raw receiver lines in, one GPS :class:`Sample` per fix epoch out.

No I/O here; :mod:`edge_agent.collectors.gps_serial` reads the port and feeds lines in.

What is accepted
    A line is checked before anything parses it: at most :data:`MAX_SENTENCE_CHARS`
    characters from ``$`` to the checksum, printable ASCII only, ``*HH`` checksum present
    and correct. Anything else raises :class:`SerialLineError` with a ``reason``.
    ``RMC`` and ``GGA`` from any talker (``GP``, ``GN``, ``GL``, ...) are decoded (with
    pynmea2, then every field is re-checked strictly); every other sentence (GSV, GSA,
    VTG, GLL, ZDA, proprietary ``$P...``) is checked and counted as ``ignored``.

When a sample is emitted
    One per fix epoch, keyed by the RMC's UTC date and time (the only sentence with a
    date). It carries the GGA of the same UTC time (fix quality, satellites, HDOP,
    altitude) when one was seen. Receivers order the two either way round, so an RMC whose
    GGA has not arrived yet is held until that GGA arrives or a sentence of another epoch
    shows the GGA is not coming (then it goes out without GGA fields). :meth:`flush`
    releases a held epoch at the end of a stream. A repeated RMC of the same epoch (e.g.
    ``GPRMC`` and ``GNRMC``) is counted as ``duplicate``.

    No sample for: RMC status ``V``; RMC mode indicator ``N`` (no fix), ``E`` (dead
    reckoning), ``M`` (manual) or ``S`` (simulator); GGA quality 0, 6, 7 or 8. These are
    counted as ``no_fix``. Only satellite fixes become GPS samples.

Receiver quirks seen in the real logs (tests/data/nmea/)
    - MT3339 emits 82-character GGA sentences, over NMEA's 80 (+CR LF): the limit here is 82
      characters excluding the line ending.
    - u-blox 8 log: binary noise and a sentence on one line: we resynchronise at the last
      ``$`` and count ``resync``.
    - GL-talker GGA (GLONASS only, fewer satellites) in the same epoch as a GP one
      (SiRFstarV): the GN or GP GGA wins.
    - Line endings CR LF, bare LF, or both within one log (MT3339).
    - Fractional seconds with 0, 2 or 3 digits; empty course when stationary (u-blox).
    - Dates from receivers with the GPS week-rollover bug: reported as the receiver says
      unless ``rollover_pivot_ms`` is given (then dates before it move forward by 1024 weeks,
      which is what gpsd does for these logs with a pivot of 2017-01-01).

Concurrency: an assembler holds per-stream state and is not thread-safe; use one per port.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from dataclasses import dataclass

import pynmea2

from edge_agent.collectors.base import Sample
from edge_agent.collectors.errors import SerialLineError

__all__ = [
    "GPS_WEEK_ROLLOVER_MS",
    "KNOT_MPS",
    "MAX_SENTENCE_CHARS",
    "NmeaAssembler",
    "check_sentence",
    "nmea_checksum",
]

MAX_SENTENCE_CHARS = 82
"""Longest accepted sentence, ``$`` to checksum, line ending excluded (see module doc)."""

KNOT_MPS = 1852.0 / 3600.0
GPS_WEEK_ROLLOVER_MS = 1024 * 7 * 86_400_000
_DAY_MS = 86_400_000

_TIME_RE = re.compile(r"^(\d{2})(\d{2})(\d{2})(?:\.(\d{1,6}))?$")
_DATE_RE = re.compile(r"^(\d{2})(\d{2})(\d{2})$")
_LAT_RE = re.compile(r"^(\d{1,2})(\d{2}(?:\.\d{1,10})?)$")
_LON_RE = re.compile(r"^(\d{1,3})(\d{2}(?:\.\d{1,10})?)$")
_NUM_RE = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)$")
_ADDRESS_RE = re.compile(r"^[A-Z][A-Z0-9]{1,9}$")
_HEX = frozenset(b"0123456789ABCDEFabcdef")

_NO_FIX_MODES = frozenset("NEMS")
_NO_FIX_QUALITIES = frozenset({0, 6, 7, 8})
_DGPS_QUALITIES = frozenset({2, 4, 5})
_TALKER_RANK = {"GN": 0, "GP": 1}


def nmea_checksum(body: str | bytes) -> int:
    """XOR of the bytes between ``$`` and ``*`` (pass exactly that part)."""
    data = body.encode("ascii") if isinstance(body, str) else body
    result = 0
    for byte in data:
        result ^= byte
    return result


def check_sentence(line: bytes | str) -> tuple[str, bool]:
    """Check one raw line; return ``(sentence, resynced)``.

    ``sentence`` runs from ``$`` to the two checksum digits, without line ending.
    ``resynced`` is true when bytes before the last ``$`` were dropped.
    Raises SerialLineError with reason ``non_ascii``, ``empty``, ``no_sentence_start``,
    ``too_long``, ``control_character``, ``missing_checksum``, ``malformed_checksum``,
    ``bad_checksum`` or ``bad_address``.
    """
    if isinstance(line, str):
        try:
            raw = line.encode("ascii")
        except UnicodeEncodeError:
            raise SerialLineError(
                "non_ascii", line.encode("utf-8", "replace"), "text line is not ASCII"
            ) from None
    else:
        raw = bytes(line)
    data = raw.strip(b" \t\r\n\x00")
    if not data:
        raise SerialLineError("empty", raw)
    start = data.rfind(b"$")
    if start < 0:
        raise SerialLineError("no_sentence_start", raw, "no '$' in line")
    sentence = data[start:]
    if len(sentence) > MAX_SENTENCE_CHARS:
        raise SerialLineError("too_long", raw, f"{len(sentence)} > {MAX_SENTENCE_CHARS}")
    for byte in sentence:
        if byte >= 0x80:
            raise SerialLineError("non_ascii", raw)
        if byte < 0x20 or byte == 0x7F:
            raise SerialLineError("control_character", raw)
    star = sentence.rfind(b"*")
    if star < 0:
        raise SerialLineError("missing_checksum", raw)
    digits = sentence[star + 1 :]
    if len(digits) != 2 or not set(digits) <= _HEX:
        raise SerialLineError("malformed_checksum", raw, f"checksum field {digits!r}")
    body = sentence[1:star]
    if nmea_checksum(body) != int(digits, 16):
        raise SerialLineError(
            "bad_checksum", raw, f"computed {nmea_checksum(body):02X}, line says {digits!r}"
        )
    if not _ADDRESS_RE.match(body.split(b",", 1)[0].decode("ascii")):
        raise SerialLineError("bad_address", raw)
    return sentence.decode("ascii"), start > 0


@dataclass(frozen=True)
class _Gga:
    tod_ms: int
    rank: int
    quality: int
    sats: int | None
    hdop: float | None
    alt: float | None


@dataclass(frozen=True)
class _Rmc:
    date: dt.date
    tod_ms: int
    lat: float
    lon: float
    speed: float
    course: float | None
    mode: str


class NmeaAssembler:
    """Turns a stream of raw NMEA lines into GPS samples, one per fix epoch.

    ``feed(line)`` returns the samples completed by that line (usually none or one) and
    raises SerialLineError for a rejected line; the assembler's state is unharmed by a
    rejected line, so the caller counts it and feeds the next. ``stats`` counts lines,
    samples and every rejection reason (``bad:<reason>``).
    """

    def __init__(self, *, rollover_pivot_ms: int | None = None) -> None:
        self.rollover_pivot_ms = rollover_pivot_ms
        self.stats: Counter[str] = Counter()
        self._pending: _Rmc | None = None
        self._gga: dict[int, _Gga] = {}
        self._last_epoch: tuple[dt.date, int] | None = None

    # -- public -------------------------------------------------------------------------

    def feed(self, line: bytes | str) -> list[Sample]:
        """Take one raw line; return the samples it completes. Raises SerialLineError."""
        self.stats["lines"] += 1
        try:
            return self._feed(line)
        except SerialLineError as err:
            self.stats["bad_lines"] += 1
            self.stats[f"bad:{err.reason}"] += 1
            raise

    def flush(self) -> list[Sample]:
        """Release a held epoch (end of stream, or the port went quiet)."""
        if self._pending is None:
            return []
        pending, self._pending = self._pending, None
        return [self._emit(pending, None)]

    # -- internals ----------------------------------------------------------------------

    def _feed(self, line: bytes | str) -> list[Sample]:
        sentence, resynced = check_sentence(line)
        if resynced:
            self.stats["resync"] += 1
        address = sentence[1:].split(",", 1)[0]
        kind = address[2:5] if len(address) == 5 and not address.startswith("P") else ""
        if kind not in ("RMC", "GGA"):
            self.stats["ignored"] += 1
            return []
        fields = _decode(sentence, raw=line)
        if kind == "GGA":
            return self._on_gga(_parse_gga(fields, address[:2], line))
        return self._on_rmc(fields, line)

    def _on_gga(self, gga: _Gga) -> list[Sample]:
        out = []
        if self._pending is not None and self._pending.tod_ms != gga.tod_ms:
            out.extend(self.flush())
        known = self._gga.get(gga.tod_ms)
        if known is None or gga.rank < known.rank:
            self._gga[gga.tod_ms] = gga
        while len(self._gga) > 4:
            del self._gga[next(iter(self._gga))]
        if self._pending is not None:
            pending, self._pending = self._pending, None
            out.extend(self._complete(pending))
        return out

    def _on_rmc(self, fields: dict[str, str], raw: bytes | str) -> list[Sample]:
        tod_ms = _parse_time(fields.get("timestamp", ""), raw)
        status = fields.get("status", "")
        if status not in ("A", "V"):
            raise SerialLineError("bad_status", _evidence(raw), f"RMC status {status!r}")
        out = []
        if self._pending is not None and self._pending.tod_ms != tod_ms:
            out.extend(self.flush())
        mode = fields.get("mode_indicator", "")
        if status == "V" or mode in _NO_FIX_MODES:
            self.stats["no_fix"] += 1
            self._gga.pop(tod_ms, None)
            return out
        rmc = _parse_rmc(fields, tod_ms, raw)
        epoch = (rmc.date, rmc.tod_ms)
        held = self._pending
        if epoch == self._last_epoch or (held and (held.date, held.tod_ms) == epoch):
            self.stats["duplicate"] += 1
            return out
        if held is not None:  # same time of day, other date: not the same epoch
            out.extend(self.flush())
        if rmc.tod_ms in self._gga:
            out.extend(self._complete(rmc))
        else:
            self._pending = rmc
        return out

    def _complete(self, rmc: _Rmc) -> list[Sample]:
        gga = self._gga.get(rmc.tod_ms)
        if gga is not None and gga.quality in _NO_FIX_QUALITIES:
            self.stats["no_fix"] += 1
            self._last_epoch = (rmc.date, rmc.tod_ms)
            return []
        return [self._emit(rmc, gga)]

    def _emit(self, rmc: _Rmc, gga: _Gga | None) -> Sample:
        if gga is not None and gga.quality not in _NO_FIX_QUALITIES:
            fix = 2 if gga.quality in _DGPS_QUALITIES else 1
        else:
            fix = 2 if rmc.mode == "D" else 1
        t_ms = (rmc.date - dt.date(1970, 1, 1)).days * _DAY_MS + rmc.tod_ms
        if self.rollover_pivot_ms is not None:
            while t_ms < self.rollover_pivot_ms:
                t_ms += GPS_WEEK_ROLLOVER_MS
        self._last_epoch = (rmc.date, rmc.tod_ms)
        self.stats["samples"] += 1
        values: dict[str, int | float | str | bool | None] = {
            "lat": round(rmc.lat, 7),
            "lon": round(rmc.lon, 7),
            "speed": round(rmc.speed, 2),
            "course": rmc.course,
            "fix": fix,
            "sats": gga.sats if gga else None,
            "hdop": gga.hdop if gga else None,
            "alt": gga.alt if gga else None,
        }
        return Sample(kind="gps", values=values, t_ms=t_ms, time_source="gps")


# -- field parsing (strict; every failure is a SerialLineError) -----------------------------


def _evidence(raw: bytes | str) -> bytes:
    return raw.encode("ascii", "replace") if isinstance(raw, str) else bytes(raw)


def _decode(sentence: str, raw: bytes | str) -> dict[str, str]:
    """pynmea2 splits and names the fields; values stay strings for the strict checks."""
    try:
        msg = pynmea2.parse(sentence, check=True)
        names = [spec[1] for spec in msg.fields]
        data = list(msg.data)
    except Exception as err:  # any failure of the third-party parser is one bad line
        raise SerialLineError("parse_error", _evidence(raw), str(err)) from None
    return {name: data[i].strip() if i < len(data) else "" for i, name in enumerate(names)}


def _parse_time(text: str, raw: bytes | str) -> int:
    match = _TIME_RE.match(text)
    if not match:
        raise SerialLineError("bad_time", _evidence(raw), f"time {text!r}")
    hh, mm, ss = int(match[1]), int(match[2]), int(match[3])
    leap = ss == 60 and hh == 23 and mm == 59
    if hh > 23 or mm > 59 or (ss > 59 and not leap):
        raise SerialLineError("bad_time", _evidence(raw), f"time {text!r}")
    ms = int((match[4] or "0").ljust(3, "0")[:3])
    return ((hh * 60 + mm) * 60 + ss) * 1000 + ms


def _parse_date(text: str, raw: bytes | str) -> dt.date:
    match = _DATE_RE.match(text)
    if not match:
        raise SerialLineError("bad_date", _evidence(raw), f"date {text!r}")
    day, month, yy = int(match[1]), int(match[2]), int(match[3])
    try:  # GPS dates start in 1980: two-digit years 80-99 are 19xx
        return dt.date(1900 + yy if yy >= 80 else 2000 + yy, month, day)
    except ValueError:
        raise SerialLineError("bad_date", _evidence(raw), f"date {text!r}") from None


def _parse_coord(value: str, hemi: str, axis: str, raw: bytes | str) -> float:
    is_lat = axis == "lat"
    match = (_LAT_RE if is_lat else _LON_RE).match(value)
    hemis = ("N", "S") if is_lat else ("E", "W")
    if not match or hemi not in hemis:
        raise SerialLineError(f"bad_{axis}", _evidence(raw), f"{axis} {value!r} {hemi!r}")
    degrees, minutes = int(match[1]), float(match[2])
    result = degrees + minutes / 60.0
    if minutes >= 60.0 or result > (90.0 if is_lat else 180.0):
        raise SerialLineError(f"bad_{axis}", _evidence(raw), f"{axis} {value!r} out of range")
    return -result if hemi == hemis[1] else result


def _parse_number(text: str, reason: str, raw: bytes | str, *, optional: bool) -> float | None:
    if not text and optional:
        return None
    if not _NUM_RE.match(text):
        raise SerialLineError(reason, _evidence(raw), f"{text!r} is not a number")
    return float(text)


def _parse_rmc(fields: dict[str, str], tod_ms: int, raw: bytes | str) -> _Rmc:
    date = _parse_date(fields.get("datestamp", ""), raw)
    lat = _parse_coord(fields.get("lat", ""), fields.get("lat_dir", ""), "lat", raw)
    lon = _parse_coord(fields.get("lon", ""), fields.get("lon_dir", ""), "lon", raw)
    knots = _parse_number(fields.get("spd_over_grnd", ""), "bad_speed", raw, optional=False)
    assert knots is not None
    if knots < 0:
        raise SerialLineError("bad_speed", _evidence(raw), "negative speed")
    course = _parse_number(fields.get("true_course", ""), "bad_course", raw, optional=True)
    if course is not None and not 0.0 <= course <= 360.0:
        raise SerialLineError("bad_course", _evidence(raw), f"course {course}")
    return _Rmc(
        date=date,
        tod_ms=tod_ms,
        lat=lat,
        lon=lon,
        speed=knots * KNOT_MPS,
        course=course,
        mode=fields.get("mode_indicator", ""),
    )


def _parse_gga(fields: dict[str, str], talker: str, raw: bytes | str) -> _Gga:
    tod_ms = _parse_time(fields.get("timestamp", ""), raw)
    quality_text = fields.get("gps_qual", "")
    if not quality_text.isdigit() or int(quality_text) > 8:
        raise SerialLineError("bad_quality", _evidence(raw), f"GGA quality {quality_text!r}")
    quality = int(quality_text)
    if quality not in _NO_FIX_QUALITIES:  # a fix must carry a position that parses
        _parse_coord(fields.get("lat", ""), fields.get("lat_dir", ""), "lat", raw)
        _parse_coord(fields.get("lon", ""), fields.get("lon_dir", ""), "lon", raw)
    sats_text = fields.get("num_sats", "")
    if sats_text and not sats_text.isdigit():
        raise SerialLineError("bad_sats", _evidence(raw), f"satellites {sats_text!r}")
    hdop = _parse_number(fields.get("horizontal_dil", ""), "bad_hdop", raw, optional=True)
    if hdop is not None and hdop < 0:
        raise SerialLineError("bad_hdop", _evidence(raw), f"hdop {hdop}")
    alt = _parse_number(fields.get("altitude", ""), "bad_alt", raw, optional=True)
    return _Gga(
        tod_ms=tod_ms,
        rank=_TALKER_RANK.get(talker, 2),
        quality=quality,
        sats=int(sats_text) if sats_text else None,
        hdop=hdop,
        alt=alt,
    )
