"""The durable outbox: every reading is on disk before it is signed, and leaves only on receipt.

Life of a reading (one row):
  1. `add(sample)`        stored unsealed (no seq yet); fsync'd with the transaction.
  2. `seal(...)`          in insertion order: seq = last seq + 1, prev = SHA-256 of the last
                          envelope, signed by the HSM; seq, envelope and the chain state are
                          written in one transaction. A crash before that commit loses only a
                          signature nobody has seen, so the seq is safely reused.
  3. `due(...)`           sealed and not receipted, never sent or sent longer ago than the
                          resend timeout: (re)published in seq order.
  4. `apply_receipt(seq)` a ledger receipt covering seq deletes rows up to it. A broker's
                          PUBACK is not a receipt: a broker can acknowledge and then crash.

Concurrency rule: one thread uses an Outbox (the agent's main loop).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from edge_agent.collectors.base import Sample
from edge_agent.errors import OutboxError
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
"""


@dataclass(frozen=True)
class OutboxStats:
    unsealed: int
    unreceipted: int
    last_seq: int
    receipt_seq: int
    receipt_height: int


class Outbox:
    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(path, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"cannot open outbox {path}: {exc}") from exc

    def close(self) -> None:
        self.conn.close()

    def add(self, samples: list[Sample]) -> None:
        """Store samples durably, before anything else happens to them."""
        if not samples:
            return
        with _tx(self.conn):
            self.conn.executemany(
                "INSERT INTO outbox (kind, d, t, ts) VALUES (?, ?, ?, ?)",
                [(s.kind, json.dumps(s.values, sort_keys=True), s.t_ms, s.time_source)
                 for s in samples])

    def seal(self, device_id: str, kid: bytes, sign: SignFunction, limit: int = 500) -> int:
        """Assign seq and prev to unsealed rows in order and sign them. Returns how many."""
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

    def due(self, now_ms: int, resend_after_ms: int, limit: int) -> list[tuple[int, bytes]]:
        """(seq, envelope) to publish now, lowest seq first."""
        rows = self.conn.execute(
            "SELECT seq, envelope FROM outbox WHERE seq IS NOT NULL "
            "AND (sent_at IS NULL OR sent_at <= ?) ORDER BY seq LIMIT ?",
            (now_ms - resend_after_ms, limit)).fetchall()
        return [(seq, bytes(env)) for seq, env in rows]

    def mark_sent(self, seqs: list[int], now_ms: int) -> None:
        with _tx(self.conn):
            self.conn.executemany(
                "UPDATE outbox SET sent_at = ?, attempts = attempts + 1 WHERE seq = ?",
                [(now_ms, s) for s in seqs])

    def apply_receipt(self, seq: int, height: int) -> int:
        """Drop readings up to `seq` (the ledger's highest contiguous seq). Returns how many."""
        with _tx(self.conn):
            cur = self.conn.execute("DELETE FROM outbox WHERE seq IS NOT NULL AND seq <= ?",
                                    (seq,))
            self.conn.execute(
                "UPDATE chain SET receipt_seq = MAX(receipt_seq, ?), "
                "receipt_height = MAX(receipt_height, ?) WHERE id = 1", (seq, height))
        return cur.rowcount

    def stats(self) -> OutboxStats:
        unsealed = self.conn.execute("SELECT COUNT(*) FROM outbox WHERE seq IS NULL").fetchone()[0]
        unreceipted = self.conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE seq IS NOT NULL").fetchone()[0]
        last_seq, receipt_seq, height = self.conn.execute(
            "SELECT last_seq, receipt_seq, receipt_height FROM chain WHERE id = 1").fetchone()
        return OutboxStats(unsealed, unreceipted, last_seq, receipt_seq, height)


class _tx:
    """BEGIN IMMEDIATE ... COMMIT (or ROLLBACK) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
