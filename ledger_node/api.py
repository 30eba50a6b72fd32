"""The node's HTTP API (FastAPI): health, chain, blocks, entries and proofs, devices, readings,
quarantine.

Handlers only read: each request opens a read-only SQLite connection, so the API never
blocks block application. Binary values are base64 (standard alphabet) or hex as named.
Proof endpoints answer 404 for what is not in the log, 422 for a request that cannot be
answered as asked, and 503 when the node's own store no longer reproduces its signed heads
(it refuses to serve a proof it cannot stand behind).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse

from ledger_node import proofs
from ledger_node.block import decode_header
from ledger_node.bundle import bundle_for_entry
from ledger_node.errors import LedgerError
from ledger_node.heads import consistency_json
from ledger_node.history import readings_query
from ledger_node.merkle import leaf_hash
from ledger_node.proofs import MAX_INDEX, BadProofRequest, NotInLog
from ledger_node.quarantine_query import (
    QuarantineFilter,
    decode_cursor,
    get_item,
    list_page,
    parse_time,
)
from ledger_node.store import open_reader

DASHBOARD = Path(__file__).resolve().parent.parent / "dashboards" / "static"
MAX_LIMIT = 1000
DEVICE_MS = "device time, ms since the Unix epoch"
RECEIVED_AT = "received at or after: ms since the Unix epoch, or ISO 8601 with a zone"
RECEIVED_BEFORE = "received before: ms since the Unix epoch, or ISO 8601 with a zone"
EntryIndex = Annotated[int, PathParam(ge=0, le=MAX_INDEX, description="leaf index in the log")]
Height = Annotated[int | None, Query(ge=0, le=MAX_INDEX,
                                     description="block height (default: the newest block)")]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@contextmanager
def _proof_errors() -> Iterator[None]:
    """Translate the proof module's errors, once, into HTTP answers."""
    try:
        yield
    except NotInLog as exc:
        raise HTTPException(404, str(exc)) from None
    except BadProofRequest as exc:
        raise HTTPException(422, str(exc)) from None
    except LedgerError as exc:  # TamperError, StoreError: the store contradicts its heads
        raise HTTPException(503, f"this node cannot serve that proof: {exc}") from None


MAX_ADMIN_ENTRY = 64 * 1024


def create_app(db_path: Path, status: Callable[[], dict[str, Any]] | None = None,
               submit_admin: Callable[[bytes], Future[Any]] | None = None) -> FastAPI:
    app = FastAPI(title="TrustFleet ledger node", version="0.1.0",
                  description="Verifiable logistics ledger: chain, devices, readings, quarantine.")

    @contextmanager
    def db() -> Iterator[sqlite3.Connection]:
        conn = open_reader(db_path)
        try:
            yield conn
        finally:
            conn.close()

    def block_json(conn: sqlite3.Connection, height: int, with_entries: bool) -> dict[str, Any]:
        row = conn.execute("SELECT header, hash FROM blocks WHERE height = ?",
                           (height,)).fetchone()
        if row is None:
            raise HTTPException(404, f"no block at height {height}")
        header = decode_header(bytes(row["header"]))
        sigs = conn.execute("SELECT node, sig FROM block_sigs WHERE height = ? ORDER BY node",
                            (height,)).fetchall()
        out: dict[str, Any] = {
            "height": header.height, "hash": bytes(row["hash"]).hex(), "chain": header.chain,
            "time": header.time, "prev": header.prev.hex(), "first": header.first,
            "count": header.count, "tree_size": header.size, "tree_root": header.root.hex(),
            "proposer": header.proposer, "header": b64(bytes(row["header"])),
            "signatures": [{"node": s["node"], "sig": b64(bytes(s["sig"]))} for s in sigs],
        }
        if with_entries:
            rows = conn.execute("SELECT idx, kind, data FROM entries WHERE height = ? "
                                "ORDER BY idx", (height,)).fetchall()
            out["entries"] = [{"index": r["idx"], "kind": r["kind"],
                               "leaf_hash": leaf_hash(bytes(r["data"])).hex()} for r in rows]
        return out

    @app.get("/healthz", tags=["node"])
    def healthz() -> dict[str, Any]:
        with db() as conn:
            row = conn.execute("SELECT MAX(height) AS h FROM blocks").fetchone()
        return {"status": "ok", "height": row["h"] if row["h"] is not None else -1}

    @app.get("/v1/node/status", tags=["node"])
    def node_status() -> dict[str, Any]:
        return status() if status else {}

    @app.get("/v1/chain/head", tags=["chain"])
    def chain_head() -> dict[str, Any]:
        with db() as conn:
            row = conn.execute("SELECT MAX(height) AS h FROM blocks").fetchone()
            if row["h"] is None:
                raise HTTPException(404, "the chain has no blocks yet")
            return block_json(conn, int(row["h"]), with_entries=False)

    @app.get("/v1/blocks/{height}", tags=["chain"])
    def get_block(height: Annotated[int, PathParam(le=MAX_INDEX)]) -> dict[str, Any]:
        if height < 0:
            raise HTTPException(422, "height must be >= 0")
        with db() as conn:
            return block_json(conn, height, with_entries=True)

    @app.get("/v1/entries/{index}", tags=["proofs"])
    def get_entry(index: EntryIndex) -> dict[str, Any]:
        """One log entry: its bytes (base64), kind and the block that committed it."""
        with _proof_errors(), db() as conn:
            e = proofs.entry(conn, index)
        return {"index": e.index, "kind": e.kind, "block": e.height,
                "leaf_hash": leaf_hash(e.data).hex(), "data": b64(e.data)}

    @app.get("/v1/entries/{index}/proof", tags=["proofs"])
    def entry_proof(index: EntryIndex, height: Height = None) -> dict[str, Any]:
        """A proof bundle (docs/proof-bundle.md) for one entry against the signed head of block
        `height`; `trustfleet verify-bundle` checks it offline."""
        with _proof_errors(), db() as conn:
            return bundle_for_entry(conn, index, height)

    @app.get("/v1/chain/consistency", tags=["proofs"])
    def chain_consistency(
        from_height: Annotated[int, Query(alias="from", ge=0, le=MAX_INDEX,
                                          description="the older block height")],
        to_height: Annotated[int | None, Query(alias="to", ge=0, le=MAX_INDEX,
                                               description="the newer (default: newest)")] = None,
    ) -> dict[str, Any]:
        """Both signed heads and the RFC 9162 consistency proof between their trees;
        `trustfleet verify-consistency` checks it against a head you saved."""
        with _proof_errors(), db() as conn:
            p = proofs.consistency(conn, from_height, to_height)
            keys = proofs.node_keys(conn)
        return consistency_json((p.old.header_bytes, p.old.signatures),
                                (p.new.header_bytes, p.new.signatures), p.hashes, keys)

    @app.get("/v1/devices", tags=["devices"])
    def devices() -> list[dict[str, Any]]:
        with db() as conn:
            rows = conn.execute("SELECT * FROM devices ORDER BY dev").fetchall()
        return [{"id": r["dev"], "fleet": r["fleet"], "kid": bytes(r["kid"]).hex(),
                 "enrolled_height": r["enrolled_height"],
                 "revoked": r["revoked_height"] is not None,
                 "last_seen": r["last_seen"], "last_seq": r["last_seq"],
                 "contiguous_seq": r["contiguous_seq"], "readings": r["readings"],
                 "gaps": r["gaps"], "prev_mismatches": r["prev_mismatches"]} for r in rows]

    @app.get("/v1/devices/{device_id}/readings", tags=["devices"], response_model=None)
    def readings(
        device_id: str,
        since: Annotated[int | None, Query(alias="from", ge=0, le=MAX_INDEX,
                                           description=DEVICE_MS)] = None,
        until: Annotated[int | None, Query(alias="to", ge=0, le=MAX_INDEX,
                                           description=DEVICE_MS)] = None,
        kind: Annotated[str | None, Query(max_length=32)] = None,
        after_seq: Annotated[int, Query(ge=0, le=MAX_INDEX)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    ) -> JSONResponse:
        """A device's readings in seq order, `limit` a page (next page: after_seq =
        next_after_seq). The body is built as plain JSON: a day of readings is a thousand
        rows, which FastAPI's generic encoder would take longer to walk than the query."""
        sql, args = readings_query(device_id, since, until, kind, after_seq, limit)
        with db() as conn:
            if conn.execute("SELECT 1 FROM devices WHERE dev = ?", (device_id,)).fetchone() is None:
                raise HTTPException(404, f"no device {device_id!r}")
            cur = conn.execute(sql, args)
            cur.row_factory = None  # plain tuples, in history.COLUMNS order
            rows = cur.fetchall()
        items = [{"entry": idx, "seq": seq, "device_time": t, "time_source": ts, "kind": k,
                  "values": json.loads(d), "flags": flags.split(",") if flags else [],
                  "block": height, "ledger_time": ledger_time}
                 for idx, seq, t, ts, k, d, flags, height, ledger_time in rows]
        next_seq = items[-1]["seq"] if len(items) == limit else None
        return JSONResponse({"device": device_id, "readings": items, "next_after_seq": next_seq})

    @app.get("/v1/quarantine", tags=["quarantine"])
    def quarantine(
        reason: Annotated[str | None, Query(max_length=64)] = None,
        device: Annotated[str | None, Query(max_length=64)] = None,
        since: Annotated[str | None, Query(max_length=40, description=RECEIVED_AT)] = None,
        until: Annotated[str | None, Query(max_length=40, description=RECEIVED_BEFORE)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
        cursor: Annotated[str | None, Query(max_length=24,
                                            description="next_cursor of the previous page")]
        = None,
        before_id: Annotated[int | None, Query(ge=1, le=MAX_INDEX,
                                               description="older form of cursor")] = None,
        include_raw: bool = False,
    ) -> dict[str, Any]:
        """Rejected input, newest first, with what is stored and what was only summarised
        (counted) beyond the quarantine's caps. Raw bytes: `include_raw=true`, or one item."""
        try:
            f = QuarantineFilter(reason, device, None if since is None else parse_time(since),
                                 None if until is None else parse_time(until))
            before = decode_cursor(cursor) if cursor is not None else before_id
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        with db() as conn:
            return list_page(conn, f, limit=limit, before=before, include_raw=include_raw)

    @app.get("/v1/quarantine/{item_id}", tags=["quarantine"])
    def quarantine_item(
        item_id: Annotated[int, PathParam(ge=1, le=MAX_INDEX)],
    ) -> dict[str, Any]:
        """One stored item: every field, the raw bytes (base64, at most 64 KiB of them), and
        CBOR diagnostic notation of them when they are one CBOR item."""
        with db() as conn:
            item = get_item(conn, item_id)
        if item is None:
            raise HTTPException(404, f"no quarantined item {item_id} (never stored, or "
                                "evicted into the summary)")
        return item

    @app.post("/v1/admin/entries", tags=["admin"], status_code=200)
    async def submit_entry(
        request: Request,
        wait: Annotated[float, Query(ge=0, le=60, description="seconds to wait for the block")]
        = 10.0,
    ) -> JSONResponse:
        """Submit an operator-signed entry (COSE_Sign1 bytes, `application/cose`): enrol,
        revoke or rotate a device. The node checks it at the ledger time of the next block;
        the answer says whether it was accepted (and in which block), a duplicate, or
        rejected with a reason. The entry authenticates itself: no API token is needed."""
        if submit_admin is None:
            raise HTTPException(503, "this API is not attached to a running node")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_ADMIN_ENTRY:
                raise HTTPException(413, f"an entry is at most {MAX_ADMIN_ENTRY} bytes")
        if not body:
            raise HTTPException(422, "empty body: send the signed entry's bytes")
        done = submit_admin(body)
        try:
            outcome = await asyncio.wait_for(asyncio.wrap_future(done), timeout=wait)
        except TimeoutError:
            return JSONResponse({"status": "pending", "detail": "queued; not yet in a block"},
                                status_code=202)
        return JSONResponse({"status": outcome.status, "kind": outcome.kind,
                             "device": outcome.device, "reason": outcome.reason or None,
                             "detail": outcome.detail or None, "height": outcome.height},
                            status_code=200 if outcome.status != "rejected" else 422)

    @app.get("/", include_in_schema=False, response_model=None)
    def dashboard() -> FileResponse | JSONResponse:
        index = DASHBOARD / "index.html"
        if index.exists():
            return FileResponse(index)
        return JSONResponse({"message": "TrustFleet ledger node; API under /v1, docs at /docs"})

    return app

