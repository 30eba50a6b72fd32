"""The durable outbox: every reading is on disk before it is signed, and leaves only on receipt.

Life of a reading (one row):
  1. `add(samples)`       stored unsealed (no seq yet), with its `keep` mark (never thinned,
                          see edge_agent.retention); fsync'd with the transaction.
  2. `seal(..., limit)`   in insertion order, only as many as the send window has room for:
                          seq = last seq + 1, prev = SHA-256 of the last envelope, signed by
                          the HSM; seq, envelope and the chain state are written in one
                          transaction. A crash before that commit loses only a signature
                          nobody has seen, so the seq is safely reused. Sealing late keeps a
                          long backlog unsealed, so thinning it never leaves a seq gap.
     or `seal_batch(...)`  batch signing (DESIGN.md §4, trustfleet.batch): the first n
                          unsealed rows get seq last+1..last+n and their payloads, ONE HSM
                          signature covers the Merkle root of those payloads, and each row
                          stores its self-contained batched reading as its envelope, all in
                          one transaction (same crash rule). `prev` links by chain hash:
                          SHA-256 of a single envelope's bytes, SHA-256 of a batched
                          reading's payload; the chain table keeps the chain hash of the
                          last sealed reading, so the modes can alternate across restarts.
                          Everything after sealing treats a batched reading as an envelope.
  3. publish             in seq order: sealed readings never sent (`unsent`); and when the
                          lowest unreceipted one has waited longer than the resend timeout
                          (doubling with each attempt up to a cap: `oldest_timed_out`), the
                          whole window again from there (`sealed_after`), so resends never
                          overtake each other and the ledger sees seq in order.
                          (`due` is the per-reading view of the same timers.)
  4. `apply_receipt(seq)` a ledger receipt covering seq deletes rows up to it. A broker's
                          PUBACK is not a receipt: a broker can acknowledge and then crash.

Send times (`sent_at`) are on the caller's monotonic clock, never the wall clock (an RTC
that jumps back to 1970 must not stop resends); opening the outbox clears them, so a
restarted agent resends its whole window once (the ledger acknowledges duplicates).

Bounded on disk: `used_bytes()` counts live pages; `thin()` applies edge_agent.retention.

Concurrency rule: one thread at a time uses an Outbox (the agent's main loop; it may be
made in another thread). Other processes may
open the file read-only (`trustfleet agent status`): WAL lets them read while it writes.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_agent.collectors.base import Sample
from edge_agent.errors import OutboxError
from edge_agent.retention import pick_kind_to_thin
from trustfleet.batch import MAX_BATCH, sign_batch
from trustfleet.cose import SignFunction, sign1
from trustfleet.payload import GENESIS_PREV, Reading, encode_payload

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
  id INTEGER PRIMARY KEY, kind TEXT NOT NULL, d TEXT NOT NULL, t INTEGER NOT NULL,
  ts TEXT NOT NULL, seq INTEGER UNIQUE, envelope BLOB, sent_at INTEGER, attempts INTEGER NOT NULL
  DEFAULT 0);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (seq, sent_at);
CREATE TABLE IF NOT EXISTS chain (
  id INTEGER PRIMARY KEY CHECK (id = 1), last_seq INTEGER NOT NULL, last_hash BLOB NOT NULL,
  receipt_seq INTEGER NOT NULL, receipt_height INTEGER NOT NULL);
INSERT OR IGNORE INTO chain VALUES (1, 0, zeroblob(32), 0, -1);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_MIGRATIONS = (
    ("keep", "ALTER TABLE outbox ADD COLUMN keep INTEGER NOT NULL DEFAULT 0"),
)
_COUNTERS = ("thinned", "dropped", "receipt_at_ms")


@dataclass(frozen=True)
class OutboxStats:
    unsealed: int
    unreceipted: int
    last_seq: int
    receipt_seq: int
    receipt_height: int
    thinned: int = 0
    dropped: int = 0
    receipt_at_ms: int = 0
    used_bytes: int = 0

    @property
    def backlog(self) -> int:
        """Readings not yet covered by a ledger receipt (sealed or not)."""
        return self.unsealed + self.unreceipted


class Outbox:
    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        try:
            if readonly:
                self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                            isolation_level=None)
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA journal_size_limit=4194304")
            self.conn.executescript(_SCHEMA)
            columns = {row[1] for row in self.conn.execute("PRAGMA table_info(outbox)")}
            for column, sql in _MIGRATIONS:
                if column not in columns:
                    self.conn.execute(sql)
            # send times belong to the previous run's monotonic clock: resend once
            self.conn.execute("UPDATE outbox SET sent_at = NULL WHERE sent_at IS NOT NULL")
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"cannot open outbox {path}: {exc}") from exc

    def close(self) -> None:
        self.conn.close()

    def add(self, samples: Sequence[Sample], keep: Sequence[bool] | None = None) -> None:
        """Store samples durably, before anything else happens to them.

        `keep[i]` marks sample i as never thinned (default: none are).
        """
        if not samples:
            return
        marks = list(keep) if keep is not None else [False] * len(samples)
        with _tx(self.conn):
            self.conn.executemany(
                "INSERT INTO outbox (kind, d, t, ts, keep) VALUES (?, ?, ?, ?, ?)",
                [(s.kind, json.dumps(s.values, sort_keys=True, separators=(",", ":")), s.t_ms,
                  s.time_source, int(k)) for s, k in zip(samples, marks, strict=True)])

    def seal(self, device_id: str, kid: bytes, sign: SignFunction, limit: int = 500) -> int:
        """Assign seq and prev to up to `limit` unsealed rows in order and sign them."""
        if limit <= 0:
            return 0
        rows = self.conn.execute(
            "SELECT id, kind, d, t, ts FROM outbox WHERE seq IS NULL ORDER BY id LIMIT ?",
            (limit,)).fetchall()
        sealed = 0
        for row_id, kind, d, t, ts in rows:
            last_seq, last_hash = self.conn.execute(
                "SELECT last_seq, last_hash FROM chain WHERE id = 1").fetchone()
            seq = last_seq + 1
            prev = bytes(last_hash) if seq > 1 else GENESIS_PREV
            reading = Reading(dev=device_id, seq=seq, prev=prev, t=t, ts=ts, k=kind,
                              d=json.loads(d))
            envelope = sign1(encode_payload(reading), kid, sign)
            with _tx(self.conn):
                self.conn.execute("UPDATE outbox SET seq = ?, envelope = ? WHERE id = ?",
                                  (seq, envelope, row_id))
                self.conn.execute("UPDATE chain SET last_seq = ?, last_hash = ? WHERE id = 1",
                                  (seq, hashlib.sha256(envelope).digest()))
            sealed += 1
        return sealed

    def seal_batch(self, device_id: str, kid: bytes, sign: SignFunction, n: int,
                   t_ms: int) -> tuple[int, int]:
        """Seal the first `n` unsealed rows (in order) under ONE signature, a batch made at
        device time `t_ms`. Returns (readings sealed, highest row id sealed; 0 if none)."""
        if not 1 <= n <= MAX_BATCH:
            raise ValueError(f"a batch seals 1 to {MAX_BATCH} readings, not {n}")
        rows = self.conn.execute(
            "SELECT id, kind, d, t, ts FROM outbox WHERE seq IS NULL ORDER BY id LIMIT ?",
            (n,)).fetchall()
        if not rows:
            return 0, 0
        last_seq, last_hash = self.conn.execute(
            "SELECT last_seq, last_hash FROM chain WHERE id = 1").fetchone()
        prev = bytes(last_hash) if last_seq > 0 else GENESIS_PREV
        payloads: list[bytes] = []
        for i, (_, kind, d, t, ts) in enumerate(rows):
            payload = encode_payload(Reading(dev=device_id, seq=last_seq + 1 + i, prev=prev,
                                             t=t, ts=ts, k=kind, d=json.loads(d)))
            prev = hashlib.sha256(payload).digest()  # the chain hash of a batched reading
            payloads.append(payload)
        items = sign_batch(payloads, device_id, last_seq + 1, max(0, t_ms), kid, sign)
        with _tx(self.conn):
            self.conn.executemany("UPDATE outbox SET seq = ?, envelope = ? WHERE id = ?",
                                  [(last_seq + 1 + i, item, row[0])
                                   for i, (row, item) in enumerate(zip(rows, items,
                                                                       strict=True))])
            self.conn.execute("UPDATE chain SET last_seq = ?, last_hash = ? WHERE id = 1",
                              (last_seq + len(rows), prev))
        return len(rows), int(rows[-1][0])

    def unsealed_span(self, cap: int = MAX_BATCH) -> tuple[int, int, int]:
        """(count, lowest row id, highest row id) of unsealed readings, the count at most
        `cap`; (0, 0, 0) if none. Index lookups only: cheap however long the backlog."""
        count = self.conn.execute("SELECT COUNT(*) FROM (SELECT 1 FROM outbox WHERE seq IS "
                                  "NULL LIMIT ?)", (cap,)).fetchone()[0]
        if not count:
            return 0, 0, 0
        lo = self.conn.execute("SELECT id FROM outbox WHERE seq IS NULL ORDER BY id "
                               "LIMIT 1").fetchone()[0]
        hi = self.conn.execute("SELECT id FROM outbox WHERE seq IS NULL ORDER BY id DESC "
                               "LIMIT 1").fetchone()[0]
        return int(count), int(lo), int(hi)

    def due(self, now_ms: int, resend_after_ms: int, limit: int,
            resend_max_ms: int | None = None) -> list[tuple[int, bytes]]:
        """(seq, envelope) to publish now, lowest seq first.

        A reading sent `attempts` times is due again `resend_after_ms * 2**(attempts-1)`
        (at most `resend_max_ms`) after its last send. `now_ms` is on a monotonic clock.
        """
        cap = resend_max_ms if resend_max_ms is not None else resend_after_ms
        rows = self.conn.execute(
            "SELECT seq, envelope FROM outbox WHERE seq IS NOT NULL AND (sent_at IS NULL OR "
            "sent_at + MIN(?, ? << MIN(MAX(attempts - 1, 0), 20)) <= ?) ORDER BY seq LIMIT ?",
            (max(cap, resend_after_ms), resend_after_ms, now_ms, limit)).fetchall()
        return [(seq, bytes(env)) for seq, env in rows]

    def oldest_timed_out(self, now_ms: int, resend_after_ms: int,
                         resend_max_ms: int) -> int | None:
        """The lowest unreceipted seq if it was sent and its resend timer ran out, else None.

        Its timer is `resend_after_ms * 2**(attempts-1)`, at most `resend_max_ms`.
        """
        row = self.conn.execute(
            "SELECT seq, sent_at, attempts FROM outbox WHERE seq IS NOT NULL ORDER BY seq "
            "LIMIT 1").fetchone()
        if row is None or row[1] is None:
            return None
        seq, sent_at, attempts = row
        timer = min(max(resend_max_ms, resend_after_ms),
                    resend_after_ms << min(max(attempts - 1, 0), 20))
        return int(seq) if sent_at + timer <= now_ms else None

    def sent_at(self, seq: int) -> int | None:
        row = self.conn.execute("SELECT sent_at FROM outbox WHERE seq = ?", (seq,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def sealed_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        """(seq, envelope) of sealed, unreceipted readings above `seq`, lowest first."""
        rows = self.conn.execute(
            "SELECT seq, envelope FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit)).fetchall()
        return [(s, bytes(env)) for s, env in rows]

    def unsent(self, limit: int) -> list[tuple[int, bytes]]:
        """(seq, envelope) of sealed readings never sent (this run), lowest first."""
        rows = self.conn.execute(
            "SELECT seq, envelope FROM outbox WHERE seq IS NOT NULL AND sent_at IS NULL "
            "ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [(s, bytes(env)) for s, env in rows]

    def mark_sent(self, seqs: list[int], now_ms: int) -> None:
        with _tx(self.conn):
            self.conn.executemany(
                "UPDATE outbox SET sent_at = ?, attempts = attempts + 1 WHERE seq = ?",
                [(now_ms, s) for s in seqs])

    def apply_receipt(self, seq: int, height: int, at_ms: int | None = None) -> int:
        """Drop readings up to `seq` (the ledger's highest contiguous seq). Returns how many."""
        with _tx(self.conn):
            cur = self.conn.execute("DELETE FROM outbox WHERE seq IS NOT NULL AND seq <= ?",
                                    (seq,))
            self.conn.execute(
                "UPDATE chain SET receipt_seq = MAX(receipt_seq, ?), "
                "receipt_height = MAX(receipt_height, ?) WHERE id = 1", (seq, height))
            if at_ms is not None:
                self._set("receipt_at_ms", at_ms)
        return cur.rowcount

    def in_flight(self) -> int:
        """Sealed readings not yet receipted (the send window's occupancy)."""
        return int(self.conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE seq IS NOT NULL").fetchone()[0])

    # -- bounded on disk --------------------------------------------------------------------
    def used_bytes(self) -> int:
        """Bytes of live pages in the database file (freed pages are reused, not counted)."""
        page_size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size)

    def thinnable_counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT kind, COUNT(*) FROM outbox WHERE seq IS NULL AND "
                                 "keep = 0 GROUP BY kind").fetchall()
        return {kind: n for kind, n in rows}

    def thin(self, target_bytes: int) -> dict[str, int]:
        """Halve thinnable kinds (edge_agent.retention) until used bytes <= target.

        Returns how many readings of each kind were deleted.
        """
        removed: dict[str, int] = {}
        while self.used_bytes() > target_bytes:
            kind = pick_kind_to_thin(self.thinnable_counts())
            if kind is None:
                break
            with _tx(self.conn):
                cur = self.conn.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() "
                    "OVER (ORDER BY id) AS rn FROM outbox WHERE seq IS NULL AND keep = 0 "
                    "AND kind = ?) WHERE rn % 2 = 0)", (kind,))
                self._bump("thinned", cur.rowcount)
            removed[kind] = removed.get(kind, 0) + cur.rowcount
        return removed

    def count_dropped(self, n: int) -> None:
        with _tx(self.conn):
            self._bump("dropped", n)

    # -- reporting --------------------------------------------------------------------------
    def stats(self) -> OutboxStats:
        unsealed = self.conn.execute("SELECT COUNT(*) FROM outbox WHERE seq IS NULL").fetchone()[0]
        unreceipted = self.conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE seq IS NOT NULL").fetchone()[0]
        last_seq, receipt_seq, height = self.conn.execute(
            "SELECT last_seq, receipt_seq, receipt_height FROM chain WHERE id = 1").fetchone()
        meta = self._meta()
        return OutboxStats(unsealed, unreceipted, last_seq, receipt_seq, height,
                           thinned=meta.get("thinned", 0), dropped=meta.get("dropped", 0),
                           receipt_at_ms=meta.get("receipt_at_ms", 0),
                           used_bytes=self.used_bytes())

    def _meta(self) -> dict[str, int]:
        try:
            rows = self.conn.execute("SELECT key, value FROM meta").fetchall()
        except sqlite3.OperationalError:  # an outbox written before the meta table existed
            return {}
        return {key: int(value) for key, value in rows if key in _COUNTERS}

    def _bump(self, key: str, n: int) -> None:
        self.conn.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                          "value = value + excluded.value", (key, n))

    def _set(self, key: str, value: int) -> None:
        self.conn.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                          "value = excluded.value", (key, value))


class _tx:
    """BEGIN IMMEDIATE ... COMMIT (or ROLLBACK) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
