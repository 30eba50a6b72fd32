"""Which log entries belong to a shipment, and proof bundles of them (docs/proof-bundle.md).

A shipment's entries, read from the node's derived tables (ledger_node.store):

  * readings of the devices assigned to it whose device time `t` lies in an assignment's
    window [start, end) (table `shipment_devices`, `end` NULL: still open);
  * its contract events (table `events`, column `shipment`);
  * the operator entries that made it (`shipment_created`, `shipment_assigned`,
    `shipment_state`): the `entries` list of its `shipments.doc`.

`bundle_for_shipment` proves them against one signed head with
`ledger_node.bundle.build_bundle`, which adds the genesis entry and the operator history of
every device whose readings are included. Read-only; any connection of the store. Errors are
those of ledger_node.proofs (NotInLog, BadProofRequest, TamperError, StoreError), plus:

    TooManyWindows (BadProofRequest)   more assignment windows than one query may name
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ledger_node import proofs
from ledger_node.bundle import MAX_BUNDLE_ENTRIES, Subject, build_bundle
from ledger_node.errors import StoreError
from ledger_node.proofs import MAX_INDEX, BadProofRequest, NotInLog

__all__ = ["ALL_PARTS", "READING_COLUMNS", "TooManyWindows", "Window", "bundle_for_shipment",
           "clip", "event_indices", "operator_indices", "reading_indices", "readings_query",
           "windows"]

ALL_PARTS: Final = frozenset({"readings", "events", "operator"})
READING_COLUMNS: Final = "idx, dev, seq, hash, t, ts, k, d, flags, height, ledger_time"
MAX_WINDOWS: Final = 400
"""Assignment windows one readings query may name (SQLite caps compound SELECTs at 500)."""


class TooManyWindows(BadProofRequest):
    """A shipment with more (merged) assignment windows than one query may name."""


@dataclass(frozen=True)
class Window:
    """Device `dev`'s readings with device time in [start, end) (end None: open)."""

    dev: str
    start: int
    end: int | None


def windows(conn: sqlite3.Connection, shipment: str) -> list[Window]:
    """The shipment's assignment windows, merged per device where they overlap or touch, in
    (device, start) order."""
    rows = conn.execute('SELECT dev, start, "end" FROM shipment_devices WHERE shipment = ? '
                        'ORDER BY dev, start', (shipment,)).fetchall()
    merged: list[Window] = []
    for dev, start, end in rows:
        last = merged[-1] if merged else None
        if last is not None and last.dev == dev and (last.end is None or start <= last.end):
            new_end = None if last.end is None or end is None else max(last.end, end)
            merged[-1] = Window(dev, last.start, new_end)
        else:
            merged.append(Window(str(dev), int(start), None if end is None else int(end)))
    return merged


def clip(ws: Iterable[Window], t_from: int | None, t_to: int | None) -> list[Window]:
    """The windows cut to device time [t_from, t_to) (either bound open when None); empty
    ones dropped."""
    out = []
    for w in ws:
        start = w.start if t_from is None else max(w.start, t_from)
        end = w.end if t_to is None else (t_to if w.end is None else min(w.end, t_to))
        if end is None or start < end:
            out.append(Window(w.dev, start, end))
    return out


def readings_query(ws: Sequence[Window], *, after_idx: int = -1, max_height: int | None = None,
                   limit: int, columns: str = READING_COLUMNS) -> tuple[str, list[Any]]:
    """SQL and arguments for the readings in the windows (which must not overlap: use
    `windows`), idx > after_idx, committed at or below max_height, in log order, at most
    `limit` of them. Each window walks the (dev, t) index."""
    if not ws:
        raise ValueError("no windows: there is nothing to query")
    if len(ws) > MAX_WINDOWS:
        raise TooManyWindows(f"the shipment has {len(ws)} assignment windows; this node "
                             f"queries at most {MAX_WINDOWS} at once")
    parts, args = [], []  # type: ignore[var-annotated]
    for w in ws:
        sql = (f"SELECT {columns} FROM readings INDEXED BY readings_dev_t "
               "WHERE dev = ? AND t >= ? AND idx > ?")
        args += [w.dev, w.start, after_idx]
        if w.end is not None:
            sql += " AND t < ?"
            args.append(w.end)
        if max_height is not None:
            sql += " AND height <= ?"
            args.append(max_height)
        parts.append(sql)
    query = " UNION ALL ".join(parts)
    return f"SELECT * FROM ({query}) ORDER BY idx LIMIT ?", [*args, limit]


def reading_indices(conn: sqlite3.Connection, shipment: str, *, t_from: int | None = None,
                    t_to: int | None = None, max_height: int | None = None,
                    limit: int = MAX_BUNDLE_ENTRIES) -> list[int]:
    """Leaf indices of the shipment's readings (at most limit + 1 of them: more than `limit`
    tells the caller there are too many)."""
    ws = clip(windows(conn, shipment), t_from, t_to)
    if not ws:
        return []
    sql, args = readings_query(ws, max_height=max_height, limit=limit + 1, columns="idx")
    return [int(r[0]) for r in conn.execute(sql, args)]


def event_indices(conn: sqlite3.Connection, shipment: str, *,
                  max_height: int | None = None) -> list[int]:
    """Leaf indices of the shipment's contract events, committed at or below max_height."""
    rows = conn.execute("SELECT idx FROM events WHERE shipment = ? AND height <= ? ORDER BY idx",
                        (shipment, MAX_INDEX if max_height is None else max_height))
    return [int(r[0]) for r in rows]


def operator_indices(doc: dict[str, Any], *, size: int | None = None) -> list[int]:
    """Leaf indices of the operator entries that made the shipment (its doc's `entries`),
    below tree size `size`."""
    found = doc.get("entries", [])
    if not isinstance(found, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                              and 0 <= i <= MAX_INDEX for i in found):
        raise StoreError(f"shipment {doc.get('id')!r}: its stored document's entries are not "
                         f"a list of leaf indices")
    return sorted(i for i in found if size is None or i < size)


def load_doc(conn: sqlite3.Connection, shipment: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT doc FROM shipments WHERE id = ?", (shipment,)).fetchone()
    if row is None:
        return None
    try:
        doc = json.loads(row[0])
    except (TypeError, ValueError):
        doc = None
    if not isinstance(doc, dict):
        raise StoreError(f"shipment {shipment!r}: its stored document is not a JSON object")
    return doc


def bundle_for_shipment(conn: sqlite3.Connection, shipment: str, *, height: int | None = None,
                        t_from: int | None = None, t_to: int | None = None,
                        parts: frozenset[str] = ALL_PARTS,
                        limit: int = MAX_BUNDLE_ENTRIES) -> dict[str, Any]:
    """A proof bundle of the shipment's entries committed up to block `height` (the newest
    when None): `parts` chooses among its readings (device time in [t_from, t_to) as well as
    in an assignment window), its contract events and its operator entries."""
    if not parts or not parts <= ALL_PARTS:
        raise BadProofRequest(f"parts must be a non-empty subset of {sorted(ALL_PARTS)}")
    doc = load_doc(conn, shipment)
    if doc is None:
        raise NotInLog(f"no shipment {shipment!r}")
    head = proofs.signed_head(conn, height)
    indices: list[int] = []
    if "readings" in parts:
        found = reading_indices(conn, shipment, t_from=t_from, t_to=t_to,
                                max_height=head.height, limit=limit)
        if len(found) > limit:
            raise BadProofRequest(f"more than {limit} readings of shipment {shipment!r}; ask "
                                  f"for a shorter time range (from, to)")
        indices += found
    if "events" in parts:
        indices += event_indices(conn, shipment, max_height=head.height)
    if "operator" in parts:
        indices += operator_indices(doc, size=head.header.size)
    if not indices:
        raise NotInLog(f"shipment {shipment!r} has no entries of {sorted(parts)} in blocks "
                       f"0..{head.height} (device time [{_bound(t_from)}, {_bound(t_to)}))")
    if len(set(indices)) > limit:
        raise BadProofRequest(f"shipment {shipment!r} has more than {limit} entries; ask for "
                              f"fewer parts or a shorter time range")
    return build_bundle(conn, indices, head=head, subject=Subject(None, t_from, t_to),
                        limit=limit)


def _bound(t: int | None) -> str:
    return "open" if t is None else str(t)
