"""Ordering: who decides the order and ledger time of batches (DESIGN.md §5).

`Orderer` is the one boundary where ordering can be swapped. `SoloOrderer` is the embedded
default: the node itself stamps each batch with its clock, never letting ledger time go
backwards. An etcd-backed orderer for a consortium implements the same protocol.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from ledger_node.chain import Message, OrderedBatch


class Orderer(Protocol):
    def order(self, admin: Sequence[bytes], messages: Sequence[Message],
              audit: Sequence[bytes] = (), *, heartbeat: bool = False) -> OrderedBatch:
        """Fix the order and ledger time of one batch."""
        ...


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class SoloOrderer:
    """In-process ordering for a single node: batch order as received, time never decreasing."""

    def __init__(self, node_id: str, last_time: int = 0,
                 clock: Callable[[], int] = wall_clock_ms) -> None:
        self.node_id = node_id
        self.last_time = last_time
        self.clock = clock

    def order(self, admin: Sequence[bytes], messages: Sequence[Message],
              audit: Sequence[bytes] = (), *, heartbeat: bool = False) -> OrderedBatch:
        self.last_time = max(self.last_time, self.clock())
        return OrderedBatch(time=self.last_time, proposer=self.node_id, admin=tuple(admin),
                            messages=tuple(messages), audit=tuple(audit), heartbeat=heartbeat)
