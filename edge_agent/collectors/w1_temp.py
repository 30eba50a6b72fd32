"""DS18B20 temperature probes on the Linux 1-wire bus (``w1_therm`` sysfs files).

Each probe is a directory ``28-<48-bit serial in hex>`` under ``/sys/bus/w1/devices``;
reading its ``w1_slave`` file makes the kernel convert and returns two lines::

    72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
    72 01 4b 46 7f ff 0e 10 57 t=23125

the 9-byte scratchpad (temperature LSB, MSB, TH, TL, config, 3 reserved, CRC), the
kernel's CRC verdict, and the temperature in millidegrees Celsius.

:func:`parse_w1_slave` trusts nothing in that file. It rejects (SensorReadError, reason):

- ``truncated`` / ``malformed``: not two well-formed lines (a read cut short by the bus);
- ``crc_no``: the kernel's CRC check failed;
- ``crc_mismatch``: the Dallas/Maxim CRC-8 recomputed here over bytes 0-7 differs from
  byte 8 (or from the kernel's ``crc=``), or the two lines carry different bytes;
- ``bad_config``: the config register's fixed bits are wrong (all-zero scratchpad from a
  shorted bus passes the CRC, this catches it);
- ``power_on_reset``: ``t=85000`` with bytes ``50 05``, the value the chip holds before its
  first conversion (a brown-out or a read racing the conversion);
- ``no_reading`` / ``out_of_range``: ``t=-127000`` or no ``t=``-value the chip can
  produce (-55..+125 °C);
- ``t_mismatch``: ``t=`` disagrees with the scratchpad's temperature bytes.

:class:`W1TemperatureCollector` finds the ``28-*`` probes and reads them all; one bad
probe does not stop the others (its error is counted and kept in ``last_errors``).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

from edge_agent.collectors.base import Clock, Sample, system_clock
from edge_agent.collectors.errors import DeviceUnavailable, SensorReadError

__all__ = [
    "DS18B20_FAMILY",
    "W1TemperatureCollector",
    "crc8_maxim",
    "parse_w1_slave",
]

log = logging.getLogger(__name__)

DS18B20_FAMILY = "28"
POWER_ON_RESET_MILLI_C = 85_000
NO_READING_MILLI_C = -127_000
MIN_MILLI_C, MAX_MILLI_C = -55_000, 125_000
DEFAULT_BASE_DIR = Path("/sys/bus/w1/devices")

_BYTES = r"((?:[0-9a-fA-F]{2} ){9})"
_LINE1 = re.compile(_BYTES + r": crc=([0-9a-fA-F]{2}) (YES|NO)$")
_LINE2 = re.compile(_BYTES + r"t=(-?\d{1,7})$")
_PROBE_RE = re.compile(r"^28-[0-9a-f]{12}$")


def _crc8_table() -> tuple[int, ...]:
    table = []
    for value in range(256):
        crc = value
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8C if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC8_TABLE = _crc8_table()


def crc8_maxim(data: bytes) -> int:
    """Dallas/Maxim 1-wire CRC-8 (polynomial x^8 + x^5 + x^4 + 1, reflected, init 0)."""
    crc = 0
    for byte in data:
        crc = _CRC8_TABLE[crc ^ byte]
    return crc


def _temperature_milli(scratchpad: bytes) -> tuple[int, int]:
    """Millidegrees from the scratchpad, unmasked and masked to the configured resolution."""
    raw = int.from_bytes(scratchpad[0:2], "little", signed=True)
    undefined_bits = 3 - ((scratchpad[4] >> 5) & 0x03)
    masked = raw & ~((1 << undefined_bits) - 1)
    return int(raw * 1000 / 16), int(masked * 1000 / 16)


def parse_w1_slave(text: str | bytes, probe: str = "") -> int:
    """Millidegrees Celsius from the contents of a ``w1_slave`` file.

    Raises SensorReadError with one of the reasons in the module docstring.
    """
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 2:
        raise SensorReadError("truncated", probe, f"{len(lines)} line(s)")
    first, second = _LINE1.match(lines[0]), _LINE2.match(lines[1])
    if first is None:
        raise SensorReadError("malformed", probe, f"first line {lines[0][:60]!r}")
    if second is None:
        reason = "truncated" if "t=" not in lines[1] else "malformed"
        raise SensorReadError(reason, probe, f"second line {lines[1][:60]!r}")
    if first[3] != "YES":
        raise SensorReadError("crc_no", probe, "kernel reports CRC failure")
    scratchpad = bytes.fromhex(first[1])
    if bytes.fromhex(second[1]) != scratchpad:
        raise SensorReadError("crc_mismatch", probe, "the two lines carry different bytes")
    computed = crc8_maxim(scratchpad[:8])
    if computed != scratchpad[8] or int(first[2], 16) != scratchpad[8]:
        raise SensorReadError(
            "crc_mismatch",
            probe,
            f"CRC-8 of bytes 0-7 is {computed:02x}, byte 8 is {scratchpad[8]:02x}",
        )
    if scratchpad[4] & 0x9F != 0x1F:
        raise SensorReadError("bad_config", probe, f"config byte {scratchpad[4]:02x}")
    milli = int(second[2])
    if milli == POWER_ON_RESET_MILLI_C and scratchpad[0:2] == b"\x50\x05":
        raise SensorReadError("power_on_reset", probe, "85 C power-on value, no conversion")
    if milli == NO_READING_MILLI_C:
        raise SensorReadError("no_reading", probe, "t=-127000")
    if not MIN_MILLI_C <= milli <= MAX_MILLI_C:
        raise SensorReadError("out_of_range", probe, f"t={milli}")
    if all(abs(milli - expected) > 1 for expected in _temperature_milli(scratchpad)):
        raise SensorReadError("t_mismatch", probe, f"t={milli} disagrees with the bytes")
    return milli


class W1TemperatureCollector:
    """Reads every DS18B20 under ``base_dir``; ``clock`` stamps the samples."""

    def __init__(self, base_dir: Path = DEFAULT_BASE_DIR, *, clock: Clock = system_clock):
        self.base_dir = Path(base_dir)
        self.clock = clock
        self.stats: Counter[str] = Counter()
        self.last_errors: dict[str, SensorReadError | DeviceUnavailable] = {}

    def probes(self) -> list[str]:
        """Probe ids (``28-...``) present now, sorted. Raises DeviceUnavailable."""
        try:
            names = [entry.name for entry in self.base_dir.iterdir()]
        except OSError as err:
            raise DeviceUnavailable("bus_missing", str(self.base_dir), str(err)) from None
        return sorted(name for name in names if _PROBE_RE.match(name))

    def read_probe(self, probe: str) -> int:
        """Millidegrees from one probe. Raises SensorReadError or DeviceUnavailable."""
        try:
            text = (self.base_dir / probe / "w1_slave").read_bytes()
        except OSError as err:
            raise DeviceUnavailable("probe_gone", probe, str(err)) from None
        return parse_w1_slave(text, probe)

    def read(self) -> list[Sample]:
        """One sample per probe that read cleanly. Raises DeviceUnavailable (no bus)."""
        samples = []
        for probe in self.probes():
            try:
                milli = self.read_probe(probe)
            except (SensorReadError, DeviceUnavailable) as err:
                self.stats["errors"] += 1
                self.stats[f"error:{err.reason}"] += 1
                self.last_errors[probe] = err
                log.warning("w1 probe %s: %s", probe, err)
                continue
            self.last_errors.pop(probe, None)
            t_ms, source = self.clock()
            self.stats["samples"] += 1
            samples.append(
                Sample(
                    kind="temp",
                    values={"c": round(milli / 1000, 3), "probe": probe},
                    t_ms=t_ms,
                    time_source=source,
                )
            )
        return samples
