"""Door contact on a GPIO line, read through the Linux sysfs GPIO ``value`` file.

``DoorCollector("/sys/class/gpio/gpio17/value")`` reads ``0``/``1`` each poll. The line is
1 when the door is open (a reed switch that opens with the door, pulled up), or 0 when
``active_low``. A new state counts once it has been read ``debounce_reads`` times in a row
(a contact bouncing as the door slams does not make a storm of readings), and becomes a
``door`` sample ``{"open": bool, "line": NAME}``: the first one at start, then one per
change. A value file with anything but 0 or 1 is a SensorReadError (``bad_value``); a
missing file is DeviceUnavailable; both are counted and the next poll tries again.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edge_agent.collectors.base import Clock, Sample, system_clock
from edge_agent.collectors.errors import DeviceUnavailable, SensorReadError

__all__ = ["DoorCollector"]


class DoorCollector:
    def __init__(self, value_path: Path, *, clock: Clock = system_clock,
                 active_low: bool = False, debounce_reads: int = 2) -> None:
        self.path = Path(value_path)
        self.clock = clock
        self.active_low = active_low
        self.debounce_reads = max(1, debounce_reads)
        self.line = self.path.parent.name or str(self.path)
        self.stats: Counter[str] = Counter()
        self.state: bool | None = None
        self._candidate: bool | None = None
        self._count = 0

    def read_open(self) -> bool:
        """Is the door open now? Raises DeviceUnavailable or SensorReadError."""
        try:
            text = self.path.read_text(encoding="ascii", errors="replace").strip()
        except OSError as err:
            self.stats["errors"] += 1
            raise DeviceUnavailable("gpio_missing", str(self.path), str(err)) from None
        if text not in ("0", "1"):
            self.stats["errors"] += 1
            raise SensorReadError("bad_value", self.line, f"value {text[:20]!r}")
        return (text == "1") != self.active_low

    def read_available(self) -> list[Sample]:
        now_open = self.read_open()
        if now_open == self.state:
            if self._candidate is not None:  # a change that did not last: contact bounce
                self.stats["bounces"] += 1
            self._candidate, self._count = None, 0
            return []
        if now_open != self._candidate:
            self._candidate, self._count = now_open, 0
        self._count += 1
        if self._count < self.debounce_reads:
            return []
        self.state, self._candidate, self._count = now_open, None, 0
        t_ms, source = self.clock()
        self.stats["samples"] += 1
        return [Sample("door", {"open": now_open, "line": self.line}, t_ms, source)]

    def close(self) -> None:
        pass
