"""The node-local consortium tables, and the store that records the applied etcd revision.

`ConsortiumStore` is the node's writer store (ledger_node.store.Store) with one addition: the
etcd revision of the batch being applied is written in `meta` ('consortium_revision') **in
the block's own transaction** — the row goes in first, which opens the transaction that
`Store.commit_block` then commits (or rolls back) with the block. So a crash never applies a
batch twice or skips one: after a restart the node follows the etcd log from the revision
after the one stored with its tip. A batch that yields no block still advances the revision
(with its quarantine rows, or alone).

Tables (node-local: not part of the log, not compared between nodes):

    consortium_blocks    height -> etcd revision of the batch that made the block
    consortium_seen      every signature this node has seen: (node, height, header hash) ->
                         header, signature — two different headers signed by one node at one
                         height are equivocation, kept as evidence
    consortium_evidence  what the node found wrong: its own divergence from the quorum,
                         a peer that signed another header than the quorum, equivocation

Concurrency rule as for Store: the writer is used from the node's apply thread only.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ledger_node.consortium.errors import QuorumError
from ledger_node.quarantine import QuarantineLimits
from ledger_node.quorum import NodeSet, NodeSetHistory
from ledger_node.store import BlockRecord, QuarantineRow, Store
from trustfleet.errors import WireError

if TYPE_CHECKING:
    from ledger_node.chain import ApplyResult

REVISION_KEY: Final = "consortium_revision"

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS consortium_blocks (
  height INTEGER PRIMARY KEY, revision INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS consortium_seen (
  node TEXT NOT NULL, height INTEGER NOT NULL, hash BLOB NOT NULL, header BLOB NOT NULL,
  sig BLOB NOT NULL, PRIMARY KEY (node, height, hash)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consortium_evidence (
  id INTEGER PRIMARY KEY, kind TEXT NOT NULL, node TEXT NOT NULL, height INTEGER NOT NULL,
  at INTEGER NOT NULL, detail TEXT NOT NULL, header_a BLOB, sig_a BLOB, header_b BLOB,
  sig_b BLOB);
"""

DIVERGENCE: Final = "divergence"
"""This node's block at a height is not the block a quorum signed."""
DISAGREEMENT: Final = "disagreement"
"""A peer signed another header than this node computed (who is wrong: see the quorum)."""
EQUIVOCATION: Final = "equivocation"
"""One node signed two different headers at one height."""
TIME_REFUSED: Final = "time_refused"
"""A batch's ledger time was too far from this node's clock: it did not sign the block."""


@dataclass(frozen=True)
class Evidence:
    id: int
    kind: str
    node: str
    height: int
    at: int
    detail: str
    header_a: bytes | None
    sig_a: bytes | None
    header_b: bytes | None
    sig_b: bytes | None


def ensure_schema(conn: sqlite3.Connection) -> None:
    with conn:
        conn.executescript(SCHEMA)


def read_revision(conn: sqlite3.Connection) -> int:
    """The last etcd revision applied (0: none), from any connection to a node's store."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (REVISION_KEY,)).fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(bytes(row[0]).decode()) if row is not None else 0


class ConsortiumStore(Store):
    """Store + the applied revision in each block's transaction (see the module doc)."""

    def __init__(self, path: Path, *, quarantine: QuarantineLimits | None = None) -> None:
        super().__init__(path, quarantine=quarantine)
        ensure_schema(self.conn)
        self.pending_revision: int | None = None
        """Set by the follower to the revision of the batch it is about to apply."""

    def applied_revision(self) -> int:
        return read_revision(self.conn)

    def _note_revision(self, height: int | None) -> None:
        rev = self.pending_revision
        if rev is None:
            return
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                          (REVISION_KEY, str(rev).encode()))
        if height is not None:
            self.conn.execute("INSERT OR REPLACE INTO consortium_blocks VALUES (?, ?)",
                              (height, rev))

    def commit_block(self, block: BlockRecord) -> None:
        # The first write opens the transaction Store.commit_block commits or rolls back.
        try:
            self._note_revision(block.height)
            super().commit_block(block)
        except BaseException:
            self.conn.rollback()
            raise
        self.pending_revision = None

    def add_quarantine(self, rows: Iterable[QuarantineRow]) -> None:
        try:
            self._note_revision(None)
            super().add_quarantine(rows)
        except BaseException:
            self.conn.rollback()
            raise
        self.pending_revision = None

    def mark_applied(self, revision: int) -> None:
        """Advance the applied revision alone (a batch that wrote nothing)."""
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                              (REVISION_KEY, str(revision).encode()))
        self.pending_revision = None

    def block_revision(self, height: int) -> int | None:
        row = self.conn.execute("SELECT revision FROM consortium_blocks WHERE height = ?",
                                (height,)).fetchone()
        return None if row is None else int(row[0])

    def header(self, height: int) -> bytes | None:
        stored = self.block_header(height)
        return None if stored is None else stored[0]

    def signatures(self, height: int) -> list[tuple[str, bytes]]:
        stored = self.block_header(height)
        return [] if stored is None else stored[1]

    def add_signatures(self, height: int, sigs: Sequence[tuple[str, bytes]]) -> None:
        """Keep signatures (already checked) of other nodes over our block at `height`."""
        with self.conn:
            self.conn.executemany("INSERT OR IGNORE INTO block_sigs VALUES (?, ?, ?)",
                                  [(height, node, sig) for node, sig in sigs])

    def seen(self, node: str, height: int, header: bytes, sig: bytes
             ) -> tuple[bytes, bytes] | None:
        """Record a valid signature; returns another (header, sig) the same node signed at the
        same height, if one was seen before (equivocation), else None."""
        digest = hashlib.sha256(header).digest()
        other = self.conn.execute(
            "SELECT header, sig FROM consortium_seen WHERE node = ? AND height = ? AND "
            "hash <> ? LIMIT 1", (node, height, digest)).fetchone()
        with self.conn:
            self.conn.execute("INSERT OR IGNORE INTO consortium_seen VALUES (?, ?, ?, ?, ?)",
                              (node, height, digest, header, sig))
        return None if other is None else (bytes(other[0]), bytes(other[1]))

    def add_evidence(self, kind: str, node: str, height: int, at: int, detail: str,
                     a: tuple[bytes, bytes | None] | None = None,
                     b: tuple[bytes, bytes | None] | None = None) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT INTO consortium_evidence (kind, node, height, at, detail, header_a, "
                "sig_a, header_b, sig_b) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, node, height, at, detail[:2000], a[0] if a else None,
                 a[1] if a else None, b[0] if b else None, b[1] if b else None))


def evidence(conn: sqlite3.Connection, limit: int = 100) -> list[Evidence]:
    """The newest evidence rows first (any connection; empty if the tables do not exist)."""
    try:
        rows = conn.execute("SELECT id, kind, node, height, at, detail, header_a, sig_a, "
                            "header_b, sig_b FROM consortium_evidence ORDER BY id DESC "
                            "LIMIT ?", (limit,)).fetchall()
    except sqlite3.OperationalError:
        return []
    return [Evidence(int(r[0]), r[1], r[2], int(r[3]), int(r[4]), r[5],
                     *(bytes(v) if v is not None else None for v in r[6:10])) for r in rows]


def node_set_history_of(conn: sqlite3.Connection) -> NodeSetHistory:
    """The node set history of the store's chain: the genesis entry's set and every committed
    `node_set_changed` entry, in log order (ledger_node.quorum). Raises QuorumError (also
    before genesis), ValueError or WireError if a committed entry does not decode."""
    from ledger_node import entries as entry_types
    from ledger_node.admin import NODE_SET_CHANGED, decode_operator_entry_unchecked
    from ledger_node.quorum import node_set_history

    row = conn.execute("SELECT e.data, b.time FROM entries e JOIN blocks b ON b.height = 0 "
                       "WHERE e.idx = 0").fetchone()
    if row is None:
        raise QuorumError("bad_node_set", "the store has no genesis entry yet")
    changes = [(decode_operator_entry_unchecked(bytes(d)), int(h), int(t)) for d, h, t in
               conn.execute("SELECT e.data, e.height, b.time FROM entries e JOIN blocks b "
                            "ON b.height = e.height WHERE e.kind <> 'reading' AND e.kind = ? "
                            "ORDER BY e.idx",
                            (NODE_SET_CHANGED,))]
    return node_set_history(entry_types.decode_admin(bytes(row[0])), int(row[1]), changes)


def changes_node_set(result: ApplyResult) -> bool:
    """True if the batch's block carries an accepted `node_set_changed` entry: the node set
    history (node_set_history_of) must be read again."""
    from ledger_node.admin import NODE_SET_CHANGED

    return result.header is not None and any(
        a.kind == NODE_SET_CHANGED and a.status == "accepted" for a in result.admin)


def node_set_of(conn: sqlite3.Connection, height: int | None = None) -> NodeSet | None:
    """The node set in force at block `height` (None: for the next block to be cut) of the
    store's chain (None before genesis, or unusable)."""
    try:
        history = node_set_history_of(conn)
    except (QuorumError, ValueError, WireError):
        return None
    return history.latest if height is None else history.at(height)


def final_height(conn: sqlite3.Connection, node_set: NodeSet | NodeSetHistory,
                 scan: int = 2000) -> int | None:
    """The newest block whose stored signatures hold a quorum certificate of the node set in
    force at it (None: none among the newest `scan` blocks)."""
    from ledger_node.quorum import tally

    top = conn.execute("SELECT MAX(height) FROM blocks").fetchone()[0]
    if top is None:
        return None
    for height in range(int(top), max(-1, int(top) - scan), -1):
        header = conn.execute("SELECT header FROM blocks WHERE height = ?",
                              (height,)).fetchone()
        sigs = [(r[0], bytes(r[1])) for r in conn.execute(
            "SELECT node, sig FROM block_sigs WHERE height = ?", (height,))]
        ns = node_set.at(height) if isinstance(node_set, NodeSetHistory) else node_set
        if len(sigs) >= ns.quorum and \
                len(tally(ns, bytes(header[0]), sigs).valid) >= ns.quorum:
            return height
    return None
