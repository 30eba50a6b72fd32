"""GpsdCollector against a fake gpsd on a loopback socket that sends what a real one never should.

The fake speaks gpsd's framing (VERSION on connect, waits for ``?WATCH``, then JSON lines)
and interleaves malformed JSON, unknown classes, a megabyte-long line, binary garbage and
lines cut by a dropped connection with valid TPV reports. Every bad line is counted and
logged; the valid epochs all come out; nothing raises but the documented DeviceUnavailable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from edge_agent.collectors.base import Sample
from edge_agent.collectors.errors import DeviceUnavailable
from edge_agent.collectors.gps_gpsd import GpsdCollector

VERSION = b'{"class":"VERSION","release":"3.22","rev":"3.22","proto_major":3,"proto_minor":14}\n'
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def tpv(second: int) -> bytes:
    return json.dumps({"class": "TPV", "mode": 3, "time": f"2026-01-01T00:00:{second:02d}Z",
                       "lat": 51.9 + second / 1000, "lon": 4.1, "speed": 1.0,
                       "track": 10.0, "altMSL": 2.0}).encode() + b"\n"


class FakeGpsd:
    """Serves one script (a list of byte chunks) per accepted connection, then hangs up."""

    def __init__(self, scripts: list[list[bytes]]) -> None:
        self.scripts = scripts
        self.watch_lines: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeGpsd:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.close()
        self._thread.join(5)

    def _serve(self) -> None:
        for script in self.scripts:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(VERSION)
                conn.settimeout(5)
                request = b""
                with contextlib.suppress(OSError):
                    while not request.endswith(b"\n"):
                        chunk = conn.recv(100)
                        if not chunk:
                            break
                        request += chunk
                self.watch_lines.append(request)
                for chunk in script:
                    with contextlib.suppress(OSError):
                        conn.sendall(chunk)
                    time.sleep(0.01)


def read_until(collector: GpsdCollector, count: int, timeout: float = 10.0) -> list[Sample]:
    samples: list[Sample] = []
    deadline = time.monotonic() + timeout
    while len(samples) < count and time.monotonic() < deadline:
        with contextlib.suppress(DeviceUnavailable):
            samples.extend(collector.read_available())
    return samples


@pytest.fixture
def collector() -> Iterator[list[GpsdCollector]]:
    made: list[GpsdCollector] = []
    yield made
    for c in made:
        c.close()


def test_garbage_between_reports_is_counted_and_the_good_epochs_come_through(
        collector: list[GpsdCollector], caplog: pytest.LogCaptureFixture) -> None:
    script = [
        tpv(1),
        b'{"class":"TPV","mode":3,"time":\n',  # cut JSON
        b'{"class":"SATELLITE_PHONE","hello":1}\n',  # a class gpsd does not have
        b"\x00\xff\xfe binary noise at the wrong baud rate \x81\n",
        tpv(2),
        b"x" * 1_000_000,  # a megabyte without a newline ...
        b"y" * 100 + b"\n",  # ... ended much later
        b'{"class":"TPV","mode":3,"time":"2026-01-01T00:00:03Z","lat":"north","lon":4}\n',
        b'{"class":"TPV","lat":NaN}\n',
        b"[" * 40_000 + b"]" * 40_000 + b"\n",  # too long and too deep
        b"[1,2,3]\n",
        b"\n\r\n",  # empty lines are not worth counting
        tpv(3),
        tpv(4)[:20] + tpv(4)[20:],  # split over two sends
        b'{"class":"ERROR","message":"unrecognized request"}\n',
        tpv(5),
    ]
    with FakeGpsd([script]) as fake, caplog.at_level(logging.DEBUG):
        c = GpsdCollector("127.0.0.1", fake.port, read_timeout=0.05, idle_flush_s=0.3)
        collector.append(c)
        samples = read_until(c, 5)
    assert [s.t_ms for s in samples] == [T0 + k * 1000 for k in range(1, 6)]
    assert fake.watch_lines == [b'?WATCH={"enable":true,"json":true}\n']
    stats = c.stats
    assert stats["bad:bad_json"] == 2  # cut JSON, NaN
    assert stats["bad:non_utf8"] == 1  # binary noise
    assert stats["bad:too_long"] == 2  # the megabyte, and the 80 kB nested array
    assert stats["bad:bad_tpv"] == 1 and stats["bad:not_object"] == 1
    assert stats["unknown_class"] == 1 and stats["gpsd_error"] == 1
    assert stats["bad_lines"] == 7
    assert "bad report (bad_tpv)" in caplog.text and "gpsd reports an error" in caplog.text


def test_a_fake_gpsd_that_hangs_up_mid_line_is_reconnected(
        collector: list[GpsdCollector]) -> None:
    first = [tpv(1), tpv(2), b'{"class":"TPV","mode":3,"ti']  # cut by the hang-up
    second = [tpv(3), tpv(4)]
    with FakeGpsd([first, second]) as fake:
        c = GpsdCollector("127.0.0.1", fake.port, read_timeout=0.05, idle_flush_s=0.3,
                          backoff_initial=0.05)
        collector.append(c)
        samples = read_until(c, 4)
    assert [s.t_ms for s in samples] == [T0 + k * 1000 for k in range(1, 5)]
    assert c.stats["disconnects"] >= 1 and c.stats["connects"] == 2
    assert c.stats.get("bad_lines", 0) == 0  # the cut line was dropped with the connection
    assert len(fake.watch_lines) == 2  # watching again after the reconnect


def test_a_server_that_is_not_gpsd_costs_only_counted_lines(
        collector: list[GpsdCollector]) -> None:
    http = [b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"]
    with FakeGpsd([http]) as fake:
        c = GpsdCollector("127.0.0.1", fake.port, read_timeout=0.05)
        collector.append(c)
        deadline = time.monotonic() + 5
        while c.stats["disconnects"] == 0 and time.monotonic() < deadline:
            with contextlib.suppress(DeviceUnavailable):
                assert c.read_available() == []
    assert c.stats["bad:bad_json"] == 2  # the status line and the header; blank lines skipped
    assert c.stats["disconnects"] == 1
