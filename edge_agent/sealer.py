"""When the agent seals, in batch signing mode: full batches at once, a partial one late.

Batch mode (`signing = "batch"`) spends one HSM signature on up to `batch_max` readings
(trustfleet.batch). The policy, applied every turn of the agent's loop:

- a full batch (`batch_max` unsealed readings, and room for them in the send window) is
  sealed at once, as many as the turn allows;
- fewer readings are sealed together once the oldest of them has waited `batch_delay_s`
  since it was stored (a quiet sensor never waits longer than that for its signature);
- a batch is never cut short by the send window: while the window has room for fewer than
  the batch would hold, the agent waits for receipts to open it (config guarantees
  `batch_max <= window`, so it always opens eventually). A ledger outage therefore never
  turns into a stream of tiny batches.

Readings left unsealed by an earlier run count as overdue: they are sealed at the first turn.

How long a reading has waited is known only to this process, on the monotonic clock: the
sealer remembers, for each highest outbox row id it saw, when it first saw it (a row id
grows with every stored reading while unsealed readings exist; see `observe`).
"""

from __future__ import annotations

import math
from collections import deque


class BatchPolicy:
    """Decides the size of the next batch to seal. Used by the agent's thread only."""

    def __init__(self, batch_max: int, delay_s: float) -> None:
        self.batch_max = batch_max
        self.delay_s = delay_s
        self._arrivals: deque[tuple[int, float]] = deque()  # (highest row id, first seen)
        self._primed = False

    def observe(self, count: int, lo: int, hi: int, now: float) -> None:
        """The outbox now holds `count` unsealed readings (counted up to at least
        batch_max), row ids `lo`..`hi`."""
        if count == 0:
            self._arrivals.clear()
            self._primed = True
            return
        if not self._primed:  # left unsealed by an earlier run: overdue
            self._arrivals.append((hi, -math.inf))
            self._primed = True
        elif not self._arrivals or hi > self._arrivals[-1][0]:
            self._arrivals.append((hi, now))
        while self._arrivals and self._arrivals[0][0] < lo:
            self._arrivals.popleft()  # those rows were sealed or thinned

    def sealed_through(self, row_id: int) -> None:
        """Rows up to `row_id` were sealed."""
        while self._arrivals and self._arrivals[0][0] <= row_id:
            self._arrivals.popleft()

    def oldest_wait(self, now: float) -> float:
        """Seconds the oldest unsealed reading has waited (0.0 if none is tracked)."""
        return now - self._arrivals[0][1] if self._arrivals else 0.0

    def next_batch(self, count: int, room: int, now: float) -> int:
        """How many of `count` unsealed readings to seal now under one signature (0: wait)."""
        want = min(count, self.batch_max)
        if want <= 0 or room < want:
            return 0
        if want == self.batch_max or self.oldest_wait(now) >= self.delay_s:
            return want
        return 0
