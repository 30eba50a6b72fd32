"""GPS from gpsd over TCP (its JSON protocol): the thin I/O shell around the report assembler.

``GpsdCollector(host, port)`` connects to gpsd (default ``127.0.0.1:2947``), sends
``?WATCH={"enable":true,"json":true}``, splits what comes back into lines and feeds them to
:class:`~edge_agent.collectors.gpsd_json.GpsdReportAssembler`, which makes the same GPS
samples as the NMEA path (one per fix epoch, ``ts`` = ``gps``). gpsd may be fed by a
serial receiver, a USB one, or ``gpsfake`` replaying a log: same code path.

``read_available()`` returns the samples completed by what the socket has now (waiting at
most ``read_timeout``). While gpsd cannot be reached it reconnects by itself, no more often
than the backoff allows (``backoff_initial`` doubling up to ``backoff_max`` after each
failed attempt; reset by a successful one): each failed attempt raises
:class:`DeviceUnavailable` once, and calls between attempts return ``[]`` at once, so a
caller polling in a loop logs one warning per attempt, not one per poll. A connection
attempt blocks the caller for at most ``connect_timeout`` (gpsd is usually on the same
host, where a refused connection fails at once).

Latency: gpsd does not say when it has finished reporting an epoch, so an epoch is emitted
when the next one starts (or after ``idle_flush_s`` of silence): one receiver interval
after its fix, where the serial path emits within the same second. The agent anchors its
GPS clock on arrival, so with gpsd that clock runs up to one interval (1 s at 1 Hz) behind.

When gpsd goes away (restart, crash: the socket reaches end of file or fails) the held
epoch is released, the loss is counted in ``stats["disconnects"]`` and logged once, and the
collector reconnects and watches again. Silence is not a failure: a receiver without a
fix sends nothing, so a quiet socket only releases the held epoch after ``idle_flush_s``.

Bad input never stops it: a rejected line (malformed JSON, a huge line, a TPV with
impossible values) is logged at DEBUG and counted in ``stats`` (``bad_lines`` and
``bad:<reason>``, shared with the assembler's counters); an unknown report class is counted
as ``unknown_class``. A run of more than ``MAX_LINE_BYTES`` without a newline is dropped as
one ``too_long`` line, up to the next newline, without buffering it.

Concurrency: one thread uses a collector (the agent's main loop). ``stats`` is a plain
Counter: read it, do not write it.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import time
from collections import Counter

from edge_agent.collectors.base import Sample
from edge_agent.collectors.errors import DeviceUnavailable, ProtocolError
from edge_agent.collectors.gpsd_json import MAX_LINE_BYTES, WATCH_COMMAND, GpsdReportAssembler

__all__ = ["DEFAULT_GPSD_PORT", "GpsdCollector"]

log = logging.getLogger(__name__)

DEFAULT_GPSD_PORT = 2947
_RECV_BYTES = 65_536


class GpsdCollector:
    """Reads gpsd's JSON reports from ``host:port`` and yields GPS samples."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_GPSD_PORT,
        *,
        device: str | None = None,
        read_timeout: float = 0.2,
        connect_timeout: float = 2.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        idle_flush_s: float = 1.5,
    ) -> None:
        self.host = host
        self.port = port
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.idle_flush_s = idle_flush_s
        self.assembler = GpsdReportAssembler(device=device)
        self.stats: Counter[str] = self.assembler.stats
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._skipping = False  # inside an overlong line: drop bytes up to the next newline
        self._failures = 0
        self._next_attempt = 0.0
        self._last_data = time.monotonic()
        self._closed = False

    @property
    def where(self) -> str:
        return f"gpsd://{self.host}:{self.port}"

    @property
    def is_connected(self) -> bool:
        return self._sock is not None

    def open(self) -> None:
        """Connect and start watching now (ignoring backoff). Raises DeviceUnavailable."""
        if self._sock is not None:
            return
        sock: socket.socket | None = None
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
            sock.sendall(WATCH_COMMAND)
            sock.setblocking(False)
        except (OSError, ValueError) as err:
            if sock is not None:
                sock.close()
            self._failures += 1
            delay = min(self.backoff_max, self.backoff_initial * 2 ** (self._failures - 1))
            self._next_attempt = time.monotonic() + delay
            self.stats["connect_failures"] += 1
            raise DeviceUnavailable("connect_failed", self.where, str(err)) from None
        self._sock = sock
        self._failures = 0
        self._buffer.clear()
        self._skipping = False
        self._last_data = time.monotonic()
        self.stats["connects"] += 1
        log.info("%s: connected, watching", self.where)

    def read_available(self) -> list[Sample]:
        """Samples completed by the reports available now.

        Raises DeviceUnavailable when an attempt to (re)connect fails, or after close().
        """
        if self._closed:
            raise DeviceUnavailable("closed", self.where, "collector closed")
        if self._sock is None:
            if time.monotonic() < self._next_attempt:
                return []  # the failed attempt was reported; wait for the next one
            self.open()
        sock = self._sock
        assert sock is not None
        try:
            ready, _, _ = select.select([sock], [], [], self.read_timeout)
            chunk = sock.recv(_RECV_BYTES) if ready else None
        except BlockingIOError:
            chunk = None
        except OSError as err:
            return self._disconnected(str(err))
        if chunk is None:
            if time.monotonic() - self._last_data >= self.idle_flush_s:
                return self.assembler.flush()
            return []
        if not chunk:
            return self._disconnected("gpsd closed the connection")
        self._last_data = time.monotonic()
        self.stats["bytes"] += len(chunk)
        return self._consume(chunk)

    def close(self) -> None:
        """Stop and disconnect; later reads raise DeviceUnavailable."""
        self._closed = True
        self._close_socket()

    def __enter__(self) -> GpsdCollector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------

    def _consume(self, chunk: bytes) -> list[Sample]:
        out: list[Sample] = []
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                break
            piece = chunk[start:newline]
            start = newline + 1
            if self._skipping:
                self._skipping = False
                continue
            self._buffer += piece
            line = bytes(self._buffer).rstrip(b"\r")
            self._buffer.clear()
            out.extend(self._feed(line))
        if not self._skipping:
            self._buffer += chunk[start:]
            if len(self._buffer) > MAX_LINE_BYTES:
                self._too_long(len(self._buffer))
                self._buffer.clear()
                self._skipping = True
        return out

    def _feed(self, line: bytes) -> list[Sample]:
        if not line.strip():
            return []
        try:
            return self.assembler.feed(line)
        except ProtocolError as err:
            log.debug("%s: bad report (%s): %r", self.where, err.reason, err.evidence)
            return []

    def _too_long(self, size: int) -> None:
        self.stats["lines"] += 1
        self.stats["bad_lines"] += 1
        self.stats["bad:too_long"] += 1
        log.debug("%s: more than %d bytes without a newline: dropped up to the next newline",
                  self.where, size)

    def _disconnected(self, why: str) -> list[Sample]:
        self._close_socket()
        self.stats["disconnects"] += 1
        self._next_attempt = time.monotonic() + self.backoff_initial
        log.warning("%s: lost: %s; reconnecting", self.where, why)
        return self.assembler.reset()

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        self._buffer.clear()
        self._skipping = False
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
