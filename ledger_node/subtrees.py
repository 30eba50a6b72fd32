"""Perfect-subtree hashes the store keeps, so that a proof is a few lookups, not a recomputation.

When a block appends leaves, every perfect aligned subtree of two or more leaves that they
complete is written to ``merkle_nodes(level, idx, hash)`` in the block's own transaction.
Node ``(level, idx)`` covers leaves ``[idx * 2**level, (idx + 1) * 2**level)``; a tree of n
leaves has n - popcount(n) such nodes. Level 0 (a single leaf) is not stored: its hash is
SHA-256(0x00 || entry), one lookup in ``entries``. Storing it too would double the rows each
block writes, for no fewer lookups.

Reading: ``SubtreeReader(conn)`` is a ``merkle.GetRangeHash``. A perfect aligned range is one
lookup; any range a proof asks for (a perfect subtree, or one at the right edge of a tree) is
the ``merkle.perfect_subtrees`` decomposition, at most log2(n) lookups, folded with
``merkle.hash_from_subtrees``.

``append_leaves`` is pure; ``SubtreeReader`` reads one SQLite connection and, like it, belongs
to one thread.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence

from ledger_node.errors import ProofError, StoreError
from ledger_node.merkle import (
    HASH_SIZE,
    CompactRange,
    hash_from_subtrees,
    leaf_hash,
    perfect_subtrees,
)

__all__ = ["StoredNode", "SubtreeReader", "append_leaves"]

StoredNode = tuple[int, int, bytes]
"""(level, index, hash) of one perfect aligned subtree, as the ``merkle_nodes`` table holds it."""

_NODE_PREFIX = b"\x01"


def append_leaves(frontier: CompactRange,
                  leaf_hashes: Sequence[bytes]) -> tuple[CompactRange, list[StoredNode]]:
    """Append leaf hashes to a copy of ``frontier``; also return every subtree of two or more
    leaves they complete, in completion order. Requires 32-byte leaf hashes; ``frontier``
    itself is not changed."""
    for i, h in enumerate(leaf_hashes):
        if not isinstance(h, bytes) or len(h) != HASH_SIZE:
            raise ProofError(f"leaf_hashes[{i}] must be a {HASH_SIZE}-byte hash")
    stack = list(frontier.hashes)
    size = frontier.size
    nodes: list[StoredNode] = []
    for h in leaf_hashes:
        n, level = size, 0
        while n & 1:  # merge equal-sized perfect subtrees, smallest first (as CompactRange does)
            h = hashlib.sha256(_NODE_PREFIX + stack.pop() + h).digest()
            n >>= 1
            level += 1
            nodes.append((level, size >> level, h))
        stack.append(h)
        size += 1
    return CompactRange.from_bytes(size.to_bytes(8, "big") + b"".join(stack)), nodes


class SubtreeReader:
    """``get_range_hash(begin, end)`` over a store's ``merkle_nodes`` table.

    Fetched nodes are memoised (they never change once written), so the many proofs of one
    bundle share their lookups. A missing node raises StoreError: the store lost or never had
    data that a committed block promised.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._memo: dict[tuple[int, int], bytes] = {}

    def node(self, level: int, index: int) -> bytes:
        """Hash of the perfect subtree ``(level, index)``: a leaf hash at level 0."""
        key = (level, index)
        got = self._memo.get(key)
        if got is None:
            got = self._leaf(index) if level == 0 else self._stored(level, index)
            self._memo[key] = got
        return got

    def _leaf(self, index: int) -> bytes:
        row = self._conn.execute("SELECT data FROM entries WHERE idx = ?", (index,)).fetchone()
        if row is None:
            raise StoreError(f"entry {index} is not in the store")
        return leaf_hash(bytes(row[0]))

    def _stored(self, level: int, index: int) -> bytes:
        row = self._conn.execute("SELECT hash FROM merkle_nodes WHERE level = ? AND idx = ?",
                                 (level, index)).fetchone()
        if row is None:
            raise StoreError(f"merkle node (level {level}, index {index}) is not in the store")
        got = bytes(row[0])
        if len(got) != HASH_SIZE:
            raise StoreError(f"merkle node (level {level}, index {index}) is not 32 bytes")
        return got

    def __call__(self, begin: int, end: int) -> bytes:
        """MTH(D[begin:end]) for a range a proof asks for (see merkle.hash_from_subtrees)."""
        return hash_from_subtrees([self.node(n.level, n.index)
                                   for n in perfect_subtrees(begin, end)])
