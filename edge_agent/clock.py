"""The agent's clock: GPS time when a recent fix anchors it, else the host clock (rtc).

Every GPS fix re-anchors the clock; between fixes time advances on the monotonic clock, so
readings from other sensors carry GPS time (`ts` = "gps") while the receiver has a fix.
An anchor older than `max_age_s` is not trusted any more and the host clock is used, and
said to be used (`ts` = "rtc").

The host clock may be wrong: a terminal whose RTC battery is flat boots in 1970 after a
power cut. Its readings then carry 1970 times marked `rtc`, which is the truth about where
the time came from; nothing in the agent depends on the wall clock being right (seq order
is insertion order, resend timing is monotonic), and `rtc_plausible()` lets the status
reading say the RTC is not believable. The ledger records device time and never trusts it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["PLAUSIBLE_AFTER_MS", "AgentClock"]

PLAUSIBLE_AFTER_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z: an RTC before this is wrong


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class AgentClock:
    def __init__(self, max_age_s: float = 300.0, *, wall_ms: Callable[[], int] = _wall_ms,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self._wall_ms = wall_ms
        self._monotonic = monotonic
        self._anchor: tuple[int, float] | None = None

    def anchor_gps(self, gps_ms: int) -> None:
        self._anchor = (gps_ms, self._monotonic())

    def now(self) -> tuple[int, str]:
        if self._anchor is not None:
            gps_ms, at = self._anchor
            age = self._monotonic() - at
            if age <= self.max_age_s:
                return gps_ms + int(age * 1000), "gps"
        return self._wall_ms(), "rtc"

    def rtc_plausible(self) -> bool:
        return self._wall_ms() >= PLAUSIBLE_AFTER_MS
