"""Reading the quarantine: filtered, cursor-paginated pages and single items, as JSON-ready
dicts. `GET /v1/quarantine[/{id}]` and `trustfleet quarantine --data` both use these, so the
API and the CLI show the same thing. Read-only; any SQLite connection of the store.

Pages are newest first. The cursor is the id of the last item returned, opaque to clients:
ids only grow, so new rows never shift a page, and eviction (ledger_node.quarantine) only
removes the oldest; paging with `cursor` never repeats or skips a row that still exists.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ledger_node.quarantine import OTHER_DEVICES
from ledger_node.quarantine_view import cbor_view

MAX_CURSOR = (1 << 63) - 1


def parse_time(text: str) -> int:
    """ms since the Unix epoch, from digits or ISO 8601 with a zone (2025-11-21T08:00:00Z)."""
    text = text.strip()
    if text.isdigit():
        value = int(text)
        if value > MAX_CURSOR:
            raise ValueError(f"{text!r} is out of range")
        return value
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither ms since the epoch nor ISO 8601") from None
    if t.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (add Z or +01:00)")
    return int(t.timestamp() * 1000)


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def decode_cursor(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_CURSOR:
        raise ValueError(f"cursor {text!r} is not one this node returned")
    return int(text)


@dataclass(frozen=True)
class QuarantineFilter:
    reason: str | None = None
    device: str | None = None
    since: int | None = None
    """received at or after, ms"""
    until: int | None = None
    """received before, ms"""


def _item(r: sqlite3.Row, with_raw: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": r["id"], "received": r["received"], "received_iso": iso(r["received"]),
        "reason": r["reason"], "detail": r["detail"], "topic": r["topic"], "device": r["dev"],
        "size": r["size"], "sha256": bytes(r["sha256"]).hex()}
    if with_raw:
        out["raw"] = base64.b64encode(bytes(r["raw"])).decode()
    return out


def list_page(conn: sqlite3.Connection, f: QuarantineFilter, *, limit: int,
              before: int | None = None, include_raw: bool = False) -> dict[str, Any]:
    """One page of stored items (newest first) plus what the whole quarantine holds."""
    where, args = [], []  # type: ignore[var-annotated]
    for clause, value in (("reason = ?", f.reason), ("dev = ?", f.device),
                          ("received >= ?", f.since), ("received < ?", f.until),
                          ("id < ?", before)):
        if value is not None:
            where.append(clause)
            args.append(value)
    columns = "id, received, reason, detail, topic, dev, size, sha256" + (
        ", raw" if include_raw else "")
    sql = f"SELECT {columns} FROM quarantine"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", [*args, limit + 1]).fetchall()
    more = len(rows) > limit
    items = [_item(r, include_raw) for r in rows[:limit]]
    return {**totals(conn), "summary": summary(conn, f), "items": items,
            "next_cursor": str(items[-1]["id"]) if more else None}


def totals(conn: sqlite3.Connection) -> dict[str, Any]:
    counts = dict(conn.execute("SELECT reason, COUNT(*) FROM quarantine GROUP BY reason")
                  .fetchall())
    stored = conn.execute("SELECT COUNT(*), COALESCE(SUM(length(raw)), 0) FROM quarantine"
                          ).fetchone()
    limits: dict[str, Any] = {}
    row = conn.execute("SELECT value FROM meta WHERE key = 'quarantine_limits'").fetchone()
    if row is not None:
        limits = json.loads(bytes(row[0]))
    try:
        summarised = conn.execute("SELECT COALESCE(SUM(count), 0) FROM quarantine_summary"
                                  ).fetchone()[0]
    except sqlite3.OperationalError:  # a store no node of this version has opened yet
        summarised = 0
    return {"counts": counts, "stored": {"rows": stored[0], "bytes": stored[1], **limits},
            "summarised": summarised}


def summary(conn: sqlite3.Connection, f: QuarantineFilter) -> list[dict[str, Any]]:
    """Counters of items summarised rather than stored; filtered by reason and device only
    (a counter spans a time range: first_seen..last_seen)."""
    sql = "SELECT reason, dev, count, bytes, first_seen, last_seen FROM quarantine_summary"
    where, args = [], []
    if f.reason is not None:
        where.append("reason = ?")
        args.append(f.reason)
    if f.device is not None:
        where.append("dev = ?")
        args.append(f.device)
    if where:
        sql += " WHERE " + " AND ".join(where)
    try:
        rows = conn.execute(sql + " ORDER BY count DESC, reason, dev LIMIT 1000", args)
        return [{"reason": r[0], "device": r[1] or None, "count": r[2], "bytes": r[3],
                 "first_seen": r[4], "last_seen": r[5],
                 "other_devices": r[1] == OTHER_DEVICES} for r in rows]
    except sqlite3.OperationalError:
        return []


def get_item(conn: sqlite3.Connection, item_id: int) -> dict[str, Any] | None:
    """One stored item with its raw bytes (base64), and a decoded view if they are CBOR."""
    r = conn.execute("SELECT * FROM quarantine WHERE id = ?", (item_id,)).fetchone()
    if r is None:
        return None
    raw = bytes(r["raw"])
    out = _item(r, with_raw=True)
    text, error = cbor_view(raw)
    out.update(stored_size=len(raw), truncated=len(raw) < r["size"], cbor=text,
               cbor_error=error)
    return out
