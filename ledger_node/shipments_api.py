"""The partner API's shipment endpoints (DESIGN.md §8), mounted by ledger_node.api:

    GET /v1/whoami                         the caller's principal
    GET /v1/shipments?state=               the shipments the caller may see
    GET /v1/shipments/{id}                 one shipment's document
    GET /v1/shipments/{id}/history?kind=readings|events|custody&from=&to=&limit=&cursor=
    GET /v1/shipments/{id}/epcis           EPCIS 2.0 JSON-LD (ledger_node.epcis)
    GET /v1/shipments/{id}/proof           a proof bundle of its entries (shipment_bundle)
    GET /v1/events?shipment=&event=&since= contract events ("alerts")
    GET /v1/events/stream                  the same, live, as Server-Sent Events, with `block`
                                           notices; resumes after `Last-Event-ID`

Operators and auditors see every shipment and event; a partner sees the shipments where its
organisation is a party (table `shipment_parties`) and their events. Any other shipment
answers 404 with exactly the body of one that does not exist. Lists are in a stable order
(shipments by id, history and events by leaf index) and paginated with `next_cursor`: opaque
(base64url of what it continues after, bound to the list it came from); a cursor this node
did not hand out is 400. Handlers only read, each from its own read-only connection.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Header, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, StreamingResponse

from ledger_node import proofs
from ledger_node.auth import Caller, Principal, TokenBook, require_stream
from ledger_node.errors import LedgerError, StoreError
from ledger_node.proofs import MAX_INDEX, BadProofRequest, NotInLog
from ledger_node.shipment_bundle import (
    bundle_for_shipment,
    clip,
    readings_query,
    windows,
)
from ledger_node.store import reading

__all__ = ["BadCursor", "create_router", "decode_cursor", "encode_cursor",
           "entry_belongs_to_org", "proof_errors", "visible_shipment"]

log = logging.getLogger("trustfleet.api")

MAX_LIMIT: Final = 1000
MAX_ID: Final = 128
MAX_EXPORT_READINGS: Final = 100_000
KEEPALIVE_S: Final = 15.0
ID_PATTERN: Final = r"^[^\x00-\x1f\x7f]+$"
_CURSOR: Final = re.compile(r"[A-Za-z0-9_-]{4,256}")
_IDX: Final = re.compile(r"[0-9]{1,19}")

ShipmentId = Annotated[str, PathParam(min_length=1, max_length=MAX_ID, pattern=ID_PATTERN,
                                      description="shipment id")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="items per page")]
Cursor = Annotated[str | None, Query(max_length=256,
                                     description="next_cursor of the previous page")]
FromTime = Annotated[int | None, Query(alias="from", ge=0, le=MAX_INDEX,
                                       description="device time, ms, inclusive")]
ToTime = Annotated[int | None, Query(alias="to", ge=0, le=MAX_INDEX,
                                     description="device time, ms, exclusive")]
Name = Annotated[str | None, Query(max_length=MAX_ID, pattern=ID_PATTERN)]
Parts = Annotated[str, Query(pattern=r"^(readings|events|operator)(,(readings|events|operator))*$",
                             max_length=64,
                             description="comma-separated: readings, events, operator")]


class BadCursor(ValueError):
    """A cursor this node did not hand out (or one from another list)."""


def encode_cursor(scope: str, value: str) -> str:
    return base64.urlsafe_b64encode(f"{scope}:{value}".encode()).rstrip(b"=").decode()


def decode_cursor(text: str, scope: str) -> str:
    """The value a cursor of list `scope` continues after; BadCursor for anything else."""
    if not _CURSOR.fullmatch(text):
        raise BadCursor("not a cursor this node handed out")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, ValueError):
        raise BadCursor("not a cursor this node handed out") from None
    got, sep, value = raw.partition(":")
    if not sep or got != scope:
        raise BadCursor(f"not a cursor of this list ({scope})")
    return value


def _idx_cursor(text: str | None, scope: str) -> int:
    if text is None:
        return -1
    try:
        value = decode_cursor(text, scope)
    except BadCursor as exc:
        raise HTTPException(400, f"cursor: {exc}") from None
    if not _IDX.fullmatch(value) or int(value) > MAX_INDEX:
        raise HTTPException(400, "cursor: not a cursor this node handed out")
    return int(value)


@contextmanager
def proof_errors() -> Iterator[None]:
    """Translate the proof modules' errors, once, into HTTP answers."""
    try:
        yield
    except NotInLog as exc:
        raise HTTPException(404, str(exc)) from None
    except BadProofRequest as exc:
        raise HTTPException(422, str(exc)) from None
    except LedgerError as exc:  # TamperError, StoreError: the store contradicts its heads
        raise HTTPException(503, f"this node cannot serve that proof: {exc}") from None


# -- queries (one read-only connection each) ---------------------------------------------------

_PARTY = "SELECT shipment FROM shipment_parties WHERE org = ?"


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        raise StoreError(f"{where}: stored JSON does not parse") from None


def visible_shipment(conn: sqlite3.Connection, who: Principal,
                     shipment: str) -> sqlite3.Row | None:
    """The shipment's row if it exists and `who` may see it, else None (the same None)."""
    sql = "SELECT id, state, doc, created_height, updated_height FROM shipments WHERE id = ?"
    args: list[Any] = [shipment]
    if not who.sees_everything:
        sql += f" AND id IN ({_PARTY})"
        args.append(who.org)
    row: sqlite3.Row | None = conn.execute(sql, args).fetchone()
    return row


def entry_belongs_to_org(conn: sqlite3.Connection, org: str, index: int) -> bool:
    """Whether log entry `index` belongs to a shipment `org` is a party to: a reading in one
    of its assignment windows, one of its events, or one of its operator entries."""
    reading = conn.execute(
        'SELECT 1 FROM readings r JOIN shipment_devices d ON d.dev = r.dev '
        'AND d.start <= r.t AND (d."end" IS NULL OR r.t < d."end") '
        "JOIN shipment_parties p ON p.shipment = d.shipment "
        "WHERE r.idx = ? AND p.org = ? LIMIT 1", (index, org)).fetchone()
    if reading is not None:
        return True
    event = conn.execute("SELECT 1 FROM events e JOIN shipment_parties p ON p.shipment = "
                         "e.shipment WHERE e.idx = ? AND p.org = ? LIMIT 1",
                         (index, org)).fetchone()
    if event is not None:
        return True
    for (text,) in conn.execute(f"SELECT doc FROM shipments WHERE id IN ({_PARTY})", (org,)):
        doc = _json(text, "shipment document")
        found = doc.get("entries") if isinstance(doc, dict) else None
        if isinstance(found, list) and any(type(i) is int and i == index for i in found):
            return True
    return False


def _reading_json(r: sqlite3.Row) -> dict[str, Any]:
    return {"entry": r["idx"], "device": r["dev"], "seq": r["seq"], "device_time": r["t"],
            "time_source": r["ts"], "kind": r["k"], "values": _json(r["d"], "reading"),
            "flags": r["flags"].split(",") if r["flags"] else [], "block": r["height"],
            "ledger_time": r["ledger_time"], "hash": bytes(r["hash"]).hex()}


def _event_json(r: sqlite3.Row) -> dict[str, Any]:
    doc = _json(r["doc"], f"event {r['idx']}")
    if not isinstance(doc, dict):
        raise StoreError(f"event {r['idx']}: stored document is not a JSON object")
    return {"entry": r["idx"], "block": r["height"], "ledger_time": r["ledger_time"],
            "contract": r["contract"], "version": r["version"], "event": r["event"],
            "shipment": r["shipment"], "device": r["dev"], "at": r["at"], "state": r["state"],
            "cause": doc.get("cause", []), "data": doc.get("data", {})}


def _shipment_json(row: sqlite3.Row, full: bool) -> dict[str, Any]:
    doc = _json(row["doc"], f"shipment {row['id']!r}")
    if not isinstance(doc, dict):
        raise StoreError(f"shipment {row['id']!r}: stored document is not a JSON object")
    heights = {"created_height": row["created_height"], "updated_height": row["updated_height"]}
    if full:
        return {**doc, "id": row["id"], "state": row["state"], **heights}
    return {"id": row["id"], "state": row["state"], "parties": doc.get("parties", []),
            "custodian": doc.get("custodian"), "deadline": doc.get("deadline"),
            "created": doc.get("created"), **heights}


def _page(items: list[dict[str, Any]], limit: int, scope: str, key: str) -> dict[str, Any]:
    more = len(items) > limit
    items = items[:limit]
    return {"items": items,
            "next_cursor": encode_cursor(scope, str(items[-1][key])) if more else None}


def _events_sql(who: Principal, *, after: int, shipment: str | None = None,
                event: str | None = None, since: int | None = None,
                t_from: int | None = None, t_to: int | None = None) -> tuple[str, list[Any]]:
    sql = "SELECT * FROM events WHERE idx > ?"
    args: list[Any] = [after]
    for clause, value in (("shipment = ?", shipment), ("event = ?", event),
                          ("ledger_time >= ?", since), ("at >= ?", t_from), ("at < ?", t_to)):
        if value is not None:
            sql += f" AND {clause}"
            args.append(value)
    if not who.sees_everything:
        sql += f" AND shipment IN ({_PARTY})"
        args.append(who.org)
    return sql, args


def _poll(conn: sqlite3.Connection, who: Principal, after_idx: int, after_height: int,
          limit: int = MAX_LIMIT) -> list[tuple[str, dict[str, Any]]]:
    """New events (idx > after_idx, those `who` may see) and new blocks (height >
    after_height), from one snapshot, in order: a block's notice after its events."""
    conn.execute("BEGIN")
    try:
        sql, args = _events_sql(who, after=after_idx)
        rows = conn.execute(sql + " ORDER BY idx LIMIT ?", [*args, limit]).fetchall()
        top = conn.execute("SELECT MAX(height) FROM blocks").fetchone()[0]
        cap = -1 if top is None else int(top)
        if len(rows) == limit:  # more events to come: only blocks whose events are all out
            cap = min(cap, int(rows[-1]["height"]) - 1)
        blocks = conn.execute("SELECT height, size, time, count FROM blocks WHERE height > ? "
                              "AND height <= ? ORDER BY height LIMIT ?",
                              (after_height, cap, limit)).fetchall()
    finally:
        conn.rollback()
    out: list[tuple[int, int, str, dict[str, Any]]] = [
        (int(r["height"]), 0, "contract_event", _event_json(r)) for r in rows]
    out += [(int(b["height"]), 1, "block", {"height": b["height"], "size": b["size"],
                                             "time": b["time"], "count": b["count"]})
            for b in blocks]
    out.sort(key=lambda x: (x[0], x[1], x[3].get("entry", 0)))
    return [(kind, body) for _, _, kind, body in out]


def _sse(kind: str, body: dict[str, Any]) -> str:
    head = f"id: {body['entry']}\n" if kind == "contract_event" else ""
    return f"{head}event: {kind}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"


# -- the router -------------------------------------------------------------------------------

def create_router(db_path: Path, book: TokenBook, node_id: Callable[[], str | None], *,
                  poll_s: float = 0.5) -> APIRouter:
    """The endpoints above over the store at `db_path`; `book` re-checks a stream's token at
    every poll (a revoked token ends its stream); `node_id` names this node in exports."""
    router = APIRouter()

    def db() -> AbstractContextManager[sqlite3.Connection]:
        return reading(db_path)

    def shipment_row(conn: sqlite3.Connection, who: Principal, shipment: str) -> sqlite3.Row:
        row = visible_shipment(conn, who, shipment)
        if row is None:  # missing, or another organisation's: the same answer
            raise HTTPException(404, f"no shipment {shipment!r}")
        return row

    @router.get("/v1/whoami", tags=["partner"])
    def whoami(who: Caller) -> dict[str, Any]:
        """The principal of the token: name, kind (operator, partner, auditor), org."""
        return who.to_json()

    @router.get("/v1/shipments", tags=["partner"])
    def shipments(who: Caller, state: Name = None, limit: Limit = 100,
                  cursor: Cursor = None) -> dict[str, Any]:
        """Shipments the caller may see, by id; `state` filters."""
        sql = "SELECT id, state, doc, created_height, updated_height FROM shipments WHERE 1"
        args: list[Any] = []
        if cursor is not None:
            try:
                after = decode_cursor(cursor, "shipments")
            except BadCursor as exc:
                raise HTTPException(400, f"cursor: {exc}") from None
            sql += " AND id > ?"
            args.append(after)
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        if not who.sees_everything:
            sql += f" AND id IN ({_PARTY})"
            args.append(who.org)
        with db() as conn:
            rows = conn.execute(sql + " ORDER BY id LIMIT ?", [*args, limit + 1]).fetchall()
            items = [_shipment_json(r, full=False) for r in rows]
        return _page(items, limit, "shipments", "id")

    @router.get("/v1/shipments/{shipment_id}", tags=["partner"])
    def shipment(who: Caller, shipment_id: ShipmentId) -> dict[str, Any]:
        """The shipment's document: parties, units, assignments, route, geofences, deadline,
        contracts, custodian, state history and the operator entries that made it."""
        with db() as conn:
            return _shipment_json(shipment_row(conn, who, shipment_id), full=True)

    @router.get("/v1/shipments/{shipment_id}/history", tags=["partner"], response_model=None)
    def history(who: Caller, shipment_id: ShipmentId,
                kind: Literal["readings", "events", "custody"] = "readings",
                t_from: Annotated[int | None, Query(alias="from", ge=0, le=MAX_INDEX,
                                                    description="device time (readings) or "
                                                    "event time `at`, inclusive")] = None,
                t_to: Annotated[int | None, Query(alias="to", ge=0, le=MAX_INDEX,
                                                  description="exclusive")] = None,
                limit: Limit = 100, cursor: Cursor = None) -> JSONResponse:
        """The shipment's readings (assigned devices, in their assignment windows), contract
        events, or custody transfers, in log order, `limit` a page."""
        after = _idx_cursor(cursor, kind)
        with db() as conn:
            shipment_row(conn, who, shipment_id)
            if kind == "readings":
                ws = clip(windows(conn, shipment_id), t_from, t_to)
                items = []
                if ws:
                    with proof_errors():  # TooManyWindows: 422
                        sql, args = readings_query(ws, after_idx=after, limit=limit + 1)
                    items = [_reading_json(r) for r in conn.execute(sql, args)]
            else:
                sql, args = _events_sql(
                    who, after=after, shipment=shipment_id, t_from=t_from, t_to=t_to,
                    event="custody_transfer" if kind == "custody" else None)
                rows = conn.execute(sql + " ORDER BY idx LIMIT ?", [*args, limit + 1])
                items = [_event_json(r) for r in rows]
        return JSONResponse({"shipment": shipment_id, "kind": kind,
                             **_page(items, limit, kind, "entry")})

    @router.get("/v1/shipments/{shipment_id}/epcis", tags=["partner"], response_model=None,
                responses={200: {"content": {"application/ld+json": {}},
                                 "description": "an EPCIS 2.0 document"},
                           501: {"description": "EPCIS export is not installed"}})
    def epcis(who: Caller, shipment_id: ShipmentId, t_from: FromTime = None,
              t_to: ToTime = None) -> JSONResponse:
        """EPCIS 2.0 JSON-LD of the shipment's events, with its readings (device time in
        [from, to)) as sensorElementList."""
        try:
            from ledger_node.epcis import EpcisExportError, shipment_epcis
        except ImportError:
            raise HTTPException(501, "EPCIS export is not available on this node") from None
        with db() as conn:
            row = shipment_row(conn, who, shipment_id)
            doc = _shipment_json(row, full=True)
            readings = _export_readings(conn, shipment_id, t_from, t_to)
            events = _export_events(conn, shipment_id)
            top = conn.execute("SELECT time FROM blocks ORDER BY height DESC LIMIT 1").fetchone()
            node = node_id() or proofs.genesis(conn).node
        try:
            body = shipment_epcis(doc, readings, events, node_id=node,
                                  created_ms=0 if top is None else int(top[0]))
        except EpcisExportError as exc:  # the store holds what the ledger never wrote
            log.error("EPCIS export of shipment %r failed: %s", shipment_id, exc)
            raise HTTPException(503, f"this node cannot export that shipment: {exc}") from None
        return JSONResponse(body, media_type="application/ld+json")

    @router.get("/v1/shipments/{shipment_id}/proof", tags=["partner", "proofs"])
    def proof(who: Caller, shipment_id: ShipmentId,
              height: Annotated[int | None, Query(ge=0, le=MAX_INDEX,
                                                  description="block height (default: newest)")]
              = None, t_from: FromTime = None, t_to: ToTime = None,
              parts: Parts = "readings,events,operator") -> dict[str, Any]:
        """A proof bundle (docs/proof-bundle.md) of the shipment's entries against the signed
        head of block `height`: as `parts` says (default: all three), its readings (device
        time in [from, to) too), its contract events and the operator entries that made it.
        `trustfleet verify-bundle` checks it offline."""
        with db() as conn:
            shipment_row(conn, who, shipment_id)
            with proof_errors():
                return bundle_for_shipment(conn, shipment_id, height=height, t_from=t_from,
                                           t_to=t_to, parts=frozenset(parts.split(",")))

    @router.get("/v1/events", tags=["events"])
    def events(who: Caller, shipment: Name = None,
               event: Annotated[str | None, Query(max_length=64, pattern=ID_PATTERN)] = None,
               since: Annotated[int | None, Query(ge=0, le=MAX_INDEX,
                                                  description="ledger time, ms, inclusive")]
               = None, limit: Limit = 100, cursor: Cursor = None) -> dict[str, Any]:
        """Contract events (alerts) in log order: all of them for operators and auditors, those
        of its shipments for a partner."""
        after = _idx_cursor(cursor, "events")
        sql, args = _events_sql(who, after=after, shipment=shipment, event=event, since=since)
        with db() as conn:
            rows = conn.execute(sql + " ORDER BY idx LIMIT ?", [*args, limit + 1]).fetchall()
            items = [_event_json(r) for r in rows]
        return _page(items, limit, "events", "entry")

    @router.get("/v1/events/stream", tags=["events"], response_class=StreamingResponse,
                responses={200: {"content": {"text/event-stream": {}},
                                 "description": "contract_event and block events"}})
    async def stream(who: Annotated[Principal, Depends(require_stream)],
                     last_event_id: Annotated[str | None, Header(alias="Last-Event-ID",
                                                                 max_length=24)] = None
                     ) -> StreamingResponse:
        """New contract events (`event: contract_event`, `id:` its leaf index, data as in
        /v1/events) and `block` notices ({height, size, time, count}), as Server-Sent Events;
        `Last-Event-ID` resumes after that event. The token may come as `?access_token=`."""
        if last_event_id is not None and not _IDX.fullmatch(last_event_id.strip()):
            raise HTTPException(400, "Last-Event-ID must be an event id this stream sent")

        def start() -> tuple[int, int]:
            with db() as conn:
                top = conn.execute("SELECT MAX(height) FROM blocks").fetchone()[0]
                last = conn.execute("SELECT MAX(idx) FROM events").fetchone()[0]
            after = int(last_event_id) if last_event_id is not None else last
            return (-1 if after is None else min(after, MAX_INDEX),
                    -1 if top is None else int(top))

        def poll(after_idx: int, after_height: int) -> list[tuple[str, dict[str, Any]]] | None:
            if not book.active(who.name):
                return None
            with db() as conn:
                return _poll(conn, who, after_idx, after_height)

        after_idx, after_height = await anyio.to_thread.run_sync(start)

        async def events() -> AsyncIterator[str]:
            nonlocal after_idx, after_height
            yield "retry: 2000\n\n"
            quiet = 0.0
            while True:
                try:
                    got = await anyio.to_thread.run_sync(poll, after_idx, after_height)
                except (LedgerError, sqlite3.Error) as exc:  # TokenStoreError, StoreError
                    log.error("event stream of %s ends: %s", who.name, exc)
                    yield 'event: error\ndata: {"detail":"this node cannot read its store"}\n\n'
                    return
                if got is None:
                    yield 'event: revoked\ndata: {"detail":"the token was revoked"}\n\n'
                    return
                for kind, body in got:
                    if kind == "block":
                        after_height = body["height"]
                    else:
                        after_idx = body["entry"]
                    yield _sse(kind, body)
                quiet = 0.0 if got else quiet + poll_s
                if quiet >= KEEPALIVE_S:
                    quiet = 0.0
                    yield ": keepalive\n\n"
                await anyio.sleep(poll_s)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    return router


def _export_readings(conn: sqlite3.Connection, shipment: str, t_from: int | None,
                     t_to: int | None) -> list[dict[str, Any]]:
    ws = clip(windows(conn, shipment), t_from, t_to)
    if not ws:
        return []
    with proof_errors():
        sql, args = readings_query(ws, limit=MAX_EXPORT_READINGS + 1)
    rows = conn.execute(sql, args).fetchall()
    if len(rows) > MAX_EXPORT_READINGS:
        raise HTTPException(422, f"more than {MAX_EXPORT_READINGS} readings in one export; ask "
                                 f"for a shorter device time range (from, to)")
    return [{"idx": r["idx"], "dev": r["dev"], "seq": r["seq"], "t": r["t"], "ts": r["ts"],
             "k": r["k"], "d": _json(r["d"], "reading"), "ledger_time": r["ledger_time"],
             "height": r["height"], "hash": bytes(r["hash"]).hex()} for r in rows]


def _export_events(conn: sqlite3.Connection, shipment: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT e.*, x.data AS entry FROM events e LEFT JOIN entries x "
                        "ON x.idx = e.idx WHERE e.shipment = ? ORDER BY e.idx",
                        (shipment,)).fetchall()
    out = []
    for r in rows:
        if r["entry"] is None:
            raise StoreError(f"event {r['idx']} has no log entry")
        e = _event_json(r)
        out.append({"idx": e["entry"], "contract": e["contract"], "version": e["version"],
                    "event": e["event"], "shipment": e["shipment"], "dev": e["device"],
                    "at": e["at"], "cause": e["cause"], "state": e["state"], "data": e["data"],
                    "hash": hashlib.sha256(bytes(r["entry"])).hexdigest()})
    return out

