"""Exponential backoff with jitter, for reconnecting to the broker.

``Backoff(initial, maximum)``: the n-th consecutive failure waits
``uniform(0.5, 1.0) * min(maximum, initial * 2**(n-1))`` seconds ("equal jitter": never
less than half the exponential step, so a fleet that lost its broker at the same instant
spreads its reconnects over time instead of knocking on the broker in lock-step, and never
more than ``maximum``). ``reset()`` after a success starts again from ``initial``.

Pure: the random source is injected, so tests pin the sequence.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Requires ``0 < initial <= maximum``."""

    def __init__(self, initial: float = 0.5, maximum: float = 60.0,
                 rand: Callable[[], float] = random.random) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self.initial, self.maximum = initial, maximum
        self._rand = rand
        self.failures = 0

    def step(self) -> float:
        """The upper bound of the next wait, without jitter."""
        return min(self.maximum, self.initial * 2.0 ** min(self.failures, 62))

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before the next attempt."""
        delay = self.step() * (0.5 + 0.5 * self._rand())
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0
