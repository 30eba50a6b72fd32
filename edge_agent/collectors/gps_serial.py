"""GPS over a serial port (NMEA 0183): the thin I/O shell around :class:`NmeaAssembler`.

``SerialGpsCollector(port)`` opens the port with pyserial (a real UART, a USB receiver or
the pty of ``firmware_shims.nmea_pty``: same code path), splits the byte stream into
lines, and feeds them to the assembler. Two ways to use it:

- ``read_available()`` returns the samples completed by what the port has now (waiting
  at most ``read_timeout``). While the port is missing it reopens by itself, no more often
  than the backoff allows (``backoff_initial`` doubling up to ``backoff_max`` after each
  failed open; reset by a successful open): each failed attempt raises
  :class:`DeviceUnavailable` once, and calls between attempts return ``[]`` at once, so a
  caller polling in a loop logs one warning per attempt, not one per poll.
- ``samples()`` is a blocking generator over the same, which waits out the backoff itself
  and ends when ``close()`` is called (from any thread).

Bad input never stops it: a rejected line (bad checksum, garbage, overlong run of bytes
without a newline) is logged at DEBUG and counted in ``stats`` (``bad_lines`` and
``bad:<reason>``, shared with the assembler's counters), then the next line is read. A port
that vanishes (USB unplugged, pty closed) is closed, counted in ``stats["disconnects"]``,
and reopened later; the held epoch is released first so no fix is lost.

Concurrency: one thread reads. ``close()`` may come from another thread while that thread
is inside ``samples()`` (it cancels the pending read); with ``read_available()`` call it
from the reading thread. ``stats`` is a plain Counter: read it, do not write it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator

import serial

from edge_agent.collectors.base import Sample
from edge_agent.collectors.errors import DeviceUnavailable, SerialLineError
from edge_agent.collectors.nmea import MAX_SENTENCE_CHARS, NmeaAssembler

__all__ = ["SerialGpsCollector"]

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 4 * MAX_SENTENCE_CHARS
"""A run of bytes without newline longer than this is discarded as one ``too_long`` line."""


class SerialGpsCollector:
    """Reads NMEA from ``port`` and yields GPS samples."""

    def __init__(
        self,
        port: str,
        baudrate: int = 9600,
        *,
        read_timeout: float = 0.2,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        idle_flush_s: float = 1.5,
        rollover_pivot_ms: int | None = None,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.read_timeout = read_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.idle_flush_s = idle_flush_s
        self.assembler = NmeaAssembler(rollover_pivot_ms=rollover_pivot_ms)
        self.stats: Counter[str] = self.assembler.stats
        self._serial: serial.Serial | None = None
        self._buffer = bytearray()
        self._failures = 0
        self._next_attempt = 0.0
        self._last_data = time.monotonic()
        self._closed = threading.Event()
        self._iterating = False

    # -- public -------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def open(self) -> None:
        """Open the port now (ignoring backoff). Raises DeviceUnavailable."""
        if self._serial is not None:
            return
        try:
            self._serial = serial.Serial(self.port, self.baudrate, timeout=self.read_timeout)
        except (serial.SerialException, OSError, ValueError) as err:
            self._failures += 1
            delay = min(self.backoff_max, self.backoff_initial * 2 ** (self._failures - 1))
            self._next_attempt = time.monotonic() + delay
            self.stats["open_failures"] += 1
            raise DeviceUnavailable("open_failed", self.port, str(err)) from None
        self._failures = 0
        self._buffer.clear()
        self._last_data = time.monotonic()
        self.stats["opens"] += 1
        log.info("gps port %s open", self.port)

    def read_available(self) -> list[Sample]:
        """Samples completed by the bytes available now.

        Raises DeviceUnavailable when an attempt to (re)open the port fails, or after close().
        """
        if self._closed.is_set():
            raise DeviceUnavailable("closed", self.port, "collector closed")
        if self._serial is None:
            if time.monotonic() < self._next_attempt:
                return []  # the failed attempt was reported; wait for the next one
            self.open()
        assert self._serial is not None
        try:
            chunk = self._serial.read(self._serial.in_waiting or 1)
        except (serial.SerialException, OSError) as err:
            return self._disconnected(err)
        if not chunk:
            if time.monotonic() - self._last_data >= self.idle_flush_s:
                return self.assembler.flush()
            return []
        self._last_data = time.monotonic()
        self.stats["bytes"] += len(chunk)
        return self._consume(chunk)

    def samples(self) -> Iterator[Sample]:
        """Blocking stream of samples; survives the port coming and going; ends on close()."""
        self._iterating = True
        try:
            while not self._closed.is_set():
                wait = self._next_attempt - time.monotonic()
                if self._serial is None and wait > 0:
                    self._closed.wait(wait)
                    continue
                try:
                    batch = self.read_available()
                except DeviceUnavailable:
                    continue
                yield from batch
        finally:
            self._iterating = False
            self._close_port()

    def close(self) -> None:
        """Stop: ends samples() within ``read_timeout``; closes the port."""
        self._closed.set()
        port = self._serial
        if self._iterating and port is not None:
            with contextlib.suppress(Exception):
                port.cancel_read()
        else:
            self._close_port()

    def __enter__(self) -> SerialGpsCollector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------

    def _consume(self, chunk: bytes) -> list[Sample]:
        out: list[Sample] = []
        self._buffer += chunk
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                break
            line = bytes(self._buffer[:newline])
            del self._buffer[: newline + 1]
            out.extend(self._feed(line))
        if len(self._buffer) > MAX_LINE_BYTES:
            line = bytes(self._buffer)
            self._buffer.clear()
            self.stats["lines"] += 1
            self.stats["bad_lines"] += 1
            self.stats["bad:too_long"] += 1
            log.debug("gps %s: %d bytes without newline discarded", self.port, len(line))
        return out

    def _feed(self, line: bytes) -> list[Sample]:
        if not line.strip():
            return []  # blank lines between CR and LF variants are not worth counting
        try:
            return self.assembler.feed(line)
        except SerialLineError as err:
            log.debug("gps %s: bad line (%s): %r", self.port, err.reason, err.line)
            return []

    def _disconnected(self, err: BaseException) -> list[Sample]:
        self._close_port()
        if self._closed.is_set():
            return self.assembler.flush()
        self.stats["disconnects"] += 1
        self._next_attempt = time.monotonic() + self.backoff_initial
        log.warning("gps port %s lost: %s", self.port, err)
        return self.assembler.flush()

    def _close_port(self) -> None:
        port, self._serial = self._serial, None
        self._buffer.clear()
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()
