"""Shock from an ADXL345 accelerometer on I2C (smbus2): peak g over a window.

The collector talks to the chip through the small interface smbus2's ``SMBus`` offers
(:class:`I2cBus`: ``read_byte_data``, ``write_byte_data``, ``read_i2c_block_data``,
``close``), so a test can hand it a register-map shim instead of ``/dev/i2c-N``.

Set-up (on first read, and again after an I2C error): DEVID (0x00) must read 0xE5;
BW_RATE (0x2C) = 0x0A (100 Hz), DATA_FORMAT (0x31) = 0x0B (full resolution, +-16 g, 3.9 mg
per LSB), FIFO_CTL (0x38) = 0x80 (stream mode: the chip keeps the last 32 samples),
POWER_CTL (0x2D) = 0x08 (measure). Each read drains the FIFO (FIFO_STATUS 0x39 says how
many entries; each is 6 bytes from DATAX0 0x32, little-endian signed x, y, z).

Each window of ``window_s`` (on the agent's clock) reduces to its peak magnitude
|a| = sqrt(x^2 + y^2 + z^2) in g (1 g at rest); a window whose peak is at least
``floor_g`` becomes a ``shock`` sample ``{"peak_g", "x", "y", "z", "n", "window_ms"}``
(the axes at the peak, n samples in the window). An I2C error (OSError from the bus, e.g.
EREMOTEIO) or a wrong DEVID is a SensorReadError (``i2c_error``, ``bad_devid``): counted,
never a crash; the chip is set up again on the next read.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Protocol

from edge_agent.collectors.base import Clock, Sample, system_clock
from edge_agent.collectors.errors import DeviceUnavailable, SensorReadError

__all__ = ["ADXL345_DEVID", "I2cBus", "ShockCollector", "open_i2c_bus"]

ADXL345_DEVID = 0xE5
REG_DEVID, REG_BW_RATE, REG_POWER_CTL, REG_DATA_FORMAT = 0x00, 0x2C, 0x2D, 0x31
REG_DATAX0, REG_FIFO_CTL, REG_FIFO_STATUS = 0x32, 0x38, 0x39
G_PER_LSB = 0.0039


class I2cBus(Protocol):
    def read_byte_data(self, i2c_addr: int, register: int) -> int: ...

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None: ...

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]: ...

    def close(self) -> None: ...


def open_i2c_bus(spec: str) -> I2cBus:
    """``/dev/i2c-N`` through smbus2, from ``N`` (a number) or the device path.

    Raises DeviceUnavailable when the bus cannot be opened (no such adapter, no access).
    """
    from smbus2 import SMBus

    try:
        bus: I2cBus = SMBus(int(spec) if spec.isdigit() else spec)
    except OSError as err:
        raise DeviceUnavailable("i2c_missing", spec, str(err)) from None
    return bus


class ShockCollector:
    def __init__(self, bus: I2cBus, address: int = 0x53, *, clock: Clock = system_clock,
                 floor_g: float = 2.0, window_s: float = 1.0) -> None:
        self.bus, self.address, self.clock = bus, address, clock
        self.floor_g, self.window_ms = floor_g, int(window_s * 1000)
        self.stats: Counter[str] = Counter()
        self._ready = False
        self._window_start: int | None = None
        self._peak: tuple[float, float, float, float] | None = None
        self._n = 0

    def setup(self) -> None:
        devid = self._read(REG_DEVID)
        if devid != ADXL345_DEVID:
            self.stats["errors"] += 1
            raise SensorReadError("bad_devid", f"0x{self.address:02x}",
                                  f"DEVID 0x{devid:02x}, expected 0xE5 (not an ADXL345)")
        for register, value in ((REG_BW_RATE, 0x0A), (REG_DATA_FORMAT, 0x0B),
                                (REG_FIFO_CTL, 0x80), (REG_POWER_CTL, 0x08)):
            self._write(register, value)
        self._ready = True

    def read_available(self) -> list[Sample]:
        if not self._ready:
            self.setup()
        entries = self._read(REG_FIFO_STATUS) & 0x3F
        for _ in range(entries):
            raw = self._block(REG_DATAX0, 6)
            x, y, z = (int.from_bytes(bytes(raw[i:i + 2]), "little", signed=True) * G_PER_LSB
                       for i in (0, 2, 4))
            magnitude = math.sqrt(x * x + y * y + z * z)
            if self._peak is None or magnitude > self._peak[0]:
                self._peak = (magnitude, x, y, z)
            self._n += 1
        self.stats["samples_read"] += entries
        t_ms, source = self.clock()
        if self._window_start is None:
            self._window_start = t_ms
        if t_ms - self._window_start < self.window_ms and t_ms >= self._window_start:
            return []
        out = []
        if self._peak is not None and self._peak[0] >= self.floor_g:
            peak, x, y, z = self._peak
            out.append(Sample("shock", {"peak_g": round(peak, 3), "x": round(x, 3),
                                        "y": round(y, 3), "z": round(z, 3), "n": self._n,
                                        "window_ms": self.window_ms}, t_ms, source))
            self.stats["shocks"] += 1
        self._window_start, self._peak, self._n = t_ms, None, 0
        return out

    def close(self) -> None:
        self.bus.close()

    def _fail(self, err: OSError, what: str) -> SensorReadError:
        self._ready = False
        self.stats["errors"] += 1
        self.stats["error:i2c_error"] += 1
        return SensorReadError("i2c_error", f"0x{self.address:02x}", f"{what}: {err}")

    def _read(self, register: int) -> int:
        try:
            return int(self.bus.read_byte_data(self.address, register))
        except OSError as err:
            raise self._fail(err, f"read 0x{register:02x}") from None

    def _write(self, register: int, value: int) -> None:
        try:
            self.bus.write_byte_data(self.address, register, value)
        except OSError as err:
            raise self._fail(err, f"write 0x{register:02x}") from None

    def _block(self, register: int, length: int) -> list[int]:
        try:
            return list(self.bus.read_i2c_block_data(self.address, register, length))
        except OSError as err:
            raise self._fail(err, f"block read 0x{register:02x}") from None
