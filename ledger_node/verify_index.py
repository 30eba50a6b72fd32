"""`trustfleet verify`, second half: the node's derived rows against the verified log.

The log (entries, headers, signatures) is checked in ledger_node.verify. Everything else the
node stores is derived from it and is checked here, row by row, naming each damaged row:

* `blocks` columns beside the header (time, first, count, size, frontier) match the header
  and the tree after the block;
* `entries.kind` is the kind its bytes decode to;
* `readings`: one row per reading entry, equal in every column to what the log replay says
  (dev, seq, envelope hash, device time and values, flags, block, ledger time), and no row
  for anything else;
* `merkle_nodes`: every subtree of level >= subtrees.MIN_STORED_LEVEL a block completed is
  stored with the recomputed hash, and no other row exists (a store still at schema 2, which
  the node's writer has not opened since, also holds levels 1 to 3 as that schema did: their
  number and places are checked; a schema-3 store has none);
* `devices`: one row per enrolled device, equal to the replayed state (last_seq,
  contiguous_seq, gaps, ...), and no row for a device the log never enrolled.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from ledger_node.block import BlockHeader
from ledger_node.errors import TamperError
from ledger_node.merkle import CompactRange
from ledger_node.replay import ReplayedDevice
from ledger_node.subtrees import MIN_STORED_LEVEL, stored_node_count

MAX_NAMED = 50
_SCHEMA_WITHOUT_LOW_NODES = 3
"""First store schema (ledger_node.store) whose `merkle_nodes` has no level below
MIN_STORED_LEVEL; version 2 stored every level from 1."""
_READING_COLUMNS = ("dev", "seq", "hash", "t", "ts", "k", "d", "flags", "height", "ledger_time")
_DEVICE_COLUMNS = ("fleet", "key", "kid", "enrolled_height", "revoked_height", "last_seq",
                   "contiguous_seq", "last_seen", "last_t", "readings", "gaps",
                   "prev_mismatches")


def _show(value: Any) -> str:
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()[:16] + "…"
    return repr(value)


class IndexCheck:
    """Collects index-row problems (at most MAX_NAMED named; the rest counted)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.problems: list[TamperError] = []
        self.unnamed = 0
        self.checked = {"blocks": 0, "entries.kind": 0, "readings": 0, "merkle_nodes": 0,
                        "devices": 0}

    def problem(self, where: str, detail: str) -> None:
        if len(self.problems) < MAX_NAMED:
            self.problems.append(TamperError(where, detail))
        else:
            self.unnamed += 1

    def block_row(self, row: sqlite3.Row, header: BlockHeader, tree: CompactRange) -> None:
        got = (row["time"], row["first"], row["count"], row["size"], bytes(row["frontier"]))
        want = (header.time, header.first, header.count, header.size, tree.to_bytes())
        for name, g, w in zip(("time", "first", "count", "size", "frontier"), got, want,
                              strict=True):
            if g != w:
                self.problem(f"blocks row {header.height}",
                             f"{name} is {_show(g)}, the header and log give {_show(w)}")
        self.checked["blocks"] += 1

    def entry_kind(self, idx: int, stored: str, actual: str) -> None:
        if stored != actual:
            self.problem(f"entries row {idx}", f"kind column says {stored!r}, the entry is "
                         f"{actual!r}")
        self.checked["entries.kind"] += 1

    def readings(self, first: int, count: int, expected: Sequence[dict[str, Any]]) -> None:
        """Compare the readings rows of entries [first, first + count) with the replay's."""
        rows = {r["idx"]: r for r in self.conn.execute(
            "SELECT * FROM readings WHERE idx >= ? AND idx < ?", (first, first + count))}
        for want in expected:
            idx = want["idx"]
            got = rows.pop(idx, None)
            if got is None:
                self.problem(f"readings row for entry {idx}", f"missing ({want['dev']} seq "
                             f"{want['seq']})")
                continue
            name = f"readings row {idx} ({want['dev']} seq {want['seq']})"
            for col in _READING_COLUMNS:
                g = bytes(got[col]) if isinstance(got[col], bytes | memoryview) else got[col]
                if g != want[col]:
                    self.problem(name, f"{col} is {_show(g)}, entry {idx} gives "
                                 f"{_show(want[col])}")
            self.checked["readings"] += 1
        for idx in sorted(rows):
            self.problem(f"readings row {idx}", "indexes an entry that is not a reading")

    def readings_beyond(self, size: int) -> None:
        for (idx,) in self.conn.execute("SELECT idx FROM readings WHERE idx >= ? OR idx < 0 "
                                        "ORDER BY idx LIMIT ?", (size, MAX_NAMED)):
            self.problem(f"readings row {idx}", f"indexes no entry (the log has {size})")

    def merkle_nodes(self, nodes: Iterable[tuple[int, int, bytes]]) -> None:
        """Check the rows of the subtrees one block completed (subtrees.append_leaves)."""
        by_level: dict[int, list[tuple[int, bytes]]] = {}
        for level, idx, h in nodes:
            by_level.setdefault(level, []).append((idx, h))
        for level, want in by_level.items():
            lo, hi = want[0][0], want[-1][0]
            got = dict(self.conn.execute("SELECT idx, hash FROM merkle_nodes WHERE level = ? AND "
                                         "idx BETWEEN ? AND ?", (level, lo, hi)).fetchall())
            for idx, h in want:
                stored = got.get(idx)
                where = f"merkle_nodes row (level {level}, index {idx})"
                if stored is None:
                    self.problem(where, "missing")
                elif bytes(stored) != h:
                    self.problem(where, "hash differs from the subtree recomputed from the "
                                 "entries")
                self.checked["merkle_nodes"] += 1

    def merkle_extras(self, size: int) -> None:
        """Name rows no subtree of the log accounts for, and count the rows against a tree of
        ``size`` leaves (rows of levels 1 to 3 are expected only in a schema-2 store)."""
        if self._schema() < _SCHEMA_WITHOUT_LOW_NODES:
            lowest, expected = 1, size - size.bit_count()
        else:
            lowest, expected = MIN_STORED_LEVEL, stored_node_count(size)
        total = self.conn.execute("SELECT COUNT(*) FROM merkle_nodes").fetchone()[0]
        if total == expected:
            return
        # (idx + 1) << level > size, as idx >= size >> level: SQLite's << overflows (a row of
        # level 63 or more, or a huge idx, would pass), its >> does not.
        rows = self.conn.execute("SELECT level, idx FROM merkle_nodes WHERE level < ? OR idx < 0 "
                                 "OR idx >= (? >> level) LIMIT ?", (lowest, size, MAX_NAMED))
        for level, idx in rows:
            if level < 1 or idx < 0 or idx >= size >> level:
                detail = f"is not a subtree of the log's {size} entries"
            else:
                detail = (f"is below level {MIN_STORED_LEVEL}: smaller subtrees are hashed from "
                          "the entries, not stored")
            self.problem(f"merkle_nodes row (level {level}, index {idx})", detail)
        if total < expected:
            self.problem("merkle_nodes", f"{total} rows, a tree of {size} needs {expected}")

    def _schema(self) -> int:
        """The store's schema version from `meta`; an unreadable one counts as the newest, whose
        rules are the strictest."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        try:
            return int(bytes(row[0]).decode())
        except (TypeError, ValueError):
            return _SCHEMA_WITHOUT_LOW_NODES

    def devices(self, replayed: dict[str, ReplayedDevice]) -> None:
        rows = {r["dev"]: r for r in self.conn.execute("SELECT * FROM devices")}
        for dev in sorted(replayed):
            want = replayed[dev].row()
            got = rows.pop(dev, None)
            if got is None:
                self.problem(f"devices row {dev!r}", "missing (the log enrols this device)")
                continue
            for col in _DEVICE_COLUMNS:
                g = bytes(got[col]) if isinstance(got[col], bytes | memoryview) else got[col]
                if g != want[col]:
                    self.problem(f"devices row {dev!r}", f"{col} is {_show(g)}, the log "
                                 f"replay gives {_show(want[col])}")
            self.checked["devices"] += 1
        for dev in sorted(rows):
            self.problem(f"devices row {dev!r}", "the log never enrols this device")
