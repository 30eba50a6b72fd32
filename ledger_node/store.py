"""The node's SQLite store: one file per node, WAL mode, one transaction per block.

Tables: `blocks` (header bytes, hash, compact Merkle range after the block), `block_sigs`,
`entries` (the log: leaf index -> entry bytes), `merkle_nodes` (the hash of every perfect
subtree of 16 or more leaves, for proofs: see ledger_node.subtrees), `readings` (decoded
index of reading entries), `devices` (state derived from the log), `quarantine` and
`quarantine_summary` (rejected input, node-local, not part of the log, bounded: see
ledger_node.quarantine) and `meta`.

Schema versions: 1 had no `merkle_nodes`; 2 stored every subtree of two or more leaves (levels
1 to 3 too). Opening an older store with the writer brings it to version 3 in one transaction:
from version 1 it rebuilds `merkle_nodes` from `entries`, from version 2 it deletes the rows
below subtrees.MIN_STORED_LEVEL. A node that knows only version 2 refuses a version-3 store
(it would look for the deleted rows).

Concurrency rule: one writer connection, used only by the node's apply thread; readers
(API, verify) open their own read-only connections (`open_reader`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ledger_node.errors import StoreError
from ledger_node.merkle import CompactRange, leaf_hash
from ledger_node.quarantine import SCHEMA as QUARANTINE_SCHEMA
from ledger_node.quarantine import QuarantineBook, QuarantineLimits, Tally
from ledger_node.subtrees import MIN_STORED_LEVEL, StoredNode, append_leaves
from ledger_node.validate import DeviceState

SCHEMA_VERSION = 3
_BACKFILL_CHUNK = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
  height INTEGER PRIMARY KEY, hash BLOB NOT NULL UNIQUE, header BLOB NOT NULL,
  time INTEGER NOT NULL, first INTEGER NOT NULL, count INTEGER NOT NULL,
  size INTEGER NOT NULL, frontier BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS block_sigs (
  height INTEGER NOT NULL, node TEXT NOT NULL, sig BLOB NOT NULL, PRIMARY KEY (height, node));
CREATE TABLE IF NOT EXISTS entries (
  idx INTEGER PRIMARY KEY, height INTEGER NOT NULL, kind TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS merkle_nodes (
  level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
  PRIMARY KEY (level, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS readings (
  idx INTEGER PRIMARY KEY, dev TEXT NOT NULL, seq INTEGER NOT NULL, hash BLOB NOT NULL,
  t INTEGER NOT NULL, ts TEXT NOT NULL, k TEXT NOT NULL, d TEXT NOT NULL, flags TEXT NOT NULL,
  height INTEGER NOT NULL, ledger_time INTEGER NOT NULL, UNIQUE (dev, seq));
CREATE INDEX IF NOT EXISTS readings_dev_t ON readings (dev, t);
-- A block's readings are found by their entry range [first, first + count) on the primary
-- key; an index on height would cost every reading an insert for nothing (older stores had
-- one: dropped on open).
DROP INDEX IF EXISTS readings_height;
-- The few non-reading entries (genesis, operator entries): node start-up and proof bundles
-- look them up without scanning the log. Queries must say `kind <> 'reading'` to use it.
CREATE INDEX IF NOT EXISTS entries_admin ON entries (idx) WHERE kind <> 'reading';
CREATE TABLE IF NOT EXISTS devices (
  dev TEXT PRIMARY KEY, fleet TEXT NOT NULL, key BLOB NOT NULL, kid BLOB NOT NULL UNIQUE,
  enrolled_height INTEGER NOT NULL, revoked_height INTEGER, last_seq INTEGER NOT NULL,
  contiguous_seq INTEGER NOT NULL, last_seen INTEGER, last_t INTEGER, readings INTEGER NOT NULL,
  gaps INTEGER NOT NULL, prev_mismatches INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
  id INTEGER PRIMARY KEY, received INTEGER NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL,
  topic TEXT NOT NULL, dev TEXT, size INTEGER NOT NULL, sha256 BLOB NOT NULL, raw BLOB NOT NULL);
-- Shipments, contracts, contract events and the audit log: state derived from the log
-- (ledger_node.world), written in the transaction of the block that changed it.
CREATE TABLE IF NOT EXISTS shipments (
  id TEXT PRIMARY KEY, state TEXT NOT NULL, doc TEXT NOT NULL,
  created_height INTEGER NOT NULL, updated_height INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS shipment_parties (
  shipment TEXT NOT NULL, org TEXT NOT NULL, role TEXT NOT NULL,
  PRIMARY KEY (shipment, org, role)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS shipment_parties_org ON shipment_parties (org);
CREATE TABLE IF NOT EXISTS shipment_devices (
  shipment TEXT NOT NULL, dev TEXT NOT NULL, start INTEGER NOT NULL, "end" INTEGER,
  PRIMARY KEY (shipment, dev, start)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS shipment_devices_dev ON shipment_devices (dev, start);
CREATE TABLE IF NOT EXISTS events (
  idx INTEGER PRIMARY KEY, height INTEGER NOT NULL, ledger_time INTEGER NOT NULL,
  contract TEXT NOT NULL, version INTEGER NOT NULL, event TEXT NOT NULL, shipment TEXT, dev TEXT,
  at INTEGER NOT NULL, state TEXT, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_shipment ON events (shipment, idx);
CREATE TABLE IF NOT EXISTS contracts (
  name TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL, effective INTEGER NOT NULL,
  retired INTEGER, doc TEXT NOT NULL, entry INTEGER NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS audit (
  idx INTEGER PRIMARY KEY, height INTEGER NOT NULL, ledger_time INTEGER NOT NULL,
  doc TEXT NOT NULL);
""" + QUARANTINE_SCHEMA


_DEVICE_COLUMNS = ("dev", "fleet", "key", "kid", "enrolled_height", "revoked_height", "last_seq",
                   "contiguous_seq", "last_seen", "last_t", "readings", "gaps", "prev_mismatches")


@dataclass(frozen=True)
class Tip:
    height: int
    hash: bytes
    time: int
    size: int
    frontier: bytes


ReadingRow = tuple[int, str, int, bytes, int, str, str, str, str, int, int]
"""A `readings` row as the block writes it, in column order: (idx, dev, seq, hash, t, ts, k,
d, flags, height, ledger_time), with `d` as stored (ledger_node.reading_json, made by the
verification workers) and the flags comma-separated. A plain tuple: the apply thread makes one
per reading, and the store writes them as they come."""


@dataclass(frozen=True)
class QuarantineRow:
    received: int
    reason: str
    detail: str
    topic: str
    dev: str | None
    size: int
    sha256: bytes
    raw: bytes


@dataclass(frozen=True)
class EventRow:
    idx: int
    contract: str
    version: int
    event: str
    shipment: str | None
    dev: str | None
    at: int
    state: str | None
    doc: str


@dataclass(frozen=True)
class ShipmentRow:
    id: str
    state: str
    doc: str
    parties: tuple[tuple[str, str], ...]
    devices: tuple[tuple[str, int, int | None], ...]
    created_height: int


@dataclass(frozen=True)
class ContractRow:
    name: str
    version: int
    status: str
    effective: int
    retired: int | None
    doc: str
    entry: int


@dataclass
class WorldDelta:
    """What one block changes in the world's tables (written in the block's transaction)."""

    shipments: list[ShipmentRow] = field(default_factory=list)
    contracts: list[ContractRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    audit: list[tuple[int, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.shipments or self.contracts or self.events or self.audit)


@dataclass(frozen=True)
class BlockRecord:
    """Everything one block writes, committed in one transaction."""

    height: int
    hash: bytes
    header: bytes
    time: int
    first: int
    count: int
    size: int
    frontier: bytes
    sigs: Sequence[tuple[str, bytes]]
    entries: Sequence[tuple[str, bytes]]
    readings: Sequence[ReadingRow]
    devices: Sequence[DeviceState]
    quarantine: Sequence[QuarantineRow]
    nodes: Sequence[StoredNode] = ()
    """Perfect subtrees the block's entries complete (ledger_node.subtrees.append_leaves)."""
    world: WorldDelta | None = None
    """Shipments, contracts, contract events and audit rows the block changes."""


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                                   timeout=30)
        else:
            conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a committed block is on disk
            # Room for the hot parts of the indexes of a long chain (the default is 2 MiB).
            conn.execute("PRAGMA cache_size=-65536")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open ledger store {path}: {exc}") from exc
    conn.row_factory = sqlite3.Row
    return conn


def open_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection for API handlers and verification."""
    if not path.exists():
        raise StoreError(f"no ledger store at {path}")
    return _connect(path, readonly=True)


@contextmanager
def reading(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection for the duration of a `with` block (one API request)."""
    conn = open_reader(path)
    try:
        yield conn
    finally:
        conn.close()


QuarantineObserver = Callable[[Sequence[QuarantineRow]], None]


class Store:
    """The writer side of the store. Use from one thread only.

    `quarantine` caps the quarantine table (ledger_node.quarantine); the caps in force are
    recorded in `meta` ('quarantine_limits', JSON) for readers. `on_quarantine`, if set, is
    called with every batch of rejected rows before they are written (the node's ingest
    learns from it which topics send bad input).
    """

    def __init__(self, path: Path, *, quarantine: QuarantineLimits | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = _connect(path, readonly=False)
        limits = quarantine or QuarantineLimits()
        with self.conn:
            self.conn.executescript(_SCHEMA)
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                              (str(SCHEMA_VERSION).encode(),))
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('quarantine_limits', ?)",
                              (json.dumps({"max_rows": limits.max_rows,
                                           "max_bytes": limits.max_bytes}).encode(),))
        self._migrate()
        self.quarantine = QuarantineBook(self.conn, limits)
        self.on_quarantine: QuarantineObserver | None = None

    def _migrate(self) -> None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        try:
            version = int(bytes(row[0]).decode())
        except (TypeError, ValueError):
            raise StoreError(f"ledger store {self.path}: unreadable schema version") from None
        if version > SCHEMA_VERSION:
            raise StoreError(f"ledger store {self.path} has schema {version}; this node knows "
                             f"only up to {SCHEMA_VERSION}")
        if version < SCHEMA_VERSION:
            with self.conn:
                if version < 2:
                    self._rebuild_merkle_nodes()
                # Version 2 rows of levels 1..3: proofs now hash those subtrees from `entries`.
                # A range of the (level, idx) primary key; version 3 records that it is done.
                self.conn.execute("DELETE FROM merkle_nodes WHERE level < ?", (MIN_STORED_LEVEL,))
                self.conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'",
                                  (str(SCHEMA_VERSION).encode(),))

    def _rebuild_merkle_nodes(self) -> None:
        """Recompute `merkle_nodes` from the stored entries (inside the caller's transaction)."""
        c = self.conn
        c.execute("DELETE FROM merkle_nodes")
        tree, cursor = CompactRange(), c.execute("SELECT data FROM entries ORDER BY idx")
        while rows := cursor.fetchmany(_BACKFILL_CHUNK):
            tree, nodes = append_leaves(tree, [leaf_hash(bytes(r[0])) for r in rows])
            c.executemany("INSERT INTO merkle_nodes VALUES (?, ?, ?)", nodes)

    def close(self) -> None:
        self.conn.close()

    def tip(self) -> Tip | None:
        row = self.conn.execute(
            "SELECT height, hash, time, size, frontier FROM blocks ORDER BY height DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return Tip(row["height"], row["hash"], row["time"], row["size"], row["frontier"])

    def block_header(self, height: int) -> tuple[bytes, list[tuple[str, bytes]]] | None:
        """Header bytes and (node, signature) pairs of one block."""
        row = self.conn.execute("SELECT header FROM blocks WHERE height = ?", (height,)).fetchone()
        if row is None:
            return None
        sigs = self.conn.execute("SELECT node, sig FROM block_sigs WHERE height = ? ORDER BY node",
                                 (height,)).fetchall()
        return bytes(row[0]), [(s[0], bytes(s[1])) for s in sigs]

    def load_devices(self) -> dict[str, DeviceState]:
        rows = self.conn.execute(f"SELECT {', '.join(_DEVICE_COLUMNS)} FROM devices").fetchall()
        return {r["dev"]: DeviceState(**{c: r[c] for c in _DEVICE_COLUMNS}) for r in rows}

    def reading_hash(self, dev: str, seq: int) -> bytes | None:
        row = self.conn.execute("SELECT hash FROM readings WHERE dev = ? AND seq = ?",
                                (dev, seq)).fetchone()
        return None if row is None else bytes(row[0])

    def commit_block(self, block: BlockRecord) -> None:
        """Write one block and everything it derives, atomically and durably."""
        c = self.conn
        with c, self._quarantine_rollback():
            c.execute("INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                      (block.height, block.hash, block.header, block.time, block.first,
                       block.count, block.size, block.frontier))
            c.executemany("INSERT INTO block_sigs VALUES (?, ?, ?)",
                          [(block.height, node, sig) for node, sig in block.sigs])
            c.executemany("INSERT INTO entries VALUES (?, ?, ?, ?)",
                          [(block.first + i, block.height, kind, data)
                           for i, (kind, data) in enumerate(block.entries)])
            c.executemany("INSERT INTO merkle_nodes VALUES (?, ?, ?)", block.nodes)
            height, time = block.height, block.time
            c.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          block.readings)
            c.executemany(
                f"INSERT OR REPLACE INTO devices ({', '.join(_DEVICE_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in _DEVICE_COLUMNS)})",
                [tuple(getattr(d, col) for col in _DEVICE_COLUMNS) for d in block.devices])
            if block.world:
                _write_world(c, block.world, height, time)
            self._insert_quarantine(block.quarantine)

    def add_quarantine(self, rows: Iterable[QuarantineRow]) -> None:
        with self.conn, self._quarantine_rollback():
            self._insert_quarantine(rows)

    def add_quarantine_summary(self, tallies: Iterable[Tally]) -> None:
        """Count items that were summarised without being stored (ingest overload)."""
        with self.conn, self._quarantine_rollback():
            self.quarantine.count(tallies)

    def _insert_quarantine(self, rows: Iterable[QuarantineRow]) -> None:
        batch = list(rows)
        if batch and self.on_quarantine is not None:
            self.on_quarantine(batch)
        self.quarantine.insert(batch)

    @contextmanager
    def _quarantine_rollback(self) -> Iterator[None]:
        """Re-read the quarantine counters if the transaction around this fails."""
        try:
            yield
        except BaseException:
            self.conn.rollback()
            self.quarantine.reload()
            raise

    def entry(self, idx: int) -> bytes | None:
        row = self.conn.execute("SELECT data FROM entries WHERE idx = ?", (idx,)).fetchone()
        return None if row is None else bytes(row[0])

    def admin_entries(self) -> Iterator[tuple[bytes, int, int]]:
        """(entry, block height, ledger time) of every operator entry, in log order."""
        cur = self.conn.execute(
            "SELECT e.data, e.height, b.time FROM entries e JOIN blocks b ON b.height = e.height "
            "WHERE e.kind <> 'reading' "
            "AND e.kind IN ('device_enrolled', 'device_revoked', 'device_rotated') "
            "ORDER BY e.idx")
        for data, height, time in cur:
            yield bytes(data), height, time

    def iter_entries(self, first: int, count: int) -> Iterator[tuple[int, str, bytes]]:
        cur = self.conn.execute(
            "SELECT idx, kind, data FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx",
            (first, first + count))
        for row in cur:
            yield row[0], row[1], bytes(row[2])


def _write_world(c: sqlite3.Connection, w: WorldDelta, height: int, time: int) -> None:
    """Write one block's world rows (inside the block's transaction)."""
    c.executemany(
        "INSERT INTO shipments VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
        "state = excluded.state, doc = excluded.doc, updated_height = excluded.updated_height",
        [(r.id, r.state, r.doc, r.created_height, height) for r in w.shipments])
    c.executemany("INSERT OR IGNORE INTO shipment_parties VALUES (?, ?, ?)",
                  [(r.id, org, role) for r in w.shipments for org, role in r.parties])
    c.executemany("INSERT OR REPLACE INTO shipment_devices VALUES (?, ?, ?, ?)",
                  [(r.id, dev, start, end) for r in w.shipments for dev, start, end in r.devices])
    c.executemany("INSERT OR REPLACE INTO contracts VALUES (?, ?, ?, ?, ?, ?, ?)",
                  [(r.name, r.version, r.status, r.effective, r.retired, r.doc, r.entry)
                   for r in w.contracts])
    c.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  [(r.idx, height, time, r.contract, r.version, r.event, r.shipment, r.dev, r.at,
                    r.state, r.doc) for r in w.events])
    c.executemany("INSERT INTO audit VALUES (?, ?, ?, ?)",
                  [(idx, height, time, doc) for idx, doc in w.audit])
