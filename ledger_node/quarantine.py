"""The bounded quarantine: rejected input with its raw bytes, and counters for the rest.

Everything validation rejects (DESIGN.md §6) reaches `QuarantineBook.insert` with its raw
bytes, time, topic and reason. The `quarantine` table keeps at most `max_rows` rows and
`max_bytes` bytes of raw input. Beyond that, items are *summarised*: counted in
`quarantine_summary(reason, dev, count, bytes, first_seen, last_seen)`, so that

    everything ever rejected = rows in `quarantine` + SUM(count) in `quarantine_summary`

and nothing is dropped silently, however long a flood lasts.

Policy: **oldest-first eviction.** When a write would pass a cap, the oldest rows are folded
into the summary (by their own reason, device and time) and deleted, down to 90% of the
cap, so that eviction runs once per ~10% of the cap rather than on every block. The table
is therefore always the most recent rejected input, which is what an operator looking at an
ongoing problem wants; an old flood cannot stop a new problem from being stored, and the
summary keeps the old flood's extent. (A batch larger than the cap stores its newest rows.)

The summary is bounded too: an attacker can make up device ids. Beyond `SUMMARY_MAX_ROWS`
distinct (reason, device) pairs, new pairs are counted under device `*` (never a valid
device id) for their reason.

`dev` of a row is the device the input names or, when it names none (bytes that do not
parse), the device of the `up` topic it came on; '' in the summary when there is neither.

`ingest_overload` (OVERLOAD) is the reason of messages the node's ingest summarised without
examining them, because its queue for suspect input was full (ledger_node.ingest).

Item ids only grow, even when eviction empties the table (the last id is kept in `meta`),
so an id names one item forever and cursors over ids stay stable.

Concurrency: one `QuarantineBook` per writer `Store`, used from the apply thread only, inside
the caller's transaction. Its counters are in memory; `reload()` after a rollback.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from trustfleet.topics import parse_up_topic

OVERLOAD: Final = "ingest_overload"
OTHER_DEVICES: Final = "*"
SUMMARY_MAX_ROWS: Final = 10_000
DEFAULT_MAX_ROWS: Final = 100_000
DEFAULT_MAX_BYTES: Final = 256 * 1024 * 1024
LOW_WATER: Final = 0.9

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS quarantine_summary (
  reason TEXT NOT NULL, dev TEXT NOT NULL, count INTEGER NOT NULL, bytes INTEGER NOT NULL,
  first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, PRIMARY KEY (reason, dev));
DROP INDEX IF EXISTS quarantine_reason;
CREATE INDEX IF NOT EXISTS quarantine_reason_id ON quarantine (reason, id);
CREATE INDEX IF NOT EXISTS quarantine_dev_id ON quarantine (dev, id);
CREATE INDEX IF NOT EXISTS quarantine_received ON quarantine (received);
"""


class RowLike(Protocol):
    """What the book needs of a rejected item (ledger_node.store.QuarantineRow)."""

    @property
    def received(self) -> int: ...
    @property
    def reason(self) -> str: ...
    @property
    def detail(self) -> str: ...
    @property
    def topic(self) -> str: ...
    @property
    def dev(self) -> str | None: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> bytes: ...
    @property
    def raw(self) -> bytes: ...


@dataclass(frozen=True)
class QuarantineLimits:
    """Caps on what the quarantine table stores; 0 rows means summarise everything."""

    max_rows: int = DEFAULT_MAX_ROWS
    max_bytes: int = DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class Tally:
    """Items of one (reason, device) counted rather than stored."""

    reason: str
    dev: str | None
    count: int
    bytes: int
    first_seen: int
    last_seen: int


class QuarantineBook:
    """Bounded writes to `quarantine` and `quarantine_summary` (see the module docstring)."""

    def __init__(self, conn: sqlite3.Connection, limits: QuarantineLimits) -> None:
        self.conn = conn
        self.limits = limits
        self.rows = self.bytes = self.summary_rows = self.last_id = 0
        self.reload()

    def reload(self) -> None:
        """Re-read the counters from the table (at open, and after a rolled-back write)."""
        row = self.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(raw)), 0) FROM quarantine").fetchone()
        self.rows, self.bytes = int(row[0]), int(row[1])
        self.summary_rows = int(
            self.conn.execute("SELECT COUNT(*) FROM quarantine_summary").fetchone()[0])
        top = self.conn.execute("SELECT MAX(id) FROM quarantine").fetchone()[0] or 0
        kept = self.conn.execute("SELECT value FROM meta WHERE key = 'quarantine_last_id'"
                                 ).fetchone()
        self.last_id = max(int(top), int(bytes(kept[0]).decode()) if kept else 0)

    def insert(self, rows: Sequence[RowLike]) -> None:
        """Store `rows` (oldest first), evicting or summarising as the caps require."""
        if not rows:
            return
        keep = self._fitting_tail(rows)
        self.count([_tally(r) for r in rows[:len(rows) - len(keep)]])
        new_bytes = sum(len(r.raw) for r in keep)
        if (self.rows + len(keep) > self.limits.max_rows
                or self.bytes + new_bytes > self.limits.max_bytes):
            self._evict(int(self.limits.max_rows * LOW_WATER) - len(keep),
                        int(self.limits.max_bytes * LOW_WATER) - new_bytes)
        if not keep:
            return
        first = self.last_id + 1
        self.conn.executemany(
            "INSERT INTO quarantine (id, received, reason, detail, topic, dev, size, sha256, "
            "raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(first + i, q.received, q.reason, q.detail, q.topic, device_of(q), q.size,
              q.sha256, q.raw) for i, q in enumerate(keep)])
        self.last_id += len(keep)
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('quarantine_last_id', ?)",
                          (str(self.last_id).encode(),))
        self.rows += len(keep)
        self.bytes += new_bytes

    def count(self, tallies: Iterable[Tally]) -> None:
        """Add tallies to the summary (inside the caller's transaction)."""
        merged: dict[tuple[str, str], list[int]] = {}
        for t in tallies:
            key = (t.reason, t.dev or "")
            got = merged.get(key)
            if got is None:
                merged[key] = [t.count, t.bytes, t.first_seen, t.last_seen]
            else:
                got[0] += t.count
                got[1] += t.bytes
                got[2] = min(got[2], t.first_seen)
                got[3] = max(got[3], t.last_seen)
        for (reason, dev), (n, size, first, last) in merged.items():
            self._upsert(reason, dev, n, size, first, last)

    def _upsert(self, reason: str, dev: str, n: int, size: int, first: int, last: int) -> None:
        c = self.conn
        exists = "SELECT 1 FROM quarantine_summary WHERE reason = ? AND dev = ?"
        if c.execute(exists, (reason, dev)).fetchone() is None:
            new = True
            if self.summary_rows >= SUMMARY_MAX_ROWS:
                dev = OTHER_DEVICES
                new = c.execute(exists, (reason, dev)).fetchone() is None
            self.summary_rows += new
        c.execute(
            "INSERT INTO quarantine_summary VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (reason, dev) DO UPDATE SET count = count + excluded.count, "
            "bytes = bytes + excluded.bytes, first_seen = MIN(first_seen, excluded.first_seen), "
            "last_seen = MAX(last_seen, excluded.last_seen)",
            (reason, dev, n, size, first, last))

    def _fitting_tail(self, rows: Sequence[RowLike]) -> Sequence[RowLike]:
        """The newest rows of a batch that fit the caps on their own."""
        n, size = 0, 0
        for q in reversed(rows):
            if n + 1 > self.limits.max_rows or size + len(q.raw) > self.limits.max_bytes:
                break
            n += 1
            size += len(q.raw)
        return rows[len(rows) - n:]

    def _evict(self, rows_target: int, bytes_target: int) -> None:
        """Fold the oldest rows into the summary and delete them, until at most
        `rows_target` rows and `bytes_target` bytes remain."""
        c = self.conn
        need_rows = self.rows - max(rows_target, 0)
        need_bytes = self.bytes - max(bytes_target, 0)
        cutoff, freed_rows, freed_bytes = None, 0, 0
        cursor = c.execute("SELECT id, length(raw) FROM quarantine ORDER BY id")
        while (freed_rows < need_rows or freed_bytes < need_bytes) and \
                (batch := cursor.fetchmany(1000)):
            for row_id, size in batch:
                cutoff = row_id
                freed_rows += 1
                freed_bytes += size
                if freed_rows >= need_rows and freed_bytes >= need_bytes:
                    break
        cursor.close()
        if cutoff is None:
            return
        groups = c.execute(
            "SELECT reason, dev, COUNT(*), SUM(size), MIN(received), MAX(received) "
            "FROM quarantine WHERE id <= ? GROUP BY reason, dev", (cutoff,)).fetchall()
        self.count(Tally(g[0], g[1], g[2], g[3], g[4], g[5]) for g in groups)
        c.execute("DELETE FROM quarantine WHERE id <= ?", (cutoff,))
        self.rows -= freed_rows
        self.bytes -= freed_bytes


def device_of(q: RowLike) -> str | None:
    """The device an item is about: the one it names, else the one its topic names."""
    if q.dev is not None:
        return q.dev
    topic = parse_up_topic(q.topic)
    return topic.device if topic else None


def _tally(q: RowLike) -> Tally:
    return Tally(q.reason, device_of(q), 1, q.size, q.received, q.received)
