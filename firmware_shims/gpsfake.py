"""gpsd fed by ``gpsfake``: the real gpsd daemon, reading a receiver log through a pty.

``GpsfakeShim(log, port=P)`` runs gpsd's own test harness (``gpsfake``, Debian package
``gpsd-clients``), which starts a private ``gpsd`` listening on ``127.0.0.1:P`` and writes
the log into a pseudo-terminal gpsd reads as its receiver. A client (the agent's
``GpsdCollector``) then talks to a real gpsd, exactly as on a truck with a USB receiver.

- ``cycle``: seconds between log sentences (gpsfake ``-c``); the epochs' own timestamps are
  the receiver's, so speeding up changes no sample.
- ``loop``: replay the log forever (the default). gpsd only opens its receiver once a client
  watches, so a client joins the replay somewhere in the log: looping lets it see every
  epoch. ``loop=False`` plays it once (gpsfake ``-1``).

gpsfake and its gpsd run in a process group of their own; ``stop()`` ends that group
(SIGTERM, then SIGKILL after ``timeout``), so no gpsd is left behind on the port. Stopping and
starting a shim on the same port is gpsd going away and coming back.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

from trustfleet.procs import free_port, port_open

__all__ = ["GpsfakeShim", "gpsfake_binary"]


def gpsfake_binary() -> str | None:
    """Path of gpsfake, or None when it is not installed (scripts/bootstrap.sh installs it)."""
    return shutil.which("gpsfake") or (
        "/usr/bin/gpsfake" if Path("/usr/bin/gpsfake").exists() else None)


class GpsfakeShim:
    """A real gpsd on a loopback port, its receiver a replayed log."""

    def __init__(self, log: Path, *, port: int | None = None, cycle: float = 0.01,
                 loop: bool = True, output: Path | None = None) -> None:
        if cycle < 0:
            raise ValueError("cycle must be >= 0")
        self.log = Path(log)
        self.port = port if port is not None else free_port()
        self.cycle = cycle
        self.loop = loop
        self.output = output
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 20.0) -> GpsfakeShim:
        """Start gpsfake and wait until its gpsd accepts connections.

        Raises FileNotFoundError (no gpsfake, no log), RuntimeError (it exited) or
        TimeoutError.
        """
        binary = gpsfake_binary()
        if binary is None:
            raise FileNotFoundError("gpsfake is not installed (Debian package gpsd-clients; "
                                    "scripts/bootstrap.sh installs it)")
        if not self.log.is_file():
            raise FileNotFoundError(f"no log file {self.log}")
        argv = [binary, "-q", "-P", str(self.port), "-c", f"{self.cycle:g}"]
        if not self.loop:
            argv.append("-1")
        argv.append(str(self.log))
        out = self.output.open("ab") if self.output is not None else None
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=out or subprocess.DEVNULL,
                                         stderr=out or subprocess.DEVNULL,
                                         start_new_session=True)
        finally:
            if out is not None:
                out.close()
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"gpsfake exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"gpsd from gpsfake not listening on {self.port}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """End gpsfake and its gpsd (the whole process group)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
                if sig == signal.SIGTERM:  # its gpsd may outlive it for a moment
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                break
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> GpsfakeShim:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
