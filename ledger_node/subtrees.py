"""Perfect-subtree hashes the store keeps, so that a proof is a few lookups, not a recomputation.

When a block appends leaves, every perfect aligned subtree of ``2**MIN_STORED_LEVEL`` (16) or
more leaves that they complete is written to ``merkle_nodes(level, idx, hash)`` in the block's
own transaction. Node ``(level, idx)`` covers leaves ``[idx * 2**level, (idx + 1) * 2**level)``;
a tree of n leaves has ``stored_node_count(n)`` (about n / 8) such rows. Smaller subtrees are not
stored: a node of level 0 to 3 is hashed from its 1 to 8 entries in ``entries`` (one range
query). That costs an inclusion proof up to 15 entries read instead of three rows, and saves
each block 7 of every 8 rows it wrote when every subtree of two or more leaves was stored.

Reading: ``SubtreeReader(conn)`` is a ``merkle.GetRangeHash``. A perfect aligned range is one
lookup (a stored row, or the entries under a small subtree); any range a proof asks for (a
perfect subtree, or one at the right edge of a tree) is the ``merkle.perfect_subtrees``
decomposition, at most log2(n) lookups, folded with ``merkle.hash_from_subtrees``.

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

__all__ = ["MIN_STORED_LEVEL", "StoredNode", "SubtreeReader", "append_leaves",
           "stored_node_count"]

MIN_STORED_LEVEL = 4
"""Lowest level of ``merkle_nodes`` rows: subtrees of 16 leaves or more are stored.

Why 4: rows written per leaf are 1/2**L + 1/2**(L+1) + ... = 2 / 2**L, so level 4 writes 1/8 of
a row per leaf (level 1 wrote one), while a proof hashes at most 2**L - 1 entries for the
siblings below level L (15 here, in four range queries). Level 5 would save only 1/16 of a row
per leaf more and double the entries a proof reads."""

StoredNode = tuple[int, int, bytes]
"""(level, index, hash) of one perfect aligned subtree, as the ``merkle_nodes`` table holds it."""

_NODE_PREFIX = b"\x01"


def stored_node_count(size: int) -> int:
    """Rows ``merkle_nodes`` holds for a tree of ``size`` leaves: size >> L summed over every
    level L >= MIN_STORED_LEVEL (the complete subtrees of each stored level)."""
    return sum(size >> level for level in range(MIN_STORED_LEVEL, size.bit_length()))


def append_leaves(frontier: CompactRange,
                  leaf_hashes: Sequence[bytes]) -> tuple[CompactRange, list[StoredNode]]:
    """Append leaf hashes to a copy of ``frontier``; also return every subtree of level
    MIN_STORED_LEVEL or more they complete, in completion order (the rows ``merkle_nodes``
    stores). Requires 32-byte leaf hashes; ``frontier`` itself is not changed."""
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
            if level >= MIN_STORED_LEVEL:
                nodes.append((level, size >> level, h))
        stack.append(h)
        size += 1
    return CompactRange.from_bytes(size.to_bytes(8, "big") + b"".join(stack)), nodes


class SubtreeReader:
    """``get_range_hash(begin, end)`` over a store's ``merkle_nodes`` and ``entries`` tables.

    Fetched and computed nodes are memoised (they never change once written), so the many
    proofs of one bundle share their lookups. A missing row or entry raises StoreError: the
    store lost or never had data that a committed block promised.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._memo: dict[tuple[int, int], bytes] = {}

    def node(self, level: int, index: int) -> bytes:
        """Hash of the perfect subtree ``(level, index)``: a leaf hash at level 0."""
        got = self._memo.get((level, index))
        if got is None:
            if level >= MIN_STORED_LEVEL:
                got = self._memo[(level, index)] = self._stored(level, index)
            else:
                got = self._from_entries(level, index)
        return got

    def _from_entries(self, level: int, index: int) -> bytes:
        """Hash the entries under a subtree too small to be stored, folding pairs level by level
        as RFC 9162 does; every node on the way, leaves included, is memoised, so that the
        neighbouring siblings of a proof path cost no second read."""
        first, last = index << level, ((index + 1) << level) - 1
        rows = self._conn.execute("SELECT idx, data FROM entries WHERE idx BETWEEN ? AND ? "
                                  "ORDER BY idx", (first, last)).fetchall()
        if len(rows) != 1 << level:
            missing = next((i for i, r in zip(range(first, last + 1), rows, strict=False)
                            if r[0] != i), first + len(rows))
            raise StoreError(f"entry {missing} is not in the store")
        hashes = [leaf_hash(bytes(r[1])) for r in rows]
        memo = self._memo
        at, start = 0, first
        while True:
            memo.update(zip(((at, start + i) for i in range(len(hashes))), hashes, strict=True))
            if at == level:
                return hashes[0]
            hashes = [hashlib.sha256(_NODE_PREFIX + hashes[i] + hashes[i + 1]).digest()
                      for i in range(0, len(hashes), 2)]
            at, start = at + 1, start >> 1

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
