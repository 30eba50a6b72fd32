"""The business state derived from the log: shipments, contracts, contract events, audit.

The chain (ledger_node.chain) calls a `World` in a fixed order for every block, and the node
rebuilds it at start by replaying the log through the very same calls (`replay_world`):

    1. `operator(entry, index, time)` for each shipment/contract operator entry, in log order;
    2. `audit(record, index, time)` for each audit entry the node appends;
    3. `reading(row, time)` for each accepted reading, in log order;
    4. `tick(time)` once, at the block's ledger time — also for a block with no entries (the
       node cuts one on a heartbeat so that deadlines and silence fire in a quiet fleet);
    5. `take_events()`: the contract events the calls produced, in order. Each becomes a
       node-made entry appended after the block's other entries, and its state change is
       applied to the shipment at once.

Nothing here reads a clock or draws randomness: two nodes, or one node replaying its log,
derive byte-identical events (DESIGN.md §5). A failed block commit ends the node, which
rebuilds the world from the log when it starts again, so the in-memory state never has to be
rolled back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ledger_node.admin import (
    CONTRACT_REGISTERED,
    CONTRACT_RETIRED,
    CONTRACT_UPGRADED,
    SHIPMENT_ASSIGNED,
    SHIPMENT_CREATED,
    SHIPMENT_STATE,
    AdminRejected,
    OperatorEntry,
)
from ledger_node.contracts import (
    ContractDocumentError,
    ContractEngine,
    ContractEvent,
    ContractRegistrationError,
    ReadingFact,
    parse_contract,
)
from ledger_node.shipments import Shipment, ShipmentBook, ShipmentRejected
from ledger_node.store import ContractRow, EventRow, ShipmentRow, WorldDelta
from trustfleet import cbor

log = logging.getLogger(__name__)

CONTRACT_EVENT: Final = "contract_event"
AUDIT: Final = "audit"
NODE_ENTRY_TYPES: Final = frozenset({CONTRACT_EVENT, AUDIT})
"""Entries a node writes itself (CBOR maps), besides genesis."""

BAD_CONTRACT: Final = "bad_contract"
CONTRACT_CONFLICT: Final = "contract_conflict"
AUDIT_FIELDS: Final = frozenset({"type", "who", "kind", "org", "method", "path", "query",
                                 "status", "at"})
MAX_AUDIT_ENTRY: Final = 4096

_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str).encode


@dataclass
class _ContractRecord:
    name: str
    version: int
    text: str
    effective: int
    entry: int
    retired: int | None = None
    superseded: int | None = None


def event_entry(event: ContractEvent) -> bytes:
    """The node-made log entry of a contract event: deterministic CBOR."""
    return cbor.dumps(event.to_map())


def audit_entry(record: Mapping[str, Any]) -> bytes:
    """The log entry of one audited API request (the node appends it): deterministic CBOR."""
    body = {"type": AUDIT, **{k: record.get(k) for k in sorted(AUDIT_FIELDS - {"type"})}}
    data = cbor.dumps(body)
    if len(data) > MAX_AUDIT_ENTRY:
        body["query"] = str(body.get("query") or "")[:512]
        body["path"] = str(body.get("path") or "")[:512]
        data = cbor.dumps(body)
    return data


def check_audit_entry(value: Mapping[str, Any]) -> None:
    """An audit entry must be exactly the audit fields, small, with scalar values."""
    if set(value) != AUDIT_FIELDS:
        raise ValueError(f"an audit entry has exactly the fields {sorted(AUDIT_FIELDS)}")
    for key, item in value.items():
        if item is not None and not isinstance(item, str | int):
            raise ValueError(f"audit field {key!r} must be text, a number or null")


class World:
    """Shipments and contracts, as of the last block applied."""

    def __init__(self) -> None:
        self.book = ShipmentBook()
        self.engine = ContractEngine(self.book)
        self.contracts: dict[tuple[str, int], _ContractRecord] = {}
        self._events: list[ContractEvent] = []
        self._touched_shipments: set[str] = set()
        self._touched_contracts: set[tuple[str, int]] = set()
        self._created_height: dict[str, int] = {}
        self._entries: dict[str, list[int]] = {}
        self.audit_rows: list[tuple[int, str]] = []

    @property
    def live_contracts(self) -> int:
        """How many contract versions are in force or pending (neither retired nor
        superseded)."""
        return sum(1 for r in self.contracts.values()
                   if r.retired is None and r.superseded is None)

    @property
    def active(self) -> bool:
        """Whether any contract was ever registered (else readings need not be shown)."""
        return bool(self.contracts)

    # -- the calls of one block, in order ------------------------------------------------
    def operator(self, op: OperatorEntry, index: int, height: int, time: int) -> None:
        """Apply a shipment or contract operator entry. Raises AdminRejected (nothing changed)."""
        body = op.body
        if op.type in (SHIPMENT_CREATED, SHIPMENT_ASSIGNED, SHIPMENT_STATE):
            try:
                shipment = self.book.apply(body, time, index)
            except ShipmentRejected as exc:
                raise AdminRejected(exc.reason, exc.detail) from None
            self._created_height.setdefault(shipment.id, height)
            self._entries.setdefault(shipment.id, []).append(index)
            self._touched_shipments.add(shipment.id)
            self._collect(self.engine.on_shipment_change(shipment.id, time))
        elif op.type in (CONTRACT_REGISTERED, CONTRACT_UPGRADED):
            self._register(op, index, time)
        elif op.type == CONTRACT_RETIRED:
            name = body["name"]
            live = self._live_version(name)
            if live is None:
                raise AdminRejected(BAD_CONTRACT, f"no live contract {name!r} to retire")
            try:
                self.engine.retire(name, time)
            except ContractRegistrationError as exc:
                raise AdminRejected(CONTRACT_CONFLICT, str(exc)) from None
            live.retired = time
            self._touched_contracts.add((live.name, live.version))
        else:  # pragma: no cover - the chain routes only business types here
            raise AdminRejected("bad_payload", f"not a business entry: {op.type}")

    def _register(self, op: OperatorEntry, index: int, time: int) -> None:
        body = op.body
        try:
            document = parse_contract(body["doc"], source=f"{body['name']} v{body['version']}")
        except ContractDocumentError as exc:
            raise AdminRejected(BAD_CONTRACT, str(exc)) from None
        if (document.name, document.version) != (body["name"], body["version"]):
            raise AdminRejected(BAD_CONTRACT, f"the entry names {body['name']} v"
                                f"{body['version']} but the document is {document.name} v"
                                f"{document.version}")
        live = self._live_version(body["name"])
        upgrade = op.type == CONTRACT_UPGRADED
        if upgrade and live is None:
            raise AdminRejected(BAD_CONTRACT, f"no live contract {body['name']!r} to upgrade")
        if not upgrade and (live is not None or any(n == body["name"] for n, _ in self.contracts)):
            raise AdminRejected(CONTRACT_CONFLICT, f"contract {body['name']!r} is already "
                                "registered: upgrade it with a higher version")
        if live is not None and body["version"] <= live.version:
            raise AdminRejected(CONTRACT_CONFLICT, f"version {body['version']} is not above the "
                                f"live version {live.version}")
        effective = max(body["effective"] or time, time)
        try:
            if upgrade:
                self.engine.upgrade(document, effective)
            else:
                self.engine.register(document, effective)
        except ContractDocumentError as exc:
            raise AdminRejected(BAD_CONTRACT, str(exc)) from None
        except ContractRegistrationError as exc:
            raise AdminRejected(CONTRACT_CONFLICT, str(exc)) from None
        if live is not None:
            live.superseded = effective
            self._touched_contracts.add((live.name, live.version))
        key = (body["name"], body["version"])
        self.contracts[key] = _ContractRecord(body["name"], body["version"], body["doc"],
                                              effective, index)
        self._touched_contracts.add(key)

    def _live_version(self, name: str) -> _ContractRecord | None:
        live = [r for (n, _), r in self.contracts.items()
                if n == name and r.retired is None and r.superseded is None]
        return max(live, key=lambda r: r.version) if live else None

    def audit(self, index: int, entry: bytes) -> None:
        self.audit_rows.append((index, _audit_json(entry)))

    def reading(self, fact: ReadingFact) -> None:
        self._collect(self.engine.on_reading(fact))

    def tick(self, time: int) -> None:
        self._collect(self.engine.on_time(time))

    def _collect(self, events: list[ContractEvent]) -> None:
        self._events.extend(events)

    def take_events(self) -> list[ContractEvent]:
        events, self._events = self._events, []
        return events

    def record_event(self, event: ContractEvent, index: int, time: int) -> None:
        """Note an event's entry index; apply the shipment state it moves to."""
        if event.shipment is None:
            return
        shipment = self.book.get(event.shipment)
        if shipment is None:
            return
        rev = shipment.rev
        self.book.apply_event(event.to_map(), time, index)  # refused moves are skipped
        if shipment.rev == rev:
            return  # the shipment's document did not change: no row to rewrite
        self._touched_shipments.add(event.shipment)

    # -- what the block writes -------------------------------------------------------------
    def delta(self, height: int, events: list[tuple[int, ContractEvent]]) -> WorldDelta:
        """The table rows this block changes; resets the per-block bookkeeping."""
        out = WorldDelta()
        for sid in sorted(self._touched_shipments):
            shipment = self.book.get(sid)
            if shipment is not None:
                out.shipments.append(self._shipment_row(shipment))
        for key in sorted(self._touched_contracts):
            rec = self.contracts[key]
            out.contracts.append(ContractRow(rec.name, rec.version, _status(rec),
                                             rec.effective, rec.retired or rec.superseded,
                                             rec.text, rec.entry))
        for idx, event in events:
            out.events.append(EventRow(idx, event.contract, event.version, event.event,
                                       event.shipment, event.dev, event.at, event.state,
                                       _JSON({**event.to_map(), "idx": idx})))
        out.audit, self.audit_rows = self.audit_rows, []
        self._touched_shipments.clear()
        self._touched_contracts.clear()
        return out

    def _shipment_row(self, s: Shipment) -> ShipmentRow:
        doc = shipment_view(s, self._entries.get(s.id, []))
        return ShipmentRow(s.id, s.state, _JSON(doc),
                           tuple((p.org, p.role) for p in s.parties),
                           tuple((a.dev, a.start, a.end) for a in s.assignments),
                           self._created_height.get(s.id, 0))


def shipment_view(s: Shipment, entries: list[int]) -> dict[str, Any]:
    """The JSON document of a shipment the API serves (`shipments.doc`)."""
    return {"id": s.id, "state": s.state,
            "parties": [{"org": p.org, "role": p.role} for p in s.parties],
            "units": list(s.units),
            "assignments": [{"dev": a.dev, "start": a.start, "end": a.end}
                            for a in s.assignments],
            "route": s.route, "geofences": s.geofences, "deadline": s.deadline,
            "contracts": list(s.contracts), "custodian": s.custodian, "created": s.created,
            "custody": [{"at": c.at, "org": c.org, "cause": c.cause, "entry": c.entry}
                        for c in s.custody],
            "on_board": s.on_board,
            "unit_moves": [{"at": m.at, "t": m.t, "epc": m.epc, "action": m.action,
                            "reader": m.reader, "cause": m.cause, "entry": m.entry}
                           for m in s.unit_moves],
            "history": [{"at": h.at, "state": h.state, "cause": h.entry} for h in s.history],
            "entries": entries}


def _status(rec: _ContractRecord) -> str:
    if rec.retired is not None:
        return "retired"
    if rec.superseded is not None:
        return "superseded"
    return "active"


def _audit_json(entry: bytes) -> str:
    return _JSON(cbor.loads_strict(entry, max_size=MAX_AUDIT_ENTRY))
