"""`trustfleet nmea-decode FILE`: a field engineer's check of a GPS receiver's output.

Reads an NMEA 0183 log (a gpsd test log or a raw capture; lines starting with ``#`` are
comments and skipped; ``-`` reads standard input) through the agent's own decoder
(edge_agent.collectors.nmea.NmeaAssembler, the code a truck runs) and prints one JSON
object per fix per line, like gpsd's TPV reports:

    {"time": "2017-01-10T00:09:41.000Z", "lat": 44.0688978, "lon": -121.3142713,
     "alt": 1144.8, "speed": 0.015, "track": null, "mode": 3}

``time`` ISO 8601 UTC with milliseconds; ``lat``/``lon`` degrees; ``alt`` metres above
mean sea level (null without GGA); ``speed`` m/s; ``track`` degrees true (null when the
receiver leaves it empty); ``mode`` 3 (3D: the epoch's GGA has an altitude) or 2 (2D: no
altitude, or RMC only). Epochs without a fix (mode 1: RMC status V, GGA quality 0) print
no line; the summary on stderr counts them with the rejected lines by reason.
``--rollover-pivot 2017-01-01`` moves dates of receivers with the GPS week-rollover bug
forward by 1024 weeks, as gpsd does. Exit 0 when the file was read, 1 when it could not be.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from edge_agent.collectors.base import Sample
from edge_agent.collectors.errors import SerialLineError
from edge_agent.collectors.nmea import NmeaAssembler

__all__ = ["NmeaDecoder", "fix_record", "register"]


def fix_record(sample: Sample) -> dict[str, Any]:
    """One GPS sample as a TPV-like record."""
    v = sample.values
    when = dt.datetime.fromtimestamp(sample.t_ms / 1000, dt.UTC)
    return {"time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{sample.t_ms % 1000:03d}Z",
            "lat": v["lat"], "lon": v["lon"], "alt": v.get("alt"), "speed": v["speed"],
            "track": v.get("course"), "mode": 3 if v.get("alt") is not None else 2}


class NmeaDecoder:
    """Raw NMEA lines in, TPV-like fix records out; ``stats`` counts lines and rejections."""

    def __init__(self, rollover_pivot_ms: int | None = None) -> None:
        self.assembler = NmeaAssembler(rollover_pivot_ms=rollover_pivot_ms)
        self.stats = self.assembler.stats

    def records(self, lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
        for line in lines:
            if line.startswith(b"#") or not line.strip():
                continue
            try:
                samples = self.assembler.feed(line.rstrip(b"\r"))
            except SerialLineError:
                continue  # counted in stats
            yield from (fix_record(s) for s in samples)
        yield from (fix_record(s) for s in self.assembler.flush())


def _read(path: str) -> list[bytes]:
    data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    return data.split(b"\n")


def _pivot(text: str) -> int:
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a date like 2017-01-01") from None
    return int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() * 1000)


def _run(args: argparse.Namespace) -> int:
    try:
        lines = _read(args.file)
    except OSError as exc:
        print(f"trustfleet nmea-decode: {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    decoder = NmeaDecoder(args.rollover_pivot)
    fixes = 0
    try:
        for record in decoder.records(lines):
            print(json.dumps(record))
            fixes += 1
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    stats = decoder.stats
    bad = {k[4:]: n for k, n in sorted(stats.items()) if k.startswith("bad:")}
    detail = ", ".join(f"{reason} {n}" for reason, n in bad.items())
    print(f"nmea-decode: {fixes} fixes from {stats.get('lines', 0)} lines; "
          f"{stats.get('bad_lines', 0)} rejected{f' ({detail})' if detail else ''}; "
          f"{stats.get('no_fix', 0)} epochs without a fix", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("nmea-decode", help="decode an NMEA log: one JSON fix per line",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("file", help="NMEA log (gpsd test log or capture), or - for stdin")
    p.add_argument("--rollover-pivot", type=_pivot, default=None, metavar="DATE",
                   help="move receiver dates before DATE forward by 1024 GPS weeks")
    p.set_defaults(func=_run)
