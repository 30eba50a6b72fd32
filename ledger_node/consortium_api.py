"""The consortium's API routes: status, quorum certificates, block sync, evidence.

Mounted next to ledger_node.api's routes (`app.include_router(create_router(db_path, status))`)
on a node with `ordering = "etcd"`; they read the store through read-only connections.

    GET /v1/consortium/status            public: node set, quorum, final height, this node's
                                         etcd revision, divergence alert (node status)
    GET /v1/consortium/qc/{height}       public: a block's header and its quorum certificate
                                         (the signatures of the node set that verify), and
                                         whether it is final; 404 beyond the tip
    GET /v1/consortium/blocks?from=&limit=   operator or auditor: whole blocks (header,
                                         signatures, entries, etcd revision) for block sync
                                         (ledger_node.block_sync); `tip` and
                                         `applied_revision` from the same read transaction
    GET /v1/consortium/evidence          operator or auditor: divergence, disagreement,
                                         equivocation and time-refusal records, newest first
"""

from __future__ import annotations

import base64
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi import Path as PathParam

from ledger_node.admin import NODE_SET_CHANGED
from ledger_node.auth import Staff
from ledger_node.consortium.cstore import evidence, node_set_history_of, read_revision
from ledger_node.consortium.errors import QuorumError
from ledger_node.proofs import MAX_INDEX
from ledger_node.quorum import NodeSetHistory, tally
from ledger_node.store import open_reader
from trustfleet.errors import WireError

MAX_SYNC_BLOCKS = 1000
MAX_SYNC_BYTES = 64 * 1024 * 1024



def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sync_page(conn: sqlite3.Connection, first: int, limit: int) -> dict[str, Any]:
    """Blocks first..first+limit-1 with everything block sync needs (one read transaction)."""
    conn.execute("BEGIN")
    try:
        tip_row = conn.execute("SELECT MAX(height) FROM blocks").fetchone()
        tip = -1 if tip_row[0] is None else int(tip_row[0])
        applied = read_revision(conn)
        blocks: list[dict[str, Any]] = []
        size = 0
        rows = conn.execute("SELECT b.height, b.header, b.first, b.count, c.revision FROM "
                            "blocks b LEFT JOIN consortium_blocks c ON c.height = b.height "
                            "WHERE b.height >= ? ORDER BY b.height LIMIT ?",
                            (first, limit)).fetchall()
        for height, header, start, count, revision in rows:
            data = [bytes(r[0]) for r in conn.execute(
                "SELECT data FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx",
                (start, start + count))]
            sigs = conn.execute("SELECT node, sig FROM block_sigs WHERE height = ? ORDER BY "
                                "node", (height,)).fetchall()
            blocks.append({"height": height, "revision": int(revision or 0),
                           "header": _b64(bytes(header)),
                           "signatures": [{"node": n, "sig": _b64(bytes(s))} for n, s in sigs],
                           "entries": [_b64(d) for d in data]})
            size += sum(len(d) for d in data)
            if size > MAX_SYNC_BYTES:
                break
    finally:
        conn.rollback()
    return {"tip": tip, "applied_revision": applied, "blocks": blocks}


class NodeSetCache:
    """The store's node set history (cstore.node_set_history_of: SQL and certificate checks),
    read again only when the log's `node_set_changed` entries change (their count and last
    index: entries are only appended). Safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: tuple[tuple[int, int | None], NodeSetHistory] | None = None

    def history(self, conn: sqlite3.Connection) -> NodeSetHistory | None:
        """None before genesis, or if the history does not check."""
        count, last = conn.execute(
            "SELECT COUNT(*), MAX(idx) FROM entries WHERE kind <> 'reading' AND kind = ?",
            (NODE_SET_CHANGED,)).fetchone()
        key = (int(count), None if last is None else int(last))
        with self._lock:
            held = self._held
        if held is not None and held[0] == key:
            return held[1]
        try:
            history = node_set_history_of(conn)
        except (QuorumError, ValueError, WireError):
            return None
        with self._lock:
            self._held = (key, history)
        return history


def create_router(db_path: Path, status: Callable[[], dict[str, Any]] | None = None
                  ) -> APIRouter:
    """The routes above over the store at `db_path`; `status` is the node's status (its
    "consortium" part is shown)."""
    router = APIRouter()
    node_sets = NodeSetCache()

    @contextmanager
    def db() -> Iterator[sqlite3.Connection]:
        conn = open_reader(db_path)
        try:
            yield conn
        finally:
            conn.close()

    @router.get("/v1/consortium/status", tags=["consortium"])
    def consortium_status() -> dict[str, Any]:
        """The node set, the quorum, and how far this node has applied and finalised."""
        node = status() if status else {}
        live = node.get("consortium")
        with db() as conn:
            tip = conn.execute("SELECT MAX(height) FROM blocks").fetchone()[0]
            out = {"node": node.get("node"), "height": -1 if tip is None else int(tip)}
            if live:  # the running driver's node set, quorum and applied revision
                return {**out, **live}
            history = node_sets.history(conn)
            ns = history.latest if history is not None else None
            return {**out, "applied_revision": read_revision(conn),
                    "node_set": sorted(ns.keys) if ns else [],
                    "quorum": ns.quorum if ns else None}

    @router.get("/v1/consortium/qc/{height}", tags=["consortium"])
    def quorum_certificate(height: Annotated[int, PathParam(ge=0, le=MAX_INDEX)]
                           ) -> dict[str, Any]:
        """A block's header and the signatures of the node set over it that verify."""
        with db() as conn:
            row = conn.execute("SELECT header, hash FROM blocks WHERE height = ?",
                               (height,)).fetchone()
            if row is None:
                raise HTTPException(404, f"no block at height {height}")
            history = node_sets.history(conn)
            ns = history.at(height) if history is not None else None  # in force at the block
            sigs = [(n, bytes(s)) for n, s in conn.execute(
                "SELECT node, sig FROM block_sigs WHERE height = ? ORDER BY node", (height,))]
        if ns is None:
            raise HTTPException(503, "this node's genesis entry does not give a node set")
        header = bytes(row[0])
        t = tally(ns, header, sigs)
        return {"height": height, "hash": bytes(row[1]).hex(), "header": _b64(header),
                "signatures": [{"node": n, "sig": _b64(s)} for n, s in t.valid],
                "quorum": ns.quorum, "node_set": sorted(ns.keys),
                "final": len(t.valid) >= ns.quorum, "invalid": t.invalid}

    @router.get("/v1/consortium/blocks", tags=["consortium"])
    def blocks(
        who: Staff,
        from_height: Annotated[int, Query(alias="from", ge=0, le=MAX_INDEX)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_SYNC_BLOCKS)] = 100,
    ) -> dict[str, Any]:
        """Whole blocks for block sync (see ledger_node.block_sync)."""
        with db() as conn:
            return sync_page(conn, from_height, limit)

    @router.get("/v1/consortium/evidence", tags=["consortium"])
    def evidence_log(who: Staff, limit: Annotated[int, Query(ge=1, le=1000)] = 100
                     ) -> list[dict[str, Any]]:
        """What this node found wrong, newest first."""
        with db() as conn:
            rows = evidence(conn, limit)
        return [{"id": e.id, "kind": e.kind, "node": e.node, "height": e.height, "at": e.at,
                 "detail": e.detail,
                 "a": None if e.header_a is None else {
                     "header": _b64(e.header_a), "sig": _b64(e.sig_a) if e.sig_a else None},
                 "b": None if e.header_b is None else {
                     "header": _b64(e.header_b), "sig": _b64(e.sig_b) if e.sig_b else None}}
                for e in rows]

    return router
