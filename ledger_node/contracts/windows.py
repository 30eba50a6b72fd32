"""Device-time windows of one (contract version, rule, scope): episodes, cumulative time and
aggregates, incremental for in-order readings and exact for late ones.

Samples are ordered by (device time t, entry index idx): a late reading (an agent draining a
backlog) is inserted at its device time. The rules (docs/contracts.md, "Late readings"):

- Condition values are held from one sample to the next (sample-and-hold).
- An episode is a maximal run of consecutive samples whose condition holds. It fires once,
  at the first sample k of the run with t_k - t_first >= `for` (for 0: the first sample);
  with `edge`, only if the sample just before the run exists and is false (geofences: an
  exit needs a position inside first). An episode that fired is remembered as the interval
  [t_first, t_k] (with entry indexes, so that ties in device time stay apart). A run never
  fires if it overlaps a remembered interval: a late reading
  that extends, joins or splits an episode that already fired emits nothing new, except
  that the part of a split run lying wholly after the point where the old episode fired is
  a new episode, and fires if it qualifies on its own. A late reading that completes an
  episode in the past fires it then, with `late` set, `at` = device time of sample k.
- Cumulative: the time a condition held, summed over samples (each true sample counts until
  the next sample), fires once per scope when the sum reaches the limit.
- Samples older than LATE_HORIZON_MS before the newest device time of the window are
  dropped (never the current run); a reading older than everything still held is too late
  for this window and is ignored by it (`add` returns None and counts it in `too_late`).
- Aggregates (count, min, max, sum, avg) over (t - over, t] use an exact integer sum of the
  float values, so avg is the correctly rounded mean whatever the arrival order.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

LATE_HORIZON_MS: Final = 6 * 3_600_000
PRUNE_AT: Final = 1024
CAUSE_CAP: Final = 64
_SCALE: Final = 1074          # 2**-1074 is the smallest float step: value << _SCALE is exact


def cap_cause(idxs: list[int]) -> tuple[tuple[int, ...], int]:
    """Sorted, de-duplicated entry indexes, capped to the first and last CAUSE_CAP // 2."""
    s = sorted(set(idxs))
    if len(s) <= CAUSE_CAP:
        return tuple(s), len(s)
    half = CAUSE_CAP // 2
    return tuple(s[:half] + s[-half:]), len(s)


@dataclass(frozen=True)
class Fire:
    """An episode (or cumulative total) that qualified."""

    at: int                   # device time of the sample where it qualified
    start: int                # device time of the first sample of the run
    cause: tuple[int, ...]
    cause_count: int
    late: bool                # fired by a reading that was not the newest
    total_ms: int = 0         # cumulative only
    start_idx: int = 0        # entry index of the first sample (ties in t: (t, idx) orders)
    at_idx: int = 0           # entry index of the sample where it qualified


class Episodes:
    """Episode detection for one rule in one scope (see the module docstring)."""

    __slots__ = ("edge", "emitted", "for_ms", "pruned_last", "samples", "tail_fired",
                 "tail_start", "too_late")

    def __init__(self, for_ms: int = 0, edge: bool = False) -> None:
        self.for_ms = for_ms
        self.edge = edge
        self.samples: list[tuple[int, int, bool]] = []
        self.emitted: list[tuple[tuple[int, int], tuple[int, int]]] = []
        """Fired episodes as [(t, idx) of the first sample, (t, idx) of the firing one]."""
        self.tail_start: int | None = None   # index of the first sample of the tail run
        self.tail_fired = False
        self.pruned_last: bool | None = None  # condition of the last dropped sample
        self.too_late = 0

    def _prior_false(self, i: int) -> bool:
        if i > 0:
            return not self.samples[i - 1][2]
        return self.pruned_last is False

    def _covered(self, first: tuple[int, int], last: tuple[int, int]) -> bool:
        return any(s <= last and f >= first for s, f in self.emitted)

    def add(self, t: int, idx: int, cond: bool) -> tuple[Fire, ...]:
        """Add one sample; the episodes it makes fire (usually none or one)."""
        samples = self.samples
        if samples:
            last = samples[-1]
            if t < last[0] or (t == last[0] and idx <= last[1]):
                return self._insert(t, idx, cond)
        samples.append((t, idx, cond))
        n = len(samples) - 1
        if not cond:
            self.tail_start = None
            self.tail_fired = False
            if n >= PRUNE_AT:
                self._prune()
            return ()
        if self.tail_start is None:
            self.tail_start = n
            self.tail_fired = False
        if self.tail_fired:
            return ()
        start = self.tail_start
        t0 = samples[start][0]
        if t - t0 < self.for_ms or (self.edge and not self._prior_false(start)):
            return ()
        if self.emitted and self._covered(samples[start][:2], (t, idx)):
            self.tail_fired = True
            return ()
        return (self._fire(start, n, late=False),)

    def _fire(self, i: int, k: int, late: bool) -> Fire:
        samples = self.samples
        cause, count = cap_cause([s[1] for s in samples[i:k + 1]])
        self.emitted.append((samples[i][:2], samples[k][:2]))
        self.emitted.sort()
        if self.tail_start == i:
            self.tail_fired = True
        return Fire(samples[k][0], samples[i][0], cause, count, late,
                    start_idx=samples[i][1], at_idx=samples[k][1])

    def _run_around(self, p: int) -> tuple[int, int] | None:
        samples = self.samples
        if p < 0 or p >= len(samples) or not samples[p][2]:
            return None
        i = p
        while i > 0 and samples[i - 1][2]:
            i -= 1
        j = p
        while j + 1 < len(samples) and samples[j + 1][2]:
            j += 1
        return i, j

    def _insert(self, t: int, idx: int, cond: bool) -> tuple[Fire, ...]:
        samples = self.samples
        if self.pruned_last is not None and (t, idx) < samples[0][:2]:
            self.too_late += 1
            return ()
        p = bisect_left(samples, (t, idx))
        if p < len(samples) and samples[p][:2] == (t, idx):
            return ()                         # the same entry twice: nothing new
        samples.insert(p, (t, idx, cond))
        self._retail()
        fired: list[Fire] = []
        seen: set[tuple[int, int]] = set()
        for q in (p - 1, p, p + 1):
            run = self._run_around(q)
            if run is None or run in seen:
                continue
            seen.add(run)
            i, j = run
            if self.edge and not self._prior_false(i):
                continue
            t0 = samples[i][0]
            k = bisect_left(samples, (t0 + self.for_ms, -1), i, j + 1)
            if k > j or self._covered(samples[i][:2], samples[j][:2]):
                continue
            fired.append(self._fire(i, k, late=True))
        return tuple(fired)

    def _retail(self) -> None:
        """Recompute the tail run after an insertion."""
        samples = self.samples
        if not samples[-1][2]:
            self.tail_start, self.tail_fired = None, False
            return
        i = len(samples) - 1
        while i > 0 and samples[i - 1][2]:
            i -= 1
        self.tail_start = i
        self.tail_fired = self._covered(samples[i][:2], samples[-1][:2])

    def _prune(self) -> None:
        samples = self.samples
        newest = samples[-1][0]
        keep_from = bisect_left(samples, (newest - LATE_HORIZON_MS, -1))
        if self.tail_start is not None:
            keep_from = min(keep_from, self.tail_start)
        if keep_from <= 0:
            return
        self.pruned_last = samples[keep_from - 1][2]
        del samples[:keep_from]
        if self.tail_start is not None:
            self.tail_start -= keep_from
        oldest = samples[0][:2]
        self.emitted = [(s, f) for s, f in self.emitted if f >= oldest]


class Cumulative:
    """Total device time a condition held in one scope; fires once at `limit_ms`."""

    __slots__ = ("fired", "frozen_ms", "limit_ms", "pruned", "samples", "too_late",
                 "total_ms", "true_idx")

    def __init__(self, limit_ms: int) -> None:
        self.limit_ms = limit_ms
        self.samples: list[tuple[int, int, bool]] = []
        self.total_ms = 0        # over the samples held, plus frozen_ms
        self.frozen_ms = 0
        self.true_idx: list[int] = []
        self.fired = False
        self.pruned = False
        self.too_late = 0

    def add(self, t: int, idx: int, cond: bool) -> Fire | None:
        if self.fired:
            return None
        samples = self.samples
        late = bool(samples) and (t, idx) <= samples[-1][:2]
        if late and self.pruned and (t, idx) < samples[0][:2]:
            self.too_late += 1
            return None
        p = bisect_left(samples, (t, idx)) if late else len(samples)
        if p < len(samples) and samples[p][:2] == (t, idx):
            return None
        prev = samples[p - 1] if p > 0 else None
        nxt = samples[p] if p < len(samples) else None
        delta = 0
        if prev is not None and prev[2]:
            delta -= (nxt[0] - prev[0]) if nxt is not None else 0
            delta += t - prev[0]
        if cond and nxt is not None:
            delta += nxt[0] - t
        samples.insert(p, (t, idx, cond))
        self.total_ms += delta
        if cond:
            self.true_idx.append(idx)
        if self.total_ms >= self.limit_ms:
            self.fired = True
            cause, count = cap_cause(self.true_idx)
            fire = Fire(samples[-1][0], samples[0][0], cause, count, late, self.total_ms)
            self.samples, self.true_idx = [], []
            return fire
        if len(samples) >= PRUNE_AT:
            self._prune()
        return None

    def _prune(self) -> None:
        samples = self.samples
        keep_from = bisect_left(samples, (samples[-1][0] - LATE_HORIZON_MS, -1))
        keep_from = min(keep_from, len(samples) - 1)
        if keep_from <= 0:
            return
        del samples[:keep_from]         # their contributions stay in total_ms
        self.pruned = True


class Aggregates:
    """count/min/max/sum/avg of one numeric field over (t - over_ms, t]."""

    __slots__ = ("lo", "maxq", "minq", "over_ms", "pruned", "samples", "sum_scaled",
                 "too_late")

    def __init__(self, over_ms: int) -> None:
        self.over_ms = over_ms
        self.samples: list[tuple[int, int, float | int]] = []
        self.lo = 0                    # first sample inside the newest window
        self.sum_scaled = 0
        self.maxq: deque[tuple[int, int, float | int]] = deque()
        self.minq: deque[tuple[int, int, float | int]] = deque()
        self.too_late = 0
        self.pruned = False

    @staticmethod
    def scaled(v: float | int) -> int:
        if isinstance(v, int):
            return v << _SCALE
        n, d = v.as_integer_ratio()
        return n << (_SCALE - (d.bit_length() - 1))

    def add(self, t: int, idx: int, value: float | int) -> dict[str, Any] | None:
        """Insert one sample and return the aggregates of the window ending at it."""
        samples = self.samples
        if samples and (t, idx) <= samples[-1][:2]:
            if self.pruned and (t, idx) < samples[0][:2]:
                self.too_late += 1
                return None
            p = bisect_left(samples, (t, idx))
            if p < len(samples) and samples[p][:2] == (t, idx):
                return None
            samples.insert(p, (t, idx, value))
            if t > samples[-1][0] - self.over_ms:
                self._rebuild()
            else:
                self.lo += 1
            return self._scan(t, idx)
        samples.append((t, idx, value))
        self.sum_scaled += self.scaled(value)
        item = (t, idx, value)
        while self.maxq and self.maxq[-1][2] <= value:
            self.maxq.pop()
        self.maxq.append(item)
        while self.minq and self.minq[-1][2] >= value:
            self.minq.pop()
        self.minq.append(item)
        cut = t - self.over_ms
        while samples[self.lo][0] <= cut:
            self.sum_scaled -= self.scaled(samples[self.lo][2])
            self.lo += 1
        while self.maxq[0][0] <= cut:
            self.maxq.popleft()
        while self.minq[0][0] <= cut:
            self.minq.popleft()
        count = len(samples) - self.lo
        result = self._result(count, self.sum_scaled, self.minq[0][2], self.maxq[0][2],
                              samples[self.lo][0], t)
        if self.lo >= PRUNE_AT:
            self._prune()
        return result

    @staticmethod
    def _result(count: int, total: int, lo: float | int, hi: float | int, first: int,
                last: int) -> dict[str, Any]:
        return {"count": count, "min": lo, "max": hi, "sum": total / (1 << _SCALE),
                "avg": total / (count << _SCALE), "first_t": first, "last_t": last}

    def _scan(self, t: int, idx: int) -> dict[str, Any]:
        samples = self.samples
        a = bisect_right(samples, (t - self.over_ms, 2**63))
        b = bisect_right(samples, (t, idx, float("inf")))
        window = samples[a:b]
        total = sum(self.scaled(s[2]) for s in window)
        values = [s[2] for s in window]
        return self._result(len(window), total, min(values), max(values), window[0][0], t)

    def _rebuild(self) -> None:
        samples = self.samples
        newest = samples[-1][0]
        self.lo = bisect_right(samples, (newest - self.over_ms, 2**63))
        self.sum_scaled = sum(self.scaled(s[2]) for s in samples[self.lo:])
        self.maxq.clear()
        self.minq.clear()
        for item in samples[self.lo:]:
            while self.maxq and self.maxq[-1][2] <= item[2]:
                self.maxq.pop()
            self.maxq.append(item)
            while self.minq and self.minq[-1][2] >= item[2]:
                self.minq.pop()
            self.minq.append(item)

    def _prune(self) -> None:
        samples = self.samples
        keep_from = bisect_left(samples, (samples[-1][0] - self.over_ms - LATE_HORIZON_MS, -1))
        keep_from = min(keep_from, self.lo)
        if keep_from > 0:
            del samples[:keep_from]
            self.lo -= keep_from
            self.pruned = True
