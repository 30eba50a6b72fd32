"""Pure gpsd JSON parsing: report lines in, one GPS :class:`Sample` per fix epoch out.

No I/O here; :mod:`edge_agent.collectors.gps_gpsd` reads the socket and feeds lines in.

gpsd speaks JSON lines (https://gpsd.gitlab.io/gpsd/gpsd_json.html): after
``?WATCH={"enable":true,"json":true}`` it sends one object per line, each with a ``class``.
``TPV`` (time-position-velocity) carries the fix; ``SKY`` the satellites and DOPs; the
others (``VERSION``, ``DEVICES``, ``WATCH``, ``GST``, ``PPS``, ...) are counted and ignored.

What is accepted
    A line is at most :data:`MAX_LINE_BYTES`, UTF-8, one JSON object (no ``NaN`` or
    ``Infinity``, no nesting deeper than Python's parser takes) with a string ``class``.
    Anything else raises :class:`ProtocolError` with a ``reason`` (``too_long``,
    ``non_utf8``, ``bad_json``, ``not_object``, ``no_class``). A ``TPV`` whose fields are
    not what gpsd sends (a ``mode`` outside 0..3, a latitude of 91, a ``time`` that is not
    ISO 8601 UTC, a string where a number belongs) raises ``bad_tpv`` or ``bad_time``.
    A class gpsd does not document is counted as ``unknown_class`` and skipped; gpsd's own
    ``ERROR`` reports are counted as ``gpsd_error``. The assembler's state is unharmed by a
    rejected line.

When a sample is emitted
    gpsd reports an epoch several times as its sentences arrive (after GGA, after RMC, ...);
    its last report of an epoch is the complete one. So a TPV is held until a TPV of another
    time arrives (or :meth:`flush`, when the stream goes quiet or ends), and the held report
    becomes the sample. Reports without ``time`` (a position before the receiver has told
    the date) are counted as ``untimed``; an epoch whose last report has ``mode`` < 2, or a
    ``status`` of dead reckoning (5), time-only (7) or simulated (8), as ``no_fix``: only
    satellite fixes become GPS samples, as with NMEA. A late report for an epoch already
    emitted is counted as ``late`` and dropped, so each epoch gives one sample at most.

Sample values (the same keys as :class:`edge_agent.collectors.nmea.NmeaAssembler`'s)
    ``lat``, ``lon`` (degrees, 7 decimals), ``speed`` (m/s, 2 decimals; None if gpsd has
    none), ``course`` (gpsd's ``track``), ``fix`` (2 for DGPS or RTK — ``status`` 2, 3 or
    4 — else 1), ``alt`` (``altMSL``, else ``alt``: above mean sea level, as NMEA's GGA),
    ``sats`` and ``hdop`` from the latest ``SKY`` report (``uSat``, else the satellites
    marked ``used``); ``t`` is gpsd's ``time`` and ``ts`` is ``gps``.

Concurrency: an assembler holds per-stream state and is not thread-safe; use one per socket.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from edge_agent.collectors.base import Sample, SampleValue
from edge_agent.collectors.errors import ProtocolError

__all__ = [
    "KNOWN_CLASSES",
    "MAX_LINE_BYTES",
    "WATCH_COMMAND",
    "GpsdReportAssembler",
    "parse_report",
    "parse_time",
]

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 1024
"""Longest accepted report line. gpsd's largest (a SKY with every satellite) is ~10 KB."""

WATCH_COMMAND = b'?WATCH={"enable":true,"json":true}\n'

KNOWN_CLASSES = frozenset({
    "AIS", "ATT", "DEVICE", "DEVICES", "ERROR", "GST", "IMU", "OSC", "POLL", "PPS", "RAW",
    "RTCM2", "RTCM3", "SKY", "SUBFRAME", "TOFF", "TPV", "VERSION", "WATCH",
})
"""Report classes of gpsd's JSON protocol (3.x); anything else is ``unknown_class``."""

_NO_FIX_STATUS = frozenset({5, 7, 8})  # dead reckoning only, surveyed time, simulated
_DGPS_STATUS = frozenset({2, 3, 4})  # DGPS, RTK fixed, RTK float
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MAX_T_MS = 253_402_300_799_999


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_report(line: bytes) -> dict[str, Any]:
    """One gpsd report line (without its newline) as a dict with a string ``class``.

    Raises ProtocolError (``too_long``, ``non_utf8``, ``bad_json``, ``not_object``,
    ``no_class``).
    """
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError("too_long", line, f"{len(line)} bytes > {MAX_LINE_BYTES}")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("non_utf8", line) from None
    try:
        report = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise ProtocolError("bad_json", line, str(err)[:120]) from None
    if not isinstance(report, dict):
        raise ProtocolError("not_object", line, f"a JSON {type(report).__name__}")
    if not isinstance(report.get("class"), str):
        raise ProtocolError("no_class", line)
    return report


def parse_time(text: object, line: bytes = b"") -> int:
    """gpsd's ``time`` (ISO 8601 UTC, e.g. ``2017-01-10T00:09:41.000Z``) in ms since 1970.

    Raises ProtocolError ``bad_time``.
    """
    if not isinstance(text, str) or not text.endswith("Z") or "T" not in text:
        raise ProtocolError("bad_time", line, f"time {text!r}")
    try:
        when = dt.datetime.fromisoformat(text[:-1] + "+00:00")
    except ValueError:
        raise ProtocolError("bad_time", line, f"time {text!r}") from None
    t_ms = (when - _EPOCH) // dt.timedelta(milliseconds=1)
    if not 0 <= t_ms <= _MAX_T_MS:
        raise ProtocolError("bad_time", line, f"time {text!r} out of range")
    return int(t_ms)


@dataclass(frozen=True)
class _Tpv:
    t_ms: int
    mode: int
    status: int
    lat: float | None
    lon: float | None
    speed: float | None
    track: float | None
    alt: float | None


def _number(report: dict[str, Any], key: str, line: bytes, low: float = -math.inf,
            high: float = math.inf) -> float | None:
    value = report.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError("bad_tpv", line, f"{key} {value!r} is not a number")
    number = float(value)
    if not (math.isfinite(number) and low <= number <= high):
        raise ProtocolError("bad_tpv", line, f"{key} {value!r} out of range")
    return number


def _parse_tpv(report: dict[str, Any], line: bytes) -> _Tpv | None:
    """The fields we use, strictly checked; None for a report without ``time``."""
    mode = report.get("mode", 0)
    status = report.get("status", 1)
    for key, value, high in (("mode", mode, 3), ("status", status, 15)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
            raise ProtocolError("bad_tpv", line, f"{key} {value!r}")
    lat = _number(report, "lat", line, -90.0, 90.0)
    lon = _number(report, "lon", line, -180.0, 180.0)
    speed = _number(report, "speed", line, 0.0, 100_000.0)
    track = _number(report, "track", line, 0.0, 360.0)
    alt = _number(report, "altMSL", line)
    if alt is None:
        alt = _number(report, "alt", line)
    if "time" not in report:
        return None
    return _Tpv(parse_time(report["time"], line), mode, status, lat, lon, speed, track, alt)


class GpsdReportAssembler:
    """Turns gpsd's report lines into GPS samples, one per fix epoch (see the module doc).

    ``feed(line)`` returns the samples completed by that line (none or one) and raises
    ProtocolError for a rejected line. ``stats`` counts ``lines``, ``samples``, each report
    class (``class:TPV``, ...), and every rejection (``bad_lines``, ``bad:<reason>``).
    ``version`` is gpsd's release once its VERSION report was seen.
    """

    def __init__(self, *, device: str | None = None) -> None:
        self.device = device
        self.stats: Counter[str] = Counter()
        self.version: str | None = None
        self._pending: _Tpv | None = None
        self._last_emitted: int | None = None
        self._sats: int | None = None
        self._hdop: float | None = None

    def feed(self, line: bytes) -> list[Sample]:
        self.stats["lines"] += 1
        try:
            return self._feed(line)
        except ProtocolError as err:
            self.stats["bad_lines"] += 1
            self.stats[f"bad:{err.reason}"] += 1
            raise

    def flush(self) -> list[Sample]:
        """Release the held epoch (the stream went quiet, ended or was cut)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return []
        self._last_emitted = pending.t_ms
        if pending.mode < 2 or pending.status in _NO_FIX_STATUS:
            self.stats["no_fix"] += 1
            return []
        if pending.lat is None or pending.lon is None:
            self.stats["no_position"] += 1
            return []
        self.stats["samples"] += 1
        values: dict[str, SampleValue] = {
            "lat": round(pending.lat, 7),
            "lon": round(pending.lon, 7),
            "speed": None if pending.speed is None else round(pending.speed, 2),
            "course": pending.track,
            "fix": 2 if pending.status in _DGPS_STATUS else 1,
            "sats": self._sats,
            "hdop": self._hdop,
            "alt": pending.alt,
        }
        return [Sample(kind="gps", values=values, t_ms=pending.t_ms, time_source="gps")]

    def reset(self) -> list[Sample]:
        """A new connection: release the held epoch and forget the satellites."""
        out = self.flush()
        self._sats = self._hdop = None
        return out

    # -- internals ----------------------------------------------------------------------

    def _feed(self, line: bytes) -> list[Sample]:
        report = parse_report(line)
        cls = report["class"]
        if cls not in KNOWN_CLASSES:
            self.stats["unknown_class"] += 1
            log.debug("gpsd: unknown report class %r skipped", cls[:40])
            return []
        self.stats[f"class:{cls}"] += 1
        if self.device is not None and report.get("device", self.device) != self.device:
            self.stats["other_device"] += 1
            return []
        if cls == "TPV":
            return self._on_tpv(report, line)
        if cls == "SKY":
            self._on_sky(report)
        elif cls == "VERSION":
            release = report.get("release")
            self.version = release if isinstance(release, str) else None
        elif cls == "ERROR":
            self.stats["gpsd_error"] += 1
            log.warning("gpsd reports an error: %s", str(report.get("message", ""))[:200])
        return []

    def _on_tpv(self, report: dict[str, Any], line: bytes) -> list[Sample]:
        tpv = _parse_tpv(report, line)
        if tpv is None:
            self.stats["untimed"] += 1
            return []
        out: list[Sample] = []
        if self._pending is not None and self._pending.t_ms != tpv.t_ms:
            out.extend(self.flush())
        if self._pending is None and tpv.t_ms == self._last_emitted:
            self.stats["late"] += 1
            return out
        self._pending = tpv  # a later report of the same epoch replaces an earlier one
        return out

    def _on_sky(self, report: dict[str, Any]) -> None:
        used = report.get("uSat")
        if isinstance(used, bool) or not isinstance(used, int) or used < 0:
            satellites = report.get("satellites")
            used = (sum(1 for s in satellites if isinstance(s, dict) and s.get("used") is True)
                    if isinstance(satellites, list) else None)
        hdop = report.get("hdop")
        if used is not None:
            self._sats = used
        if (isinstance(hdop, int | float) and not isinstance(hdop, bool)
                and math.isfinite(hdop) and hdop >= 0):
            self._hdop = float(hdop)
