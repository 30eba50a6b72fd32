"""Types shared by every collector: the :class:`Sample` they emit and the clock they use.

A ``Sample`` is one observation from one hardware interface, before it becomes a signed
reading (DESIGN.md §4): ``kind`` becomes ``k``, ``values`` becomes ``d``, ``t_ms`` and
``time_source`` become ``t`` and ``ts``. Values are restricted to what deterministic CBOR
carries without tags: ``int``, ``float``, ``str``, ``bool`` and ``None``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "TIME_SOURCES",
    "Clock",
    "Sample",
    "SampleValue",
    "system_clock",
]

SampleValue = int | float | str | bool | None
"""A value a sample may carry (CBOR-friendly, no containers)."""

TIME_SOURCES = frozenset({"gps", "rtc", "ntp"})
"""Where a sample's device time came from (DESIGN.md §4 ``ts``)."""

Clock = Callable[[], tuple[int, str]]
"""A clock returns ``(t_ms, time_source)``: ms since the Unix epoch and one of TIME_SOURCES."""

_MAX_T_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def system_clock() -> tuple[int, str]:
    """The host's clock, reported as ``rtc``: the agent config may substitute an NTP clock."""
    return time.time_ns() // 1_000_000, "rtc"


@dataclass(frozen=True)
class Sample:
    """One observation from one collector.

    Requires: ``kind`` a non-empty lower-case word; ``values`` keys are strings and values
    are SampleValue (floats finite); ``0 <= t_ms`` and before year 10000; ``time_source``
    in TIME_SOURCES. A violation raises ``ValueError`` at construction.
    ``values`` is copied into a plain dict at construction (so cbor2 encodes it as is);
    treat it as read-only.
    """

    kind: str
    values: dict[str, SampleValue] = field(hash=False)
    t_ms: int
    time_source: str

    def __post_init__(self) -> None:
        if not self.kind or not self.kind.isascii() or not self.kind.islower():
            raise ValueError(f"sample kind must be a lower-case word, got {self.kind!r}")
        if isinstance(self.t_ms, bool) or not isinstance(self.t_ms, int):
            raise ValueError(f"t_ms must be an int, got {type(self.t_ms).__name__}")
        if not 0 <= self.t_ms <= _MAX_T_MS:
            raise ValueError(f"t_ms out of range: {self.t_ms}")
        if self.time_source not in TIME_SOURCES:
            raise ValueError(f"time_source must be one of {sorted(TIME_SOURCES)}")
        for key, value in self.values.items():
            if not isinstance(key, str):
                raise ValueError(f"value key must be str, got {key!r}")
            if value is not None and not isinstance(value, int | float | str | bool):
                raise ValueError(f"value {key!r} has unsupported type {type(value).__name__}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"value {key!r} is not finite")
        object.__setattr__(self, "values", dict(self.values))
