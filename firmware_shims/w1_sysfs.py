"""A Linux 1-wire bus with DS18B20 probes, as the ``w1_therm`` driver shows it in sysfs.

``W1SysfsShim(base_dir)`` creates ``base_dir/28-XXXXXXXXXXXX/w1_slave`` for each probe and
rewrites them atomically (temporary file + ``os.replace``, so a reader never sees half a
file) with what the kernel would print: the 9-byte scratchpad with a correct Dallas/Maxim
CRC-8, ``crc=.. YES``, and ``t=`` in millidegrees (truncated toward zero, as the driver
does). Point ``edge_agent.collectors.w1_temp.W1TemperatureCollector`` at ``base_dir``.

Pure parts: :func:`crc8` (bitwise, written independently of the collector's table version),
:func:`scratchpad`, :func:`w1_slave_text`, :func:`fault_text` (the failures real buses
produce) and :func:`cold_chain_profile` (a reefer holding 4-6 °C with slow drift and optional
excursion windows).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FAULTS",
    "POWER_ON_RESET",
    "Excursion",
    "W1SysfsShim",
    "cold_chain_profile",
    "crc8",
    "fault_text",
    "probe_ids",
    "scratchpad",
    "w1_slave_text",
]

POWER_ON_RESET = bytes.fromhex("5005 4b46 7fff 0c10 1c".replace(" ", ""))
FAULTS = ("crc_no", "power_on_reset", "shorted", "disconnected", "truncated")


def crc8(data: bytes) -> int:
    """Dallas/Maxim CRC-8, bit by bit: shift right, XOR 0x8C when the bit out is set."""
    crc = 0
    for byte in data:
        for bit in range(8):
            mix = (crc ^ (byte >> bit)) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
    return crc


def scratchpad(celsius: float, *, resolution: int = 12) -> bytes:
    """The 9 bytes a DS18B20 returns after converting ``celsius`` (clamped to -55..125)."""
    if resolution not in (9, 10, 11, 12):
        raise ValueError("resolution must be 9-12 bits")
    raw = round(min(125.0, max(-55.0, celsius)) * 16)
    raw &= ~((1 << (12 - resolution)) - 1)
    config = 0x1F | ((resolution - 9) << 5)
    body = raw.to_bytes(2, "little", signed=True) + bytes(
        [0x4B, 0x46, config, 0xFF, 0x10 - (raw & 0x0F), 0x10]
    )
    return body + bytes([crc8(body)])


def _kernel_milli(pad: bytes) -> int:
    raw = int.from_bytes(pad[0:2], "little", signed=True)
    return int(raw * 1000 / 16)  # the driver's integer division truncates toward zero


def _text(pad: bytes, *, milli: int | None = None) -> str:
    """What the driver prints: ``crc=`` is the CRC it computed, YES if byte 8 matches."""
    hexes = " ".join(f"{b:02x}" for b in pad)
    computed = crc8(pad[:8])
    verdict = "YES" if computed == pad[8] else "NO"
    milli = _kernel_milli(pad) if milli is None else milli
    return f"{hexes} : crc={computed:02x} {verdict}\n{hexes} t={milli}\n"


def w1_slave_text(celsius: float, *, resolution: int = 12) -> str:
    """The ``w1_slave`` contents for a good reading of ``celsius``."""
    return _text(scratchpad(celsius, resolution=resolution))


def fault_text(kind: str, celsius: float = 5.0) -> str:
    """``w1_slave`` contents for a failure seen on real buses; ``kind`` in FAULTS."""
    if kind == "crc_no":  # a bit flipped on the wire: the kernel's CRC check fails
        pad = bytearray(scratchpad(celsius))
        pad[0] ^= 0x04
        return _text(bytes(pad))
    if kind == "power_on_reset":
        return _text(POWER_ON_RESET)
    if kind == "shorted":  # data line held low: all zeros, and the CRC of zeros is zero
        return _text(bytes(9))
    if kind == "disconnected":  # data line floats high: all ones, CRC fails
        return _text(bytes([0xFF] * 9))
    if kind == "truncated":
        return w1_slave_text(celsius).splitlines()[0] + "\n"
    raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULTS)}")


@dataclass(frozen=True)
class Excursion:
    """A temperature excursion: ramps to ``peak_c`` over the first and last quarter."""

    start_s: float
    duration_s: float
    peak_c: float


def cold_chain_profile(
    t_s: float,
    *,
    base_c: float = 5.0,
    drift_c: float = 0.6,
    period_s: float = 1800.0,
    excursions: Sequence[Excursion] = (),
) -> float:
    """A reefer's air temperature at ``t_s``: 4-6 °C with slow drift, plus excursions."""
    value = base_c + drift_c * math.sin(2 * math.pi * t_s / period_s)
    value += 0.25 * drift_c * math.sin(2 * math.pi * t_s / (period_s / 7.3) + 1.0)
    for exc in excursions:
        into = t_s - exc.start_s
        if 0 <= into <= exc.duration_s:
            ramp = exc.duration_s / 4 or 1.0
            weight = min(1.0, into / ramp, (exc.duration_s - into) / ramp)
            value += (exc.peak_c - value) * weight
    return value


def probe_ids(index: int, count: int) -> list[str]:
    """Stable probe ids for truck ``index``: ``28-`` + 12 hex digits of serial."""
    return [f"28-{0x0316A2790000 + index * 0x100 + k:012x}" for k in range(count)]


class W1SysfsShim:
    """A sysfs-like 1-wire tree under ``base_dir`` with DS18B20 probes.

    ``profile(t_s) -> celsius`` drives ``update(t_s)``; probe ``k`` reads
    ``profile(t_s) + k * offset_c`` (the rear of a reefer runs warmer).
    """

    def __init__(
        self,
        base_dir: Path,
        probes: Sequence[str] | None = None,
        *,
        index: int = 0,
        count: int = 2,
        profile: Callable[[float], float] = cold_chain_profile,
        offset_c: float = 0.2,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.probes = list(probes) if probes is not None else probe_ids(index, count)
        self.profile = profile
        self.offset_c = offset_c

    def create(self) -> W1SysfsShim:
        for probe in self.probes:
            (self.base_dir / probe).mkdir(parents=True, exist_ok=True)
        return self

    def write_raw(self, probe: str, text: str) -> None:
        """Replace ``probe``'s w1_slave with ``text``, atomically."""
        folder = self.base_dir / probe
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".w1_slave.{os.getpid()}.tmp"
        tmp.write_text(text, encoding="ascii")
        os.replace(tmp, folder / "w1_slave")

    def set_temperature(self, probe: str, celsius: float) -> None:
        self.write_raw(probe, w1_slave_text(celsius))

    def set_fault(self, probe: str, kind: str) -> None:
        self.write_raw(probe, fault_text(kind))

    def unplug(self, probe: str) -> None:
        """The probe leaves the bus: its directory disappears."""
        folder = self.base_dir / probe
        for child in folder.iterdir() if folder.exists() else ():
            child.unlink()
        if folder.exists():
            folder.rmdir()

    def update(self, t_s: float) -> dict[str, float]:
        """Write every probe's reading for time ``t_s``; return what was written (°C)."""
        written = {}
        base = self.profile(t_s)
        for k, probe in enumerate(self.probes):
            celsius = base + k * self.offset_c
            self.set_temperature(probe, celsius)
            written[probe] = celsius
        return written
