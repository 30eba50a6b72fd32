"""Reading rules at run time: one Slot per (contract version, rule), fed readings in log order.

A Slot holds the rule's precompiled tests and its windows per scope (a shipment, or a device
for device-scoped contracts; per geofence for geofence rules). `Evaluator` is the engine's
reading half: the shared caches (geometry, unit sets, CEL maps, last positions, custodians)
and the evaluation of one rule on one reading. The tests of a rule are ANDed in the order
threshold, corridor, outside_geofences, when; evaluation stops at the first false. A test
that cannot be evaluated (missing field, CEL error) raises Fault: the engine turns it into
one contract_fault event per (contract, version, kind, shipment) and the reading is not
fed to that rule's windows.
"""

from __future__ import annotations

import math
from bisect import bisect_right, insort
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ledger_node.contracts.cel import FAULT_MISSING_FIELD, FAULT_TYPE
from ledger_node.contracts.document import (
    ANY,
    REPEAT_READING,
    TRIGGER_DEADLINE,
    TRIGGER_READING,
    TRIGGER_SILENCE,
    ContractDocument,
    Rule,
)
from ledger_node.contracts.errors import CelEvalError
from ledger_node.contracts.events import CONTRACT_FAULT, ContractEvent, ReadingFact
from ledger_node.contracts.geo import Fence, ShipmentGeo, position
from ledger_node.contracts.windows import Aggregates, Cumulative, Episodes, Fire
from ledger_node.shipments import (
    CONTRACT_MOVES,
    UNIT_LOADED,
    UNIT_UNLOADED,
    Shipment,
    ShipmentBook,
)

FAULT_BAD_VALUE: Final = "bad_value"
MAX_POSITIONS_KEPT: Final = 256
ACTIVE: Final = "active"
SUPERSEDED: Final = "superseded"
RETIRED: Final = "retired"

Scope = tuple[str, str]          # ("s", shipment id) or ("d", device id)
PLAIN, GEOFENCE, CUSTODY, UNITS = 0, 1, 2, 3


class Fault(Exception):
    """A rule cannot be evaluated on this reading; `kind` is a FAULT_* code."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def number(d: Mapping[str, Any], name: str) -> float | int:
    """A numeric field of a reading, or Fault."""
    v = d.get(name)
    tv = type(v)
    if tv is float:
        if math.isfinite(v):  # type: ignore[arg-type]
            return v  # type: ignore[return-value]
        raise Fault(FAULT_BAD_VALUE, f"field {name!r} is not finite")
    if tv is int:
        return v  # type: ignore[return-value]
    if name not in d:
        raise Fault(FAULT_MISSING_FIELD, f"the reading has no field {name!r}")
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise Fault(FAULT_TYPE, f"field {name!r} is not a number")
    if not math.isfinite(v):
        raise Fault(FAULT_BAD_VALUE, f"field {name!r} is not finite")
    return v


def same(a: Any, b: Any) -> bool:
    """Equality without Python's True == 1."""
    return (isinstance(a, bool) == isinstance(b, bool)) and a == b


class Slot:
    """One reading rule of one contract version, with its windows per scope."""

    __slots__ = ("above", "below", "mode", "name", "readers", "rule", "uid", "v", "version",
                 "windows")

    def __init__(self, v: Version, rule: Rule) -> None:
        self.v = v
        self.rule = rule
        self.name = v.doc.name
        self.version = v.doc.version
        self.uid = v.uid
        self.mode = (CUSTODY if rule.custody_readers else UNITS if rule.units
                     else GEOFENCE if rule.geofence_mode is not None else PLAIN)
        th = rule.threshold
        self.above = th.above if th is not None else None
        self.below = th.below if th is not None else None
        self.readers = dict(rule.custody_readers)
        self.windows: dict[Any, Any] = {}

    def window(self, key: Any) -> Any:
        w = self.windows.get(key)
        if w is None:
            rule = self.rule
            w = (Cumulative(rule.cumulative_ms) if rule.cumulative_ms
                 else Episodes(rule.for_ms, edge=rule.geofence_mode is not None))
            self.windows[key] = w
        return w


@dataclass
class Version:
    """A registered contract version and its compiled rules."""

    doc: ContractDocument
    effective: int
    ended: int | None = None
    status: str = ACTIVE
    uid: str = ""
    by_kind: dict[str, tuple[Slot, ...]] = field(default_factory=dict)
    deadline_rules: tuple[Slot, ...] = ()
    silence_rules: tuple[Slot, ...] = ()
    tracks_position: bool = False

    def active(self, at: int) -> bool:
        return self.effective <= at and (self.ended is None or at < self.ended)


def compile_version(doc: ContractDocument, effective: int) -> Version:
    v = Version(doc, effective, uid=f"{doc.name}@{doc.version}",
                tracks_position=any(r.outside_geofences is not None for r in doc.rules))
    v.deadline_rules = tuple(Slot(v, r) for r in doc.rules if r.trigger == TRIGGER_DEADLINE)
    v.silence_rules = tuple(Slot(v, r) for r in doc.rules if r.trigger == TRIGGER_SILENCE)
    by_kind: dict[str, list[Slot]] = {}
    for rule in doc.rules:
        if rule.trigger == TRIGGER_READING:
            slot = Slot(v, rule)
            for kind in rule.kinds:
                by_kind.setdefault(kind, []).append(slot)
    v.by_kind = {k: tuple(s) for k, s in by_kind.items()}
    return v


class Evaluator:
    """The reading half of the engine: caches and per-rule evaluation (module doc)."""

    def __init__(self, book: ShipmentBook) -> None:
        self.book = book
        self._faults: set[tuple[str, int, str, str]] = set()
        self._geo: dict[str, ShipmentGeo] = {}
        self._units: dict[str, tuple[int, frozenset[str]]] = {}
        self._positions: dict[Scope, list[tuple[int, int, float, float]]] = {}
        self._custodian: dict[str, tuple[int, str | None]] = {}  # sid -> (device t, org)
        self._unit_at: dict[str, dict[str, tuple[int, bool]]] = {}
        """sid -> SSCC -> (device time of its last move, on board) for moves emitted here."""
        self._own: list[Shipment] = []
        """The shipments the current reading's device serves at its time (set by the engine
        for each reading)."""
        self._ship_maps: dict[str, tuple[int, dict[str, Any]]] = {}
        self._pending: dict[str, tuple[int, str]] = {}
        """sid -> (the shipment's rev, the state our events moved it to): until the book
        changes the shipment, later events see that state even if the caller applies the
        events only at the end of the block."""
        self._reading_map: dict[str, Any] | None = None
        self._pos: tuple[float, float] | None = None

    # -- dispatch ----------------------------------------------------------------------------
    def _feed(self, slot: Slot, fact: ReadingFact, s: Shipment | None, scope: Scope,
              events: list[ContractEvent]) -> None:
        try:
            if slot.mode == PLAIN:
                self._plain(slot, fact, s, scope, events)
            elif slot.mode == GEOFENCE:
                self._geofence(slot, fact, s, scope, events)
            elif slot.mode == CUSTODY:
                self._custody(slot, fact, s, events)
            else:
                self._unit_move(slot, fact, s, events)
        except (Fault, CelEvalError) as exc:
            self._fault(slot, s, fact.dev, exc.kind, exc.message, fact.t, (fact.idx,), events)

    def _plain(self, slot: Slot, fact: ReadingFact, s: Shipment | None, scope: Scope,
               events: list[ContractEvent]) -> None:
        rule = slot.rule
        d = fact.d
        value: Any = None
        window: dict[str, Any] | None = None
        if rule.window_field is not None:
            agg = slot.windows.get(("agg", scope))
            if agg is None:
                agg = slot.windows[("agg", scope)] = Aggregates(rule.window_ms)
            window = agg.add(fact.t, fact.idx, number(d, rule.window_field))
            if window is None:
                return                        # older than the window keeps: too late
        cond = True
        th = rule.threshold
        if th is not None:
            if th.has_equals:
                if th.field not in d:
                    raise Fault(FAULT_MISSING_FIELD, f"the reading has no field {th.field!r}")
                value = d[th.field]
                cond = same(value, th.equals)
            else:
                value = number(d, th.field)
                above, below = slot.above, slot.below
                cond = (above is not None and value > above) or (
                    below is not None and value < below)
        if cond and rule.corridor_width_m is not None:
            if s is None or s.route is None:
                return                        # no route: the corridor rule does not apply
            route = self._shipment_geo(s).route
            pos = self._position(fact)
            assert route is not None
            dist = route.distance_m(*pos)
            value = round(dist, 1)
            cond = dist > rule.corridor_width_m / 2
        if cond and rule.outside_geofences is not None:
            fix = self._last_fix(scope, fact.t)
            allowed = self._fences(s, rule.outside_geofences)
            cond = fix is None or not any(f.covers(*fix) for f in allowed)
            value = list(fix) if fix is not None else None
        if cond and rule.when is not None:
            cond = rule.when.evaluate(self._activation(slot, fact, s, window))
        if rule.repeat == REPEAT_READING:
            if cond:
                data: dict[str, Any] = {"rule": rule.id}
                if th is not None:
                    data["field"] = th.field
                if value is not None:
                    data["value"] = value
                self._emit(slot, s, fact.dev, fact.t, (fact.idx,), 1, data, events)
            return
        w = slot.windows.get(scope)
        if w is None:
            w = slot.window(scope)
        fired = w.add(fact.t, fact.idx, cond)
        if not fired:
            return
        if rule.cumulative_ms:
            data = self._data(rule, fired, None)
            data["total_ms"] = fired.total_ms
            self._emit(slot, s, fact.dev, fired.at, fired.cause, fired.cause_count, data, events)
            return
        for f in fired:
            self._emit(slot, s, fact.dev, f.at, f.cause, f.cause_count,
                       self._data(rule, f, value), events)

    @staticmethod
    def _data(rule: Rule, f: Fire, value: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"rule": rule.id, "start": f.start, "duration_ms": f.at - f.start}
        if rule.threshold is not None:
            data["field"] = rule.threshold.field
        if value is not None and not f.late:
            data["value"] = value
        if f.late:
            data["late"] = True
        return data

    def _geofence(self, slot: Slot, fact: ReadingFact, s: Shipment | None, scope: Scope,
                  events: list[ContractEvent]) -> None:
        if s is None:
            return
        rule = slot.rule
        pos = self._position(fact)
        geo = self._shipment_geo(s)
        names = (list(geo.fences) if rule.geofences == (ANY,)
                 else [n for n in rule.geofences if n in geo.fences])
        when: bool | None = None
        for name in names:
            inside = geo.fences[name].covers(*pos)
            cond = inside if rule.geofence_mode == "enter" else not inside
            if cond and rule.when is not None:
                if when is None:
                    when = rule.when.evaluate(self._activation(slot, fact, s, None))
                cond = when
            for f in slot.window((scope, name)).add(fact.t, fact.idx, cond):
                data = self._data(rule, f, None)
                data["geofence"] = name
                if not f.late:
                    data["lon"], data["lat"] = pos
                self._emit(slot, s, fact.dev, f.at, f.cause, f.cause_count, data, events)

    def _custody(self, slot: Slot, fact: ReadingFact, s: Shipment | None,
                 events: list[ContractEvent]) -> None:
        if s is None:
            return
        epc = _epc(fact)
        org = slot.readers.get(fact.dev)
        if org is None or epc not in self._unit_set(s):
            return
        last_t, current = self._custodian.get(s.id, (-(2**63), s.custodian))
        if org == current or fact.t < last_t:
            return                            # no change, or older than the last transfer
        if not self._when_holds(slot, fact, s):
            return
        self._custodian[s.id] = (fact.t, org)
        data: dict[str, Any] = {"rule": slot.rule.id, "epc": epc, "from": current, "to": org,
                                "reader": fact.dev}
        self._emit(slot, s, fact.dev, fact.t, (fact.idx,), 1, data, events)

    def _unit_move(self, slot: Slot, fact: ReadingFact, s: Shipment | None,
               events: list[ContractEvent]) -> None:
        """A scan of one of the shipment's units by a reader assigned to the shipment loads
        it; one by an unloading reader (any reader not on the shipment, unless the rule
        lists them) unloads it. A scan older than the unit's last move changes nothing."""
        if s is None:
            return
        epc = _epc(fact)
        if epc not in self._unit_set(s):
            return
        on_truck = any(o is s for o in self._own)
        readers = slot.rule.unload_readers
        unloads = not on_truck and (readers is None or fact.dev in readers)
        if not (on_truck or unloads):
            return
        moved = self._unit_at.setdefault(s.id, {})
        last_t, loaded = moved.get(epc) or s.unit_last.get(epc, (-(2**63), False))
        if on_truck == loaded or fact.t < last_t:
            return                            # already there, or older than its last move
        if not self._when_holds(slot, fact, s):
            return
        moved[epc] = (fact.t, on_truck)
        data: dict[str, Any] = {"rule": slot.rule.id, "epc": epc, "reader": fact.dev}
        events.append(ContractEvent(slot.name, slot.version,
                                    UNIT_LOADED if on_truck else UNIT_UNLOADED, s.id, fact.dev,
                                    fact.t, (fact.idx,), None, data, slot.rule.notify))

    # -- caches ------------------------------------------------------------------------------
    def _position(self, fact: ReadingFact) -> tuple[float, float]:
        pos = self._pos
        if pos is None:
            pos = position(fact.d)
            if pos is None:
                raise Fault(FAULT_MISSING_FIELD, "the gps reading has no valid lat/lon")
            self._pos = pos
        return pos

    def _track(self, scope: Scope, fact: ReadingFact) -> None:
        pos = position(fact.d)
        if pos is None:
            return
        fixes = self._positions.setdefault(scope, [])
        insort(fixes, (fact.t, fact.idx, pos[0], pos[1]))
        if len(fixes) > MAX_POSITIONS_KEPT:
            del fixes[0]

    def _last_fix(self, scope: Scope, t: int) -> tuple[float, float] | None:
        fixes = self._positions.get(scope)
        if not fixes:
            return None
        i = bisect_right(fixes, (t, 2**63))
        return (fixes[i - 1][2], fixes[i - 1][3]) if i > 0 else None

    def _shipment_geo(self, s: Shipment) -> ShipmentGeo:
        g = self._geo.get(s.id)
        if g is None:
            g = self._geo[s.id] = ShipmentGeo(s.geofences, s.route)
        return g

    def _fences(self, s: Shipment | None, names: tuple[str, ...]) -> list[Fence]:
        if s is None:
            return []
        geo = self._shipment_geo(s)
        if names == (ANY,):
            return list(geo.fences.values())
        return [geo.fences[n] for n in names if n in geo.fences]

    def _unit_set(self, s: Shipment) -> frozenset[str]:
        hit = self._units.get(s.id)
        if hit is None or hit[0] != s.rev:
            hit = self._units[s.id] = (s.rev, frozenset(s.units))
        return hit[1]

    def _shipment_map(self, s: Shipment | None) -> dict[str, Any] | None:
        if s is None:
            return None
        hit = self._ship_maps.get(s.id)
        if hit is not None and hit[0] == s.rev:
            return hit[1]
        m = {"id": s.id, "state": s.state, "deadline": s.deadline, "created": s.created,
             "custodian": s.custodian, "units": list(s.units),
             "parties": [{"org": p.org, "role": p.role} for p in s.parties],
             "geofences": sorted(s.geofences), "contracts": list(s.contracts)}
        self._ship_maps[s.id] = (s.rev, m)
        return m

    def _when_holds(self, slot: Slot, fact: ReadingFact, s: Shipment | None) -> bool:
        """The rule's `when` condition (true if it has none) for a reading without a window."""
        when = slot.rule.when
        return when is None or bool(when.evaluate(self._activation(slot, fact, s, None)))

    def _activation(self, slot: Slot, fact: ReadingFact, s: Shipment | None,
                    window: dict[str, Any] | None) -> dict[str, Any]:
        """The CEL variables the condition reads, with only the members it reads."""
        cond = slot.rule.when
        assert cond is not None
        act: dict[str, Any] = {}
        for var, members in cond.members.items():
            if var == "reading":
                full = self._reading_map
                if full is None:
                    full = self._reading_map = {
                        "idx": fact.idx, "dev": fact.dev, "seq": fact.seq, "t": fact.t,
                        "k": fact.k, "d": fact.d if type(fact.d) is dict else dict(fact.d),
                        "ledger_time": fact.ledger_time}
                value: Any = full
            elif var == "shipment":
                value = self._shipment_map(s)
            elif var == "window":
                value = window
            else:
                value = self._geo_map(fact, s)
            if members is not None and value is not None:
                value = {m: value[m] for m in members}
            act[var] = value
        return act

    def _geo_map(self, fact: ReadingFact, s: Shipment | None) -> dict[str, Any]:
        pos = position(fact.d)
        geo: dict[str, Any] = {"lon": None, "lat": None, "inside": [], "corridor_m": None}
        if pos is not None:
            geo["lon"], geo["lat"] = pos
            if s is not None:
                g = self._shipment_geo(s)
                geo["inside"] = g.inside(*pos)
                if g.route is not None:
                    geo["corridor_m"] = g.route.distance_m(*pos)
        return geo

    # -- output ------------------------------------------------------------------------------
    def _move(self, s: Shipment | None, target: str | None) -> str | None:
        if s is None or target is None:
            return None
        pending = self._pending.get(s.id)
        current = pending[1] if pending is not None and pending[0] == s.rev else s.state
        if target not in CONTRACT_MOVES[current]:
            return None
        self._pending[s.id] = (s.rev, target)
        return target

    def _emit(self, slot: Slot, s: Shipment | None, dev: str | None, at: int,
              cause: tuple[int, ...], count: int, data: dict[str, Any],
              events: list[ContractEvent]) -> None:
        if count > len(cause):
            data["cause_count"] = count
        rule = slot.rule
        events.append(ContractEvent(slot.name, slot.version, rule.emit,
                                    s.id if s is not None else None, dev, at, cause,
                                    self._move(s, rule.set_state), data, rule.notify))

    def _fault(self, slot: Slot, s: Shipment | None, dev: str | None, kind: str,
               message: str, at: int, cause: tuple[int, ...],
               events: list[ContractEvent]) -> None:
        where = s.id if s is not None else f"dev:{dev}"
        key = (slot.name, slot.version, kind, where)
        if key in self._faults:
            return
        self._faults.add(key)
        events.append(ContractEvent(slot.name, slot.version, CONTRACT_FAULT,
                                    s.id if s is not None else None, dev, at, cause, None,
                                    {"rule": slot.rule.id, "kind": kind,
                                     "message": message[:200]}, ()))


def _epc(fact: ReadingFact) -> str:
    """The EPC an RFID reading scanned (custody and units rules)."""
    epc = fact.d.get("epc")
    if not isinstance(epc, str):
        raise Fault(FAULT_MISSING_FIELD, "the rfid reading has no epc")
    return epc
