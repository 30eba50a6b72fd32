"""The agent's clock: GPS time when a recent fix anchors it, else the host clock (rtc).

Every GPS fix re-anchors the clock; between fixes time advances on the monotonic clock.
An anchor older than `max_age_s` is not trusted any more and the host clock is used.
"""

from __future__ import annotations

import time


class AgentClock:
    def __init__(self, max_age_s: float = 300.0) -> None:
        self.max_age_s = max_age_s
        self._anchor: tuple[int, float] | None = None

    def anchor_gps(self, gps_ms: int) -> None:
        self._anchor = (gps_ms, time.monotonic())

    def now(self) -> tuple[int, str]:
        if self._anchor is not None:
            gps_ms, at = self._anchor
            age = time.monotonic() - at
            if age <= self.max_age_s:
                return gps_ms + int(age * 1000), "gps"
        return time.time_ns() // 1_000_000, "rtc"
