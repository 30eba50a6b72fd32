"""The shipment book: shipments, their devices and their state, derived only from the log.

Pure state (DESIGN.md §5 "Determinism"): the book changes only through `apply` (one
operator payload, already signature-checked, applied in log order at the ledger time of its
block), `set_state` and `set_custodian` (contract actions, applied by the node from contract
events). No clock, no I/O. Operator payloads:

    {"v": 1, "type": "shipment_created", "t": ms, "shipment": id,
     "parties": [{"org": str, "role": str}], "units": [SSCC EPC URI],
     "route": GeoJSON LineString | None, "geofences": {name: GeoJSON Polygon},
     "deadline": ms | None, "contracts": [contract names]}
    {"v": 1, "type": "shipment_assigned", "t": ms, "shipment": id, "dev": id,
     "start": device ms, "end": device ms | None}
    {"v": 1, "type": "shipment_state", "t": ms, "shipment": id, "state": str}

In shipment_created, "parties", "units", "route", "geofences", "deadline" and "contracts"
may be left out (empty / None). Unknown keys are refused.

State machine. Operator moves: created -> in_transit | cancelled; in_transit -> delivered |
cancelled; out_of_compliance -> delivered | cancelled. Contract moves: created | in_transit
-> out_of_compliance; in_transit | out_of_compliance -> delivered. delivered and cancelled
are final. The custodian starts as the first party with role "shipper" (None without one)
and changes by custody_transfer contract events.

Logistic units. The SSCCs in "units" start off board; unit_loaded and unit_unloaded
contract events (a `units:` rule, docs/contracts.md) put one on board or take it off, and
`unit_moves` keeps every move with its reader and cause.
"""

from __future__ import annotations

import math
import re
from bisect import insort
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import shapely

from ledger_node.errors import LedgerError

SHIPMENT_CREATED: Final = "shipment_created"
SHIPMENT_ASSIGNED: Final = "shipment_assigned"
SHIPMENT_STATE: Final = "shipment_state"
SHIPMENT_TYPES: Final = frozenset({SHIPMENT_CREATED, SHIPMENT_ASSIGNED, SHIPMENT_STATE})

BAD_PAYLOAD: Final = "bad_payload"
UNKNOWN_SHIPMENT: Final = "unknown_shipment"
ALREADY_EXISTS: Final = "already_exists"
BAD_TRANSITION: Final = "bad_transition"
BAD_GEOMETRY: Final = "bad_geometry"

CREATED: Final = "created"
IN_TRANSIT: Final = "in_transit"
DELIVERED: Final = "delivered"
OUT_OF_COMPLIANCE: Final = "out_of_compliance"
CANCELLED: Final = "cancelled"
STATES: Final = (CREATED, IN_TRANSIT, DELIVERED, OUT_OF_COMPLIANCE, CANCELLED)
FINAL_STATES: Final = frozenset({DELIVERED, CANCELLED})
ROLES: Final = frozenset({"shipper", "carrier", "consignee", "insurer", "customs"})

OPERATOR_MOVES: Final[Mapping[str, frozenset[str]]] = {
    CREATED: frozenset({IN_TRANSIT, CANCELLED}),
    IN_TRANSIT: frozenset({DELIVERED, CANCELLED}),
    OUT_OF_COMPLIANCE: frozenset({DELIVERED, CANCELLED}),
    DELIVERED: frozenset(),
    CANCELLED: frozenset(),
}
CONTRACT_MOVES: Final[Mapping[str, frozenset[str]]] = {
    CREATED: frozenset({OUT_OF_COMPLIANCE}),
    IN_TRANSIT: frozenset({OUT_OF_COMPLIANCE, DELIVERED}),
    OUT_OF_COMPLIANCE: frozenset({DELIVERED}),
    DELIVERED: frozenset(),
    CANCELLED: frozenset(),
}
CONTRACT_TARGETS: Final = frozenset({OUT_OF_COMPLIANCE, DELIVERED})

UNIT_LOADED: Final = "unit_loaded"
UNIT_UNLOADED: Final = "unit_unloaded"
UNIT_EVENTS: Final = frozenset({UNIT_LOADED, UNIT_UNLOADED})

MAX_PARTIES: Final = 16
MAX_UNITS: Final = 10_000
MAX_GEOFENCES: Final = 64
MAX_CONTRACTS: Final = 32
MAX_POSITIONS: Final = 10_000
MAX_ASSIGNMENTS: Final = 1_000

_ID_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CONTRACT_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SSCC_RE: Final = re.compile(r"urn:epc:id:sscc:(\d{6,12})\.(\d{5,11})")
_FIELDS: Final[Mapping[str, tuple[frozenset[str], frozenset[str]]]] = {
    # type: (required keys, optional keys)
    SHIPMENT_CREATED: (frozenset({"v", "type", "t", "shipment"}),
                       frozenset({"parties", "units", "route", "geofences", "deadline",
                                  "contracts"})),
    SHIPMENT_ASSIGNED: (frozenset({"v", "type", "t", "shipment", "dev", "start"}),
                        frozenset({"end"})),
    SHIPMENT_STATE: (frozenset({"v", "type", "t", "shipment", "state"}), frozenset()),
}


class ShipmentRejected(LedgerError):
    """A shipment payload or move the book refuses; `reason` is machine readable."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Party:
    org: str
    role: str


@dataclass(frozen=True)
class Assignment:
    """Device `dev` serves the shipment for device times in [start, end) (end None: open)."""

    dev: str
    start: int
    end: int | None

    def covers(self, t: int) -> bool:
        return self.start <= t and (self.end is None or t < self.end)


class StateChange(NamedTuple):
    """A state entered at ledger time `at`; `cause` is "operator" or contract@version:event,
    `entry` the index of the ledger entry that made the change (None outside a ledger)."""

    at: int
    state: str
    cause: str
    entry: int | None = None


class CustodyChange(NamedTuple):
    """Custody passed to `org` at ledger time `at` (cause and entry as in StateChange)."""

    at: int
    org: str
    cause: str
    entry: int | None = None


@dataclass(frozen=True)
class UnitMove:
    """A logistic unit loaded or unloaded: at device time `t` (of the scan), ledger time
    `at`, by the scan of `reader`; `cause` and `entry` as in StateChange."""

    at: int
    t: int
    epc: str
    action: str
    reader: str
    cause: str
    entry: int | None = None


@dataclass
class Shipment:
    id: str
    parties: tuple[Party, ...]
    assignments: list[Assignment]
    units: tuple[str, ...]
    route: dict[str, Any] | None
    geofences: dict[str, dict[str, Any]]
    deadline: int | None
    contracts: tuple[str, ...]
    state: str
    created: int
    custodian: str | None
    history: list[StateChange] = field(default_factory=list)
    """The states entered, the first being (created, "created", "operator", entry)."""
    custody: list[CustodyChange] = field(default_factory=list)
    unit_moves: list[UnitMove] = field(default_factory=list)
    unit_last: dict[str, tuple[int, bool]] = field(default_factory=dict)
    """SSCC -> (device time of the scan that last moved it, on board since) per moved unit."""
    rev: int = 0
    """Bumped on every change of this shipment (caches key on it)."""

    @property
    def on_board(self) -> list[str]:
        """The units on board now, sorted."""
        return sorted(epc for epc, (_, loaded) in self.unit_last.items() if loaded)

    def entered(self, state: str) -> int | None:
        """Ledger time at which the shipment first entered `state`, or None."""
        for at, s, _, _ in self.history:
            if s == state:
                return at
        return None


def _fail(detail: str, reason: str = BAD_PAYLOAD) -> ShipmentRejected:
    return ShipmentRejected(reason, detail)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return (isinstance(x, int | float) and not isinstance(x, bool)
            and math.isfinite(x))


def _check_position(pos: object, what: str) -> None:
    if not isinstance(pos, list | tuple) or len(pos) not in (2, 3):
        raise _fail(f"{what}: a position is [lon, lat] or [lon, lat, alt]")
    if not all(_is_number(c) for c in pos):
        raise _fail(f"{what}: coordinates must be finite numbers")
    lon, lat = pos[0], pos[1]
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise _fail(f"{what}: position {lon}, {lat} is outside lon [-180, 180], lat [-90, 90]",
                    BAD_GEOMETRY)


def _check_geometry_keys(geom: object, kind: str, what: str) -> list[Any]:
    if not isinstance(geom, Mapping):
        raise _fail(f"{what}: a GeoJSON {kind} object is expected")
    extra = set(geom) - {"type", "coordinates", "bbox"}
    if extra:
        raise _fail(f"{what}: unknown keys {sorted(map(str, extra))}")
    if geom.get("type") != kind:
        raise _fail(f"{what}: type must be {kind!r}")
    coords = geom.get("coordinates")
    if not isinstance(coords, list | tuple):
        raise _fail(f"{what}: coordinates must be a list")
    return list(coords)


def check_linestring(geom: object, what: str = "route") -> None:
    """A GeoJSON LineString of 2..MAX_POSITIONS distinct-enough positions, else rejected."""
    coords = _check_geometry_keys(geom, "LineString", what)
    if not 2 <= len(coords) <= MAX_POSITIONS:
        raise _fail(f"{what}: a LineString has 2..{MAX_POSITIONS} positions", BAD_GEOMETRY)
    for pos in coords:
        _check_position(pos, what)
    line = shapely.LineString([(p[0], p[1]) for p in coords])
    if line.length == 0:
        raise _fail(f"{what}: the line has zero length", BAD_GEOMETRY)


def check_polygon(geom: object, what: str) -> None:
    """A valid GeoJSON Polygon (closed rings of >= 4 positions, no self-intersection)."""
    rings = _check_geometry_keys(geom, "Polygon", what)
    if not 1 <= len(rings) <= 64:
        raise _fail(f"{what}: a Polygon has 1..64 rings", BAD_GEOMETRY)
    total = 0
    for ring in rings:
        if not isinstance(ring, list | tuple):
            raise _fail(f"{what}: a ring must be a list of positions")
        total += len(ring)
        if len(ring) < 4 or total > MAX_POSITIONS:
            raise _fail(f"{what}: rings need >= 4 positions, {MAX_POSITIONS} in all at most",
                        BAD_GEOMETRY)
        for pos in ring:
            _check_position(pos, what)
        if list(ring[0][:2]) != list(ring[-1][:2]):
            raise _fail(f"{what}: a ring must be closed (first position == last)", BAD_GEOMETRY)
    poly = shapely.Polygon([(p[0], p[1]) for p in rings[0]],
                           [[(p[0], p[1]) for p in r] for r in rings[1:]])
    if not poly.is_valid or poly.area == 0:
        raise _fail(f"{what}: invalid polygon ({shapely.is_valid_reason(poly)})", BAD_GEOMETRY)


def _check_id(value: object, what: str, pattern: re.Pattern[str] = _ID_RE) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _fail(f"{what} must be 1-64 characters of [A-Za-z0-9._-]"
                    + (" (contract names: lower case, starting with a letter or digit)"
                       if pattern is _CONTRACT_RE else ""))
    return value


def _check_created(body: Mapping[str, Any]) -> None:
    parties = body.get("parties") or []
    if not isinstance(parties, list | tuple) or len(parties) > MAX_PARTIES:
        raise _fail(f"parties must be a list of at most {MAX_PARTIES}")
    for p in parties:
        if not isinstance(p, Mapping) or set(p) != {"org", "role"}:
            raise _fail('each party is {"org": str, "role": str}')
        _check_id(p["org"], "party org")
        if p["role"] not in ROLES:
            raise _fail(f"party role must be one of {sorted(ROLES)}")
    units = body.get("units") or []
    if not isinstance(units, list | tuple) or len(units) > MAX_UNITS:
        raise _fail(f"units must be a list of at most {MAX_UNITS} SSCC EPC URIs")
    for u in units:
        m = _SSCC_RE.fullmatch(u) if isinstance(u, str) else None
        if m is None or len(m.group(1)) + len(m.group(2)) != 17:
            raise _fail(f"unit {u!r} is not an SSCC EPC URI (urn:epc:id:sscc:prefix.serial)")
    if len(set(units)) != len(units):
        raise _fail("units must not repeat")
    route = body.get("route")
    if route is not None:
        check_linestring(route)
    fences = body.get("geofences") or {}
    if not isinstance(fences, Mapping) or len(fences) > MAX_GEOFENCES:
        raise _fail(f"geofences must be a map of at most {MAX_GEOFENCES} named polygons")
    for name, poly in fences.items():
        _check_id(name, "geofence name")
        check_polygon(poly, f"geofence {name!r}")
    deadline = body.get("deadline")
    if deadline is not None and (not _is_int(deadline) or deadline < 0):
        raise _fail("deadline must be ms since the epoch (int >= 0) or None")
    contracts = body.get("contracts") or []
    if not isinstance(contracts, list | tuple) or len(contracts) > MAX_CONTRACTS:
        raise _fail(f"contracts must be a list of at most {MAX_CONTRACTS} names")
    for c in contracts:
        _check_id(c, "contract name", _CONTRACT_RE)
    if len(set(contracts)) != len(contracts):
        raise _fail("contracts must not repeat")


def check_shipment_body(body: Mapping[str, Any]) -> None:
    """Field and type check of one operator shipment payload; raises ShipmentRejected."""
    if not isinstance(body, Mapping):
        raise _fail("the payload must be a map")
    kind = body.get("type")
    if kind not in _FIELDS:
        raise _fail(f"type must be one of {sorted(SHIPMENT_TYPES)}")
    required, optional = _FIELDS[str(kind)]
    keys = set(body)
    if not all(isinstance(k, str) for k in keys):
        raise _fail("keys must be strings")
    missing = required - keys
    if missing:
        raise _fail(f"{kind}: missing {sorted(missing)}")
    extra = keys - required - optional
    if extra:
        raise _fail(f"{kind}: unknown keys {sorted(extra)}")
    if not _is_int(body["v"]) or body["v"] != 1:
        raise _fail("v must be 1")
    if not _is_int(body["t"]):
        raise _fail("t must be ms (int)")
    _check_id(body["shipment"], "shipment")
    if kind == SHIPMENT_CREATED:
        _check_created(body)
    elif kind == SHIPMENT_ASSIGNED:
        _check_id(body["dev"], "dev")
        start, end = body["start"], body.get("end")
        if not _is_int(start) or start < 0:
            raise _fail("start must be device ms (int >= 0)")
        if end is not None and (not _is_int(end) or end <= start):
            raise _fail("end must be None or device ms (int) after start")
    elif body["state"] not in STATES:
        raise _fail(f"state must be one of {list(STATES)}")


def _plain(x: Any) -> Any:
    """A deep copy of CBOR/JSON data as plain dicts, lists and scalars."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


class ShipmentBook:
    """Every shipment, by id; apply operator payloads and contract moves in log order."""

    def __init__(self) -> None:
        self._shipments: dict[str, Shipment] = {}
        self._by_dev: dict[str, list[tuple[int, str, int | None]]] = {}
        self._by_unit: dict[str, list[str]] = {}
        self.revision = 0
        """Bumped on every change of any shipment."""

    def _changed(self, s: Shipment) -> None:
        s.rev += 1
        self.revision += 1

    def apply(self, body: Mapping[str, Any], at_ms: int, entry: int | None = None) -> Shipment:
        """Apply one checked operator payload at ledger time `at_ms`, from ledger entry
        `entry`; raises ShipmentRejected."""
        check_shipment_body(body)
        kind, sid = body["type"], body["shipment"]
        if kind == SHIPMENT_CREATED:
            return self._create(body, at_ms, entry)
        s = self._shipments.get(sid)
        if s is None:
            raise _fail(f"no shipment {sid!r}", UNKNOWN_SHIPMENT)
        if kind == SHIPMENT_ASSIGNED:
            if s.state in FINAL_STATES:
                raise _fail(f"shipment {sid!r} is {s.state}", BAD_TRANSITION)
            if len(s.assignments) >= MAX_ASSIGNMENTS:
                raise _fail(f"shipment {sid!r} has {MAX_ASSIGNMENTS} assignments already")
            a = Assignment(body["dev"], body["start"], body.get("end"))
            s.assignments.append(a)
            insort(self._by_dev.setdefault(a.dev, []), (a.start, sid, a.end),
                   key=lambda e: (e[0], e[1], -1 if e[2] is None else e[2]))
        else:
            state = body["state"]
            if state not in OPERATOR_MOVES[s.state]:
                raise _fail(f"operator cannot move {sid!r} from {s.state} to {state}",
                            BAD_TRANSITION)
            s.state = state
            s.history.append(StateChange(at_ms, state, "operator", entry))
        self._changed(s)
        return s

    def _create(self, body: Mapping[str, Any], at_ms: int, entry: int | None) -> Shipment:
        sid = body["shipment"]
        if sid in self._shipments:
            raise _fail(f"shipment {sid!r} exists", ALREADY_EXISTS)
        parties = tuple(Party(p["org"], p["role"]) for p in body.get("parties") or [])
        shipper = next((p.org for p in parties if p.role == "shipper"), None)
        route = body.get("route")
        s = Shipment(
            id=sid, parties=parties, assignments=[], units=tuple(body.get("units") or []),
            route=_plain(route) if route is not None else None,
            geofences={str(k): _plain(v) for k, v in (body.get("geofences") or {}).items()},
            deadline=body.get("deadline"), contracts=tuple(body.get("contracts") or []),
            state=CREATED, created=at_ms, custodian=shipper,
            history=[StateChange(at_ms, CREATED, "operator", entry)])
        self._shipments[sid] = s
        for u in s.units:
            self._by_unit.setdefault(u, []).append(sid)
        self._changed(s)
        return s

    def get(self, shipment_id: str) -> Shipment | None:
        return self._shipments.get(shipment_id)

    def for_device(self, dev: str, t: int) -> list[Shipment]:
        """Shipments with an assignment of `dev` covering device time t, in id order."""
        entries = self._by_dev.get(dev)
        if not entries:
            return []
        if len(entries) == 1:
            start, sid, end = entries[0]
            covered = start <= t and (end is None or t < end)
            return [self._shipments[sid]] if covered else []
        ids = {sid for start, sid, end in entries if start <= t and (end is None or t < end)}
        return [self._shipments[i] for i in sorted(ids)]

    def for_unit(self, epc: str) -> list[Shipment]:
        """Shipments that list the SSCC `epc` among their units, in id order."""
        return [self._shipments[i] for i in sorted(self._by_unit.get(epc, ()))]

    def can_move(self, shipment_id: str, state: str) -> bool:
        """Whether a contract action may move the shipment to `state` now."""
        s = self._shipments.get(shipment_id)
        return s is not None and state in CONTRACT_MOVES[s.state]

    def set_state(self, shipment_id: str, state: str, at_ms: int, cause: str,
                  entry: int | None = None) -> None:
        """A contract action moves a shipment (see CONTRACT_MOVES); raises ShipmentRejected."""
        s = self._shipments.get(shipment_id)
        if s is None:
            raise _fail(f"no shipment {shipment_id!r}", UNKNOWN_SHIPMENT)
        if state not in CONTRACT_MOVES[s.state]:
            raise _fail(f"a contract cannot move {shipment_id!r} from {s.state} to {state}",
                        BAD_TRANSITION)
        s.state = state
        s.history.append(StateChange(at_ms, state, cause, entry))
        self._changed(s)

    def set_custodian(self, shipment_id: str, org: str, at_ms: int, cause: str,
                      entry: int | None = None) -> None:
        """A custody_transfer event hands the shipment to `org`; raises ShipmentRejected."""
        s = self._shipments.get(shipment_id)
        if s is None:
            raise _fail(f"no shipment {shipment_id!r}", UNKNOWN_SHIPMENT)
        _check_id(org, "custodian org")
        s.custodian = org
        s.custody.append(CustodyChange(at_ms, org, cause, entry))
        self._changed(s)

    def apply_event(self, event: Mapping[str, Any], at_ms: int,
                    entry: int | None = None) -> None:
        """Apply the book side of a contract event map (ContractEvent.to_map()), from ledger
        entry `entry`: its state move, a custody_transfer's new custodian, a unit move.
        Moves that are no longer allowed are skipped (the engine only sets `state` when the
        move was allowed when it fired)."""
        sid = event.get("shipment")
        if not isinstance(sid, str) or sid not in self._shipments:
            return
        cause = f"{event.get('contract')}@{event.get('version')}:{event.get('event')}"
        state = event.get("state")
        if isinstance(state, str) and self.can_move(sid, state):
            self.set_state(sid, state, at_ms, cause, entry)
        data = event.get("data")
        if event.get("event") == "custody_transfer" and isinstance(data, Mapping):
            to = data.get("to")
            if isinstance(to, str) and _ID_RE.fullmatch(to):
                self.set_custodian(sid, to, at_ms, cause, entry)
        if event.get("event") in UNIT_EVENTS and isinstance(data, Mapping):
            self._move_unit(sid, event, data, at_ms, cause, entry)

    def _move_unit(self, sid: str, event: Mapping[str, Any], data: Mapping[str, Any],
                   at_ms: int, cause: str, entry: int | None) -> None:
        s = self._shipments[sid]
        epc, reader, t = data.get("epc"), data.get("reader"), event.get("at")
        if not (isinstance(epc, str) and epc in s.units and isinstance(reader, str)
                and type(t) is int):
            return
        loading = event.get("event") == UNIT_LOADED
        if loading == s.unit_last.get(epc, (0, False))[1]:
            return                            # already where the event would put it
        s.unit_last[epc] = (t, loading)
        s.unit_moves.append(UnitMove(at_ms, t, epc, "loaded" if loading else "unloaded",
                                     reader, cause, entry))
        self._changed(s)

    def all(self) -> list[Shipment]:
        return [self._shipments[i] for i in sorted(self._shipments)]
