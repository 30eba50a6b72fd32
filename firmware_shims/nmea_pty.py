"""A GPS receiver on a pseudo-terminal: the agent opens the slave side like a serial port.

:class:`NmeaPtyShim` opens a pty pair, puts the slave in raw mode (no echo, no line
editing, no CR/LF translation: bytes pass as on a UART), optionally points a symlink such
as ``DIR/gps.tty`` at the slave device, and a background thread writes one receiver epoch
every ``interval / speedup`` seconds. Sources:

- :meth:`NmeaPtyShim.synthetic`: truck ``index`` driving its loop (firmware_shims.route),
  one RMC + GGA per epoch, device time stepping by ``interval`` seconds;
- :meth:`NmeaPtyShim.replay`: a gpsfake log's raw lines, epoch by epoch, looping.

Like a UART, the shim never waits for a reader: the master is non-blocking, and when the
pty's buffer is full because nobody reads, the unread input is discarded (an overrun,
counted in ``stats["overruns"]``) and writing goes on. A reader that closes and reopens the
port sees fresh data (pyserial also flushes its input when it opens a port).
Bytes the reader writes to the port (receiver configuration) are read and dropped.

``inject(data)`` sends raw bytes (garbage, a corrupt sentence) before the next epoch.
Thread-safety: ``inject``, ``stats`` and ``stop`` may be called from any thread.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import termios
import threading
import time
import tty
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

from firmware_shims.nmea_gen import Fix, epoch_sentences, group_epochs, read_gpsfake_log
from firmware_shims.route import Route, route_for_truck

__all__ = ["NmeaPtyShim", "replay_epochs", "synthetic_epochs"]

Epoch = Sequence[bytes]


def synthetic_epochs(index: int, *, interval: float, start_ms: int) -> Iterator[list[bytes]]:
    """Endless epochs of truck ``index``: RMC + GGA lines (CR LF terminated).

    Epoch ``k`` is at device time ``start_ms + k * interval``. Raises ValueError at once for
    a bad index.
    """
    route = route_for_truck(index)
    step_ms = max(1, round(interval * 1000))
    return _synthetic(route, step_ms, start_ms)


def _synthetic(route: Route, step_ms: int, start_ms: int) -> Iterator[list[bytes]]:
    for k in itertools.count():
        t_ms = start_ms + k * step_ms
        point = route.at(t_ms / 1000.0)
        fix = Fix(
            t_ms=t_ms,
            lat=point.lat,
            lon=point.lon,
            speed=point.speed,
            course=point.course,
            sats=8 + (k // 30) % 4,
            hdop=0.9,
            alt=12.0,
        )
        yield [s.encode("ascii") + b"\r\n" for s in epoch_sentences(fix)]


def replay_epochs(log: Path, *, loop: bool = True) -> Iterator[list[bytes]]:
    """Epochs of a gpsfake log, lines CR LF terminated; repeats forever when ``loop``.

    Reads the file at once: raises OSError or ValueError (no data) here, not later.
    """
    epochs = group_epochs(read_gpsfake_log(log))
    if not epochs:
        raise ValueError(f"{log}: no data after the header")
    return _replay(epochs, loop)


def _replay(epochs: list[list[bytes]], loop: bool) -> Iterator[list[bytes]]:
    while True:
        for epoch in epochs:
            yield [line + b"\r\n" for line in epoch]
        if not loop:
            return


class NmeaPtyShim:
    """A pty that speaks NMEA. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        epochs: Iterable[Epoch],
        *,
        interval: float = 1.0,
        speedup: float = 1.0,
        link: Path | None = None,
    ) -> None:
        if interval <= 0 or speedup <= 0:
            raise ValueError("interval and speedup must be positive")
        self.period_s = interval / speedup
        self.link = Path(link) if link is not None else None
        self.stats: Counter[str] = Counter()
        self._epochs = iter(epochs)
        self._inject: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._master = -1
        self._slave = -1
        self.device_path = ""

    @classmethod
    def synthetic(
        cls,
        index: int = 0,
        *,
        interval: float = 1.0,
        speedup: float = 1.0,
        start_ms: int | None = None,
        link: Path | None = None,
    ) -> NmeaPtyShim:
        """Truck ``index`` on its route; device time starts at ``start_ms`` (default: now)."""
        if start_ms is None:
            step = max(1, round(interval * 1000))
            start_ms = time.time_ns() // 1_000_000 // step * step
        epochs = synthetic_epochs(index, interval=interval, start_ms=start_ms)
        return cls(epochs, interval=interval, speedup=speedup, link=link)

    @classmethod
    def replay(
        cls,
        log: Path,
        *,
        interval: float = 1.0,
        speedup: float = 1.0,
        loop: bool = True,
        link: Path | None = None,
    ) -> NmeaPtyShim:
        """Replay a gpsfake log, one receiver epoch per ``interval`` (looping by default)."""
        return cls(replay_epochs(log, loop=loop), interval=interval, speedup=speedup, link=link)

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def path(self) -> str:
        """What a reader opens: the symlink if one was asked for, else the slave device."""
        return str(self.link) if self.link is not None else self.device_path

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> NmeaPtyShim:
        if self._thread is not None:
            raise RuntimeError("shim already started")
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        attrs = termios.tcgetattr(self._slave)
        attrs[4] = attrs[5] = termios.B9600
        termios.tcsetattr(self._slave, termios.TCSANOW, attrs)
        os.set_blocking(self._master, False)
        self.device_path = os.ttyname(self._slave)
        if self.link is not None:
            self.link.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.link.with_name(f".{self.link.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self.device_path)
            os.replace(tmp, self.link)
        self._thread = threading.Thread(target=self._run, name="nmea-pty-shim", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop writing, remove the symlink, close the pty (readers see a hang-up)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.link is not None and self.link.is_symlink():
            with contextlib.suppress(OSError):
                if os.readlink(self.link) == self.device_path:
                    self.link.unlink()
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1

    def __enter__(self) -> NmeaPtyShim:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def inject(self, data: bytes) -> None:
        """Send ``data`` as is, ahead of the next epoch (for garbage and fault tests)."""
        with self._lock:
            self._inject.append(bytes(data))

    # -- writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        deadline = time.monotonic()
        while not self._stop.is_set():
            epoch = next(self._epochs, None)
            if epoch is None:
                self.stats["source_exhausted"] += 1
                break
            with self._lock:
                injected, self._inject = self._inject, []
            self._write(b"".join(injected) + b"".join(epoch))
            self.stats["epochs"] += 1
            self._drain_input()
            deadline += self.period_s
            delay = deadline - time.monotonic()
            if delay < -self.period_s:  # fell behind (suspended?): do not burst to catch up
                deadline = time.monotonic()
                delay = 0.0
            self._stop.wait(max(0.0, delay))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        overrun = False
        while view:
            try:
                written = os.write(self._master, view)
            except BlockingIOError:
                if overrun:  # still full after discarding: drop the rest of this epoch
                    self.stats["dropped_bytes"] += len(view)
                    return
                overrun = True
                self.stats["overruns"] += 1
                termios.tcflush(self._slave, termios.TCIFLUSH)
                continue
            except OSError:
                self.stats["write_errors"] += 1
                return
            self.stats["bytes"] += written
            view = view[written:]

    def _drain_input(self) -> None:
        while select.select([self._master], [], [], 0)[0]:
            try:
                if not os.read(self._master, 4096):
                    return
            except OSError:
                return
            self.stats["input_drained"] += 1
