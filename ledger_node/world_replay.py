"""Rebuild the world (shipments, contracts, events) from a committed log, and check it.

`replay_world` feeds every block to a fresh `World` through the same calls, in the same
order, as `Chain.apply` made when the block was cut (see ledger_node.world), and compares the
contract events it derives with the ones the block holds: an event entry that replay does not
reproduce byte for byte, or one that is missing, is a TamperError naming the block. So the
node's start-up, and `trustfleet verify`, prove that the events on the ledger follow from its
readings and contracts.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from ledger_node import entries as entry_types
from ledger_node.admin import ADMIN_TYPES, AdminRejected, decode_operator_entry, is_operator_entry
from ledger_node.contracts import ContractEvent, ReadingFact
from ledger_node.errors import TamperError
from ledger_node.store import Store
from ledger_node.world import AUDIT, CONTRACT_EVENT, World, event_entry

Progress = Callable[[int, int], None]


def replay_world(store: Store, ca_cert: bytes | None,
                 progress: Progress | None = None) -> World:
    """The world as of the store's tip, checked against the events the log holds."""
    return replay_world_conn(store.conn, ca_cert, progress)


def replay_world_conn(conn: sqlite3.Connection, ca_cert: bytes | None,
                      progress: Progress | None = None,
                      derived: list[tuple[int, ContractEvent]] | None = None) -> World:
    """`derived`, if given, collects every (entry index, event) the replay derives."""
    world = World()
    business = conn.execute(
        "SELECT COUNT(*) FROM entries WHERE kind <> 'reading' AND kind NOT IN "
        "('genesis', 'device_enrolled', 'device_revoked', 'device_rotated')").fetchone()[0]
    if not business:
        return world  # no shipment, contract, event or audit entry: nothing to derive
    top = conn.execute("SELECT MAX(height) FROM blocks").fetchone()[0]
    blocks = conn.execute("SELECT height, time, first, count FROM blocks ORDER BY height")
    for height, time, first, count in blocks.fetchall():
        _replay_block(conn, world, ca_cert, height, time, first, count, derived)
        if progress is not None:
            progress(height, top)
    return world


def _replay_block(conn: sqlite3.Connection, world: World, ca_cert: bytes | None,
                  height: int, time: int, first: int, count: int,
                  derived: list[tuple[int, ContractEvent]] | None) -> None:
    stored_events: list[tuple[int, bytes]] = []
    rows = conn.execute(
        "SELECT idx, kind, data FROM entries WHERE idx >= ? AND idx < ? AND kind <> 'reading' "
        "ORDER BY idx", (first, first + count)).fetchall()
    for idx, kind, data in rows:
        data = bytes(data)
        if kind == CONTRACT_EVENT:
            stored_events.append((idx, data))
        elif kind == AUDIT:
            world.audit(idx, data)
        elif kind not in ADMIN_TYPES and kind != entry_types.GENESIS and \
                is_operator_entry(data):
            try:
                op = decode_operator_entry(data, ca_cert, time)
                world.operator(op, idx, height, time)
            except AdminRejected as exc:
                raise TamperError(f"block {height}", f"committed entry {idx} ({kind}) no longer "
                                  f"applies: {exc}") from None
    if world.active:
        for r in conn.execute("SELECT idx, dev, seq, t, k, d FROM readings WHERE idx >= ? "
                              "AND idx < ? ORDER BY idx", (first, first + count)):
            world.reading(ReadingFact(idx=r[0], dev=r[1], seq=r[2], t=r[3], k=r[4],
                                      d=json.loads(r[5]), ledger_time=time))
    world.tick(time)
    events = world.take_events()
    first_event = stored_events[0][0] if stored_events else first + count - len(events)
    for n, event in enumerate(events):
        want = event_entry(event)
        got = stored_events[n][1] if n < len(stored_events) else None
        if got != want:
            raise TamperError(f"block {height}", _mismatch(n, want, got))
        world.record_event(event, first_event + n, time)
        if derived is not None:
            derived.append((first_event + n, event))
    if len(stored_events) > len(events):
        raise TamperError(f"block {height}", f"holds {len(stored_events)} contract events; "
                          f"replaying its readings and contracts gives {len(events)}")
    world.delta(height, [])  # drop the per-block bookkeeping


def _mismatch(n: int, want: bytes, got: bytes | None) -> str:
    if got is None:
        return f"replay derives contract event #{n} ({_describe(want)}) that the block lacks"
    return (f"contract event #{n} differs from replay: stored {_describe(got)}, "
            f"derived {_describe(want)}")


def _describe(data: bytes) -> str:
    try:
        value: Any = entry_types.decode_admin(data)
    except ValueError:
        return f"{len(data)} bytes"
    return f"{value.get('contract')}/{value.get('event')} at {value.get('at')}"


def check_world_tables(conn: sqlite3.Connection, world: World,
                       derived: list[tuple[int, ContractEvent]]) -> list[TamperError]:
    """The `events` and `shipments` rows against what a replay of the log derives."""
    problems: list[TamperError] = []
    rows = {r[0]: r for r in conn.execute(
        "SELECT idx, contract, version, event, shipment, dev, at, state FROM events")}
    for idx, event in derived:
        row = rows.pop(idx, None)
        want = (idx, event.contract, event.version, event.event, event.shipment, event.dev,
                event.at, event.state)
        if row is None or tuple(row) != want:
            problems.append(TamperError(f"events row {idx}", "missing" if row is None else
                                        f"says {tuple(row)[1:]}, the log gives {want[1:]}"))
    problems += [TamperError(f"events row {idx}", "indexes no contract event of the log")
                 for idx in sorted(rows)]
    states = dict(conn.execute("SELECT id, state FROM shipments").fetchall())
    for shipment in world.book.all():
        got = states.pop(shipment.id, None)
        if got != shipment.state:
            problems.append(TamperError(f"shipments row {shipment.id!r}",
                                        f"state {got!r}, the log gives {shipment.state!r}"))
    problems += [TamperError(f"shipments row {sid!r}", "no shipment of the log")
                 for sid in sorted(states)]
    return problems
