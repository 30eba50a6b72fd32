"""What the outbox gives up when it fills, and what it never gives up (pure policy).

The outbox has a byte budget (``outbox_max_mb``). Readings wait in it unsealed (no seq,
no signature yet) until they enter the send window, so thinning an unsealed reading leaves
no gap in the device's seq chain: the ledger still sees seq 1, 2, 3, ... and the status
readings count what was thinned.

Policy, applied when the outbox's used bytes pass 90 % of the budget, until they are under
80 %:

1. Never thinned: RFID scans, door openings and closings, shocks, and temperature
   excursions (a ``temp`` reading outside ``[temp_low_c, temp_high_c]``): these are the
   events a claim or a customs check is about. Nor is a reading already sealed (it has a
   seq the ledger may have seen).
2. Everything else is thinnable (GPS fixes, in-range temperatures, humidity, status).
   One thinning pass halves one kind: it deletes every second unsealed reading of that
   kind, oldest to newest, so a 72 h GPS trace becomes a 2 s, then 4 s, ... trace over the
   whole outage instead of losing its first hours.
3. Each pass picks the kind with the most thinnable readings; ties go to the kind first in
   ``THIN_PRIORITY`` (status, then GPS, then humidity, then temperature). GPS at 1 Hz is
   by far the largest, so it is thinned first, until it is no larger than the others.
4. When nothing is thinnable any more (fewer than 2 readings of every thinnable kind) and
   the budget is reached, new thinnable readings are dropped at the door (counted);
   protected readings are still stored.
"""

from __future__ import annotations

from collections.abc import Mapping

from edge_agent.collectors.base import SampleValue

__all__ = ["HIGH_WATER", "LOW_WATER", "PROTECTED_KINDS", "THIN_PRIORITY", "is_protected",
           "pick_kind_to_thin"]

PROTECTED_KINDS = frozenset({"rfid", "door", "shock"})
THIN_PRIORITY = ("status", "gps", "humidity", "temp")
HIGH_WATER = 0.90
LOW_WATER = 0.80


def is_protected(kind: str, values: Mapping[str, SampleValue],
                 temp_range: tuple[float, float]) -> bool:
    """True for a reading the outbox never thins (rule 1)."""
    if kind in PROTECTED_KINDS:
        return True
    if kind == "temp":
        c = values.get("c")
        low, high = temp_range
        return isinstance(c, int | float) and not low <= c <= high
    return False


def pick_kind_to_thin(counts: Mapping[str, int]) -> str | None:
    """The kind the next pass halves (rule 3), or None when nothing can be thinned."""
    candidates = [(n, kind) for kind, n in counts.items()
                  if n >= 2 and kind not in PROTECTED_KINDS]
    if not candidates:
        return None

    def rank(item: tuple[int, str]) -> tuple[int, int, str]:
        n, kind = item
        order = THIN_PRIORITY.index(kind) if kind in THIN_PRIORITY else len(THIN_PRIORITY)
        return (-n, order, kind)

    return min(candidates, key=rank)[1]
