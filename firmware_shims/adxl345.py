"""An ADXL345 accelerometer as a register map behind smbus2's interface.

There is no ``i2c-stub`` kernel module on this machine (and a container could not load
one), so the I2C shim is an object with the methods smbus2's ``SMBus`` offers
(``read_byte_data``, ``write_byte_data``, ``read_i2c_block_data``, ``close``); the
collector uses the same calls on ``/dev/i2c-N`` on a truck.

What it models: DEVID 0xE5 at 0x00; registers written are kept; in FIFO stream mode
(FIFO_CTL bits 7:6 = 10) a 32-entry FIFO whose count is FIFO_STATUS (0x39) bits 5:0 and
whose oldest entry is popped by a 6-byte read from DATAX0 (0x32); measurements only when
POWER_CTL (0x2D) has the measure bit; full-resolution scale 3.9 mg/LSB. Overflowing the FIFO
drops the oldest entries, as the chip does. ``push_g`` queues samples (in g), ``rest``
queues a truck standing still (0, 0, 1 g), ``shock`` a half-sine pulse; ``fail_next(n)``
makes the next n bus operations raise OSError(EREMOTEIO), the error smbus2 raises when the
chip does not acknowledge. Only address 0x53 (ALT ADDRESS low) answers.
"""

from __future__ import annotations

import errno
import math
import threading
from collections import deque

__all__ = ["Adxl345Shim"]

LSB_PER_G = 256.0  # 1 / 3.9 mg


class Adxl345Shim:
    def __init__(self, address: int = 0x53) -> None:
        self.address = address
        self.registers = bytearray(0x3A)
        self.registers[0x00] = 0xE5
        self.registers[0x2C] = 0x0A
        self.fifo: deque[tuple[int, int, int]] = deque(maxlen=32)
        self._failures = 0
        self._lock = threading.Lock()
        self.closed = False

    # -- the smbus2 interface ---------------------------------------------------------------
    def read_byte_data(self, i2c_addr: int, register: int) -> int:
        with self._lock:
            self._check(i2c_addr, register)
            if register == 0x39:
                return len(self.fifo) if self._streaming() else 0
            return self.registers[register]

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None:
        with self._lock:
            self._check(i2c_addr, register)
            if register != 0x00:
                self.registers[register] = value & 0xFF

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]:
        with self._lock:
            self._check(i2c_addr, register)
            if register == 0x32 and length == 6 and self._streaming() and self.fifo:
                x, y, z = self.fifo.popleft()
                return list(b"".join(v.to_bytes(2, "little", signed=True) for v in (x, y, z)))
            return list(self.registers[register:register + length])

    def close(self) -> None:
        self.closed = True

    # -- driving it -------------------------------------------------------------------------
    def push_g(self, samples: list[tuple[float, float, float]]) -> None:
        with self._lock:
            if not self.registers[0x2D] & 0x08:
                return  # standby: no measurements
            for x, y, z in samples:
                self.fifo.append(tuple(max(-4096, min(4095, round(v * LSB_PER_G)))
                                       for v in (x, y, z)))  # type: ignore[arg-type]

    def rest(self, n: int) -> None:
        self.push_g([(0.0, 0.0, 1.0)] * n)

    def shock(self, peak_g: float, n: int = 10) -> None:
        """A half-sine pulse on the x axis over n samples, peaking at `peak_g` above rest."""
        self.push_g([(peak_g * math.sin(math.pi * (i + 0.5) / n), 0.0, 1.0) for i in range(n)])

    def fail_next(self, n: int = 1) -> None:
        self._failures += n

    def _streaming(self) -> bool:
        return (self.registers[0x38] >> 6) == 0b10

    def _check(self, i2c_addr: int, register: int) -> None:
        if self.closed:
            raise OSError(errno.EBADF, "bus closed")
        if i2c_addr != self.address or not 0 <= register < len(self.registers):
            raise OSError(errno.EREMOTEIO, "Remote I/O error (no ACK)")
        if self._failures:
            self._failures -= 1
            raise OSError(errno.EREMOTEIO, "Remote I/O error")
