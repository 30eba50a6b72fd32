"""The node's HTTP API (FastAPI): health, chain, blocks, entries and proofs, devices, readings,
quarantine, audit, and the partner API's shipments and events (ledger_node.shipments_api).

Access (ledger_node.auth): `Authorization: Bearer <token>`. Public, no token: /healthz, the
dashboard (/ and /static/), /v1/chain/head, /v1/blocks/{h}, /v1/chain/consistency, /docs,
/openapi.json and POST /v1/admin/entries (operator entries authenticate themselves by their
signature). Operators and auditors read everything; devices, readings by device, quarantine,
node status and the audit log are theirs only (403 for a partner). A partner reads the
entries (and their proofs) of its shipments only: any other entry is 404 with the same body
as one that does not exist. Every request by a partner or an auditor is handed to `audit`.

Handlers only read: each request opens a read-only SQLite connection, so the API never
blocks block application. Binary values are base64 (standard alphabet) or hex as named.
Proof endpoints answer 404 for what is not in the log, 422 for a request that cannot be
answered as asked, and 503 when the node's own store no longer reproduces its signed heads
(it refuses to serve a proof it cannot stand behind) or cannot be read.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.dependencies.models import Dependant
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel

from ledger_node import ops_api, proofs, shipments_api
from ledger_node.auth import (
    STREAM_PATH,
    AuditRecord,
    AuthMiddleware,
    Caller,
    Principal,
    Staff,
    TokenBook,
    tokens_path,
    wall_clock_ms,
)
from ledger_node.block import decode_header
from ledger_node.bundle import bundle_for_entry
from ledger_node.errors import StoreError
from ledger_node.heads import consistency_json
from ledger_node.history import readings_query
from ledger_node.merkle import leaf_hash
from ledger_node.proofs import MAX_INDEX
from ledger_node.quarantine_query import (
    QuarantineFilter,
    decode_cursor,
    get_item,
    list_page,
    parse_time,
)
from ledger_node.shipments_api import (
    BadCursor,
    create_router,
    encode_cursor,
    entry_belongs_to_org,
    proof_errors,
)
from ledger_node.store import reading

log = logging.getLogger("trustfleet.api")
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


class ApiError(BaseModel):
    """Every error answer: `detail` says why (a list of problems for a malformed request)."""

    detail: str | list[dict[str, Any]]


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ApiError, "description": "a cursor or header this node did not hand out"},
    401: {"model": ApiError, "description": "no API token, or a malformed, unknown or revoked "
                                            "one (WWW-Authenticate: Bearer)"},
    403: {"model": ApiError, "description": "the token's kind may not use this endpoint"},
    404: {"model": ApiError, "description": "not there (or not yours: the same answer)"},
    422: {"model": ApiError, "description": "a malformed request, or one that cannot be "
                                            "answered as asked"},
    503: {"model": ApiError, "description": "the node cannot answer now (store unreadable or "
                                            "contradicting its signed heads)"},
}
class AdminOutcome(BaseModel):
    """What became of a submitted operator entry."""

    status: str
    kind: str
    device: str | None
    reason: str | None
    detail: str | None
    height: int | None


class AdminPending(BaseModel):
    status: str
    detail: str




def _query_names(dependant: Dependant) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def reject_unknown_query(request: Request) -> None:
    """422 for a query parameter a /v1 endpoint does not take (a typo must not be ignored)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not route.path.startswith("/v1/"):
        return
    allowed = _query_names(route.dependant) | ({"access_token"} if route.path == STREAM_PATH
                                               else set())
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        names = ", ".join(repr(n[:64]) for n in unknown[:5])
        raise HTTPException(422, f"unknown query parameter(s) {names}; this endpoint takes "
                                 f"{', '.join(sorted(allowed)) or 'none'}")


MAX_ADMIN_ENTRY = 64 * 1024


def create_app(db_path: Path, status: Callable[[], dict[str, Any]] | None = None,
               submit_admin: Callable[[bytes], Future[Any]] | None = None, *,
               audit: Callable[[AuditRecord], None] | None = None,
               tokens: Path | None = None, poll_s: float = 0.5) -> FastAPI:
    """The API over the store at `db_path`. `status` gives /v1/node/status, `submit_admin`
    takes operator entries; `audit` is called with {"who", "kind", "org", "method", "path",
    "query", "status", "at" (node ms)} after every request by a partner or an auditor (on the
    event loop: it must only queue). API tokens are read from `tokens` (default: tokens.db
    beside the store, ledger_node.auth.tokens_path); `poll_s` is the event stream's poll."""
    app = FastAPI(title="TrustFleet ledger node", version="0.1.0", responses=ERRORS,
                  dependencies=[Depends(reject_unknown_query)],
                  description="Verifiable logistics ledger: chain, devices, readings, "
                              "quarantine, shipments, contract events, proofs.")
    book = TokenBook(tokens if tokens is not None else tokens_path(db_path))
    app.add_middleware(AuthMiddleware, book=book, audit=audit, clock=wall_clock_ms)

    @app.exception_handler(StoreError)
    async def store_unreadable(request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"detail": f"this node cannot read its store: {exc}"}, 503)

    @app.exception_handler(sqlite3.Error)
    async def sqlite_failed(request: Request, exc: sqlite3.Error) -> JSONResponse:
        return JSONResponse({"detail": f"this node cannot read its store: {exc}"}, 503)

    def db() -> AbstractContextManager[sqlite3.Connection]:
        return reading(db_path)

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
    def node_status(who: Staff) -> dict[str, Any]:
        return status() if status else {}

    @app.get("/v1/chain/head", tags=["chain"])
    def chain_head() -> dict[str, Any]:
        with db() as conn:
            row = conn.execute("SELECT MAX(height) AS h FROM blocks").fetchone()
            if row["h"] is None:
                raise HTTPException(404, "the chain has no blocks yet")
            return block_json(conn, int(row["h"]), with_entries=False)

    @app.get("/v1/blocks/{height}", tags=["chain"])
    def get_block(height: Annotated[int, PathParam(ge=0, le=MAX_INDEX)]) -> dict[str, Any]:
        with db() as conn:
            return block_json(conn, height, with_entries=True)

    def check_entry(conn: sqlite3.Connection, who: Principal, index: int) -> None:
        """A partner reads only its shipments' entries; any other is 'not there'."""
        if not who.sees_everything and not entry_belongs_to_org(conn, str(who.org), index):
            raise HTTPException(404, f"no entry {index} among the entries of your shipments")

    @app.get("/v1/entries/{index}", tags=["proofs"])
    def get_entry(who: Caller, index: EntryIndex) -> dict[str, Any]:
        """One log entry: its bytes (base64), kind and the block that committed it."""
        with proof_errors(), db() as conn:
            check_entry(conn, who, index)
            e = proofs.entry(conn, index)
        return {"index": e.index, "kind": e.kind, "block": e.height,
                "leaf_hash": leaf_hash(e.data).hex(), "data": b64(e.data)}

    @app.get("/v1/entries/{index}/proof", tags=["proofs"])
    def entry_proof(who: Caller, index: EntryIndex, height: Height = None) -> dict[str, Any]:
        """A proof bundle (docs/proof-bundle.md) for one entry against the signed head of block
        `height`; `trustfleet verify-bundle` checks it offline."""
        with proof_errors(), db() as conn:
            check_entry(conn, who, index)
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
        with proof_errors(), db() as conn:
            p = proofs.consistency(conn, from_height, to_height)
            keys = proofs.node_keys(conn)
        return consistency_json((p.old.header_bytes, p.old.signatures),
                                (p.new.header_bytes, p.new.signatures), p.hashes, keys)

    @app.get("/v1/devices", tags=["devices"])
    def devices(who: Staff) -> list[dict[str, Any]]:
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
        who: Staff,
        device_id: Annotated[str, PathParam(max_length=128)],
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
        who: Staff,
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
        who: Staff,
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

    @app.get("/v1/audit", tags=["audit"])
    def audit_log(
        who: Staff,
        since: Annotated[int | None, Query(ge=0, le=MAX_INDEX,
                                           description="ledger time, ms, inclusive")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
        cursor: Annotated[str | None, Query(max_length=256,
                                            description="next_cursor of the previous page")]
        = None,
    ) -> dict[str, Any]:
        """The audit log on the ledger: every request by a partner or an auditor, in log
        order, each with the entry that holds it (operators and auditors only)."""
        after = -1
        if cursor is not None:
            try:
                value = shipments_api.decode_cursor(cursor, "audit")
            except BadCursor as exc:
                raise HTTPException(400, f"cursor: {exc}") from None
            if not value.isascii() or not value.isdigit() or int(value) > MAX_INDEX:
                raise HTTPException(400, "cursor: not a cursor this node handed out")
            after = int(value)
        sql, args = "SELECT idx, height, ledger_time, doc FROM audit WHERE idx > ?", [after]
        if since is not None:
            sql += " AND ledger_time >= ?"
            args.append(since)
        with db() as conn:
            rows = conn.execute(sql + " ORDER BY idx LIMIT ?", [*args, limit + 1]).fetchall()
        items = []
        for r in rows[:limit]:
            try:
                record = json.loads(r["doc"])
            except ValueError:
                raise StoreError(f"audit entry {r['idx']}: stored JSON does not parse") from None
            items.append({"entry": r["idx"], "block": r["height"],
                          "ledger_time": r["ledger_time"], "record": record})
        more = len(rows) > limit
        return {"items": items,
                "next_cursor": encode_cursor("audit", str(items[-1]["entry"])) if more else None}

    @app.post("/v1/admin/entries", tags=["admin"], status_code=200, response_model=None,
              responses={200: {"model": AdminOutcome, "description": "accepted or duplicate"},
                         202: {"model": AdminPending, "description": "queued, not yet in a block"},
                         413: {"model": ApiError, "description": "larger than an entry may be"},
                         422: {"model": AdminOutcome | ApiError,
                               "description": "rejected (with the reason), or no entry sent"}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/cose": {"schema": {"type": "string", "format": "binary"}}}}})
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

    app.include_router(create_router(db_path, book, lambda: node_id(status), poll_s=poll_s))
    app.include_router(ops_api.create_router(db_path, status))
    _mount_dashboard(app)

    @app.get("/", include_in_schema=False, response_model=None)
    def dashboard() -> FileResponse | JSONResponse:
        index = DASHBOARD / "index.html"
        if index.exists():
            return FileResponse(index)
        return JSONResponse({"message": "TrustFleet ledger node; API under /v1, docs at /docs"})

    return app


def node_id(status: Callable[[], dict[str, Any]] | None) -> str | None:
    """This node's id, from its status (None when the API is not attached to a node)."""
    if status is None:
        return None
    value = status().get("node")
    return value if isinstance(value, str) else None


def _mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard's files at /static (dashboards.web), when they are installed."""
    try:
        from dashboards.web import DashboardError, mount
    except ImportError:
        return
    try:
        mount(app)
    except DashboardError as exc:
        log.warning("dashboard not served: %s", exc)
