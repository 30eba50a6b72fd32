"""The contract engine: committed readings and ledger time in, business events out.

Pure and deterministic (DESIGN.md §5, §7): all state comes from the calls below, made in log
order by block application — `register`/`upgrade`/`retire` for contract entries,
`on_reading` for every accepted reading, `on_time` once per block after its readings (and on
heartbeats), `on_shipment_change` after every shipment operator entry. No clock, no
randomness; iteration is over sorted names or insertion-ordered dicts. Apply the events
to the book (ShipmentBook.apply_event) after each call or at the end of the block.

Speed: rules are indexed by (shipment, reading kind) and (device, kind) and precompiled at
registration, so a reading meets only the rules that can fire on it. Structured tests
(threshold, geofence, corridor, outside_geofences, custody) run as Python; CEL runs only
for `when`. Windows are incremental (windows.py).

Order of the events of one call: shipments in id order (device-scoped contracts after
them), contracts by name then version, rules in document order, geofences by name; timers
by due time, then shipment, contract and rule.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ledger_node.contracts.document import ContractDocument
from ledger_node.contracts.errors import ContractRegistrationError
from ledger_node.contracts.events import CONTRACT_FAULT, ContractEvent, ContractInfo, ReadingFact
from ledger_node.contracts.rules import (
    RETIRED,
    SUPERSEDED,
    Evaluator,
    Scope,
    Slot,
    Version,
    compile_version,
)
from ledger_node.contracts.windows import LATE_HORIZON_MS
from ledger_node.shipments import CANCELLED, DELIVERED, FINAL_STATES, Shipment, ShipmentBook

__all__ = ["CONTRACT_FAULT", "ContractEngine", "ContractEvent", "ContractInfo", "ReadingFact"]

_Pairs = tuple[tuple[Slot, ...], bool]
_WatchKey = tuple[str, str, Scope, str]          # (version uid, rule id, scope, device)


class ContractEngine(Evaluator):
    """Runs registered contracts over the readings and time of the ledger (module doc)."""

    def __init__(self, shipments: ShipmentBook) -> None:
        super().__init__(shipments)
        self._versions: dict[str, list[Version]] = {}
        self._rev = 0
        self._has_device_scope = False
        self._ship_rules: dict[tuple[str, str], tuple[int, int, _Pairs]] = {}
        self._dev_rules: dict[tuple[str, str], tuple[int, _Pairs]] = {}
        self._last_seen: dict[str, tuple[int, int, int]] = {}   # dev -> (ledger, t, idx)
        self._timer_key: tuple[int, int] = (-1, -1)
        self._deadlines: list[tuple[int, str, str, str]] = []
        self._deadline_done: set[tuple[str, str, str]] = set()
        self._silence: list[tuple[int, _WatchKey]] = []
        self._watches: dict[_WatchKey, tuple[Slot, int, str | None]] = {}
        self._silence_fired: dict[_WatchKey, int] = {}
        self._closing: list[tuple[int, str]] = []
        self._closing_known: set[str] = set()
        self._closed: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------------
    def _changed(self) -> None:
        self._rev += 1
        self._has_device_scope = any(v.doc.applies_to.devices for vs in self._versions.values()
                                     for v in vs)

    def register(self, document: ContractDocument, effective: int) -> None:
        """A new contract (or a retired name again, with a higher version) from `effective`;
        raises ContractRegistrationError."""
        versions = self._versions.get(document.name)
        if versions:
            last = versions[-1]
            if last.status != RETIRED:
                raise ContractRegistrationError(
                    "already_registered", f"{document.name} is registered; upgrade it")
            if document.version <= last.doc.version:
                raise ContractRegistrationError(
                    "version_not_higher", f"{document.name} was at version {last.doc.version}")
        self._versions.setdefault(document.name, []).append(
            compile_version(document, effective))
        self._changed()

    def upgrade(self, document: ContractDocument, effective: int) -> None:
        """A higher version replaces the current one from `effective`."""
        versions = self._versions.get(document.name)
        if not versions:
            raise ContractRegistrationError("unknown_contract", f"no contract {document.name}")
        last = versions[-1]
        if last.status == RETIRED:
            raise ContractRegistrationError("retired", f"{document.name} is retired")
        if document.version <= last.doc.version:
            raise ContractRegistrationError(
                "version_not_higher",
                f"{document.name} is at version {last.doc.version}, got {document.version}")
        if effective < last.effective:
            raise ContractRegistrationError(
                "effective_too_early",
                f"version {last.doc.version} is effective from {last.effective}")
        last.ended, last.status = effective, SUPERSEDED
        versions.append(compile_version(document, effective))
        self._changed()

    def retire(self, name: str, at: int) -> None:
        """The current version stops at ledger time `at`."""
        versions = self._versions.get(name)
        if not versions:
            raise ContractRegistrationError("unknown_contract", f"no contract {name}")
        last = versions[-1]
        if last.status == RETIRED:
            raise ContractRegistrationError("retired", f"{name} is retired already")
        last.ended, last.status = max(at, last.effective), RETIRED
        self._changed()

    def contracts(self) -> list[ContractInfo]:
        """Every version ever registered, by name then version."""
        out = []
        for name in sorted(self._versions):
            for v in self._versions[name]:
                a = v.doc.applies_to
                applies: dict[str, Any] = (
                    {"shipments": "all"} if a.all_shipments
                    else {"shipments": list(a.shipments)} if a.shipments
                    else {"devices": list(a.devices)} if a.devices else {})
                out.append(ContractInfo(name, v.doc.version, v.status, v.effective, v.ended,
                                        applies, tuple(r.id for r in v.doc.rules),
                                        v.doc.description))
        return out

    def document(self, name: str, version: int | None = None) -> ContractDocument | None:
        """The registered document (latest version by default), for `contract show`."""
        for v in reversed(self._versions.get(name, [])):
            if version is None or v.doc.version == version:
                return v.doc
        return None

    # -- which rules meet a reading ----------------------------------------------------------
    def _versions_for(self, s: Shipment) -> list[Version]:
        out = []
        for name in sorted(self._versions):
            attached = name in s.contracts
            for v in self._versions[name]:
                a = v.doc.applies_to
                if attached or a.all_shipments or s.id in a.shipments:
                    out.append(v)
        return out

    def _shipment_rules(self, s: Shipment, kind: str) -> _Pairs:
        key = (s.id, kind)
        hit = self._ship_rules.get(key)
        if hit is not None and hit[0] == s.rev and hit[1] == self._rev:
            return hit[2]
        versions = self._versions_for(s)
        slots = tuple(slot for v in versions for slot in v.by_kind.get(kind, ()))
        pairs = (slots, any(v.tracks_position for v in versions))
        self._ship_rules[key] = (s.rev, self._rev, pairs)
        return pairs

    def _device_rules(self, dev: str, kind: str) -> _Pairs:
        key = (dev, kind)
        hit = self._dev_rules.get(key)
        if hit is not None and hit[0] == self._rev:
            return hit[1]
        versions = [v for name in sorted(self._versions) for v in self._versions[name]
                    if dev in v.doc.applies_to.devices]
        slots = tuple(slot for v in versions for slot in v.by_kind.get(kind, ()))
        pairs = (slots, any(v.tracks_position for v in versions))
        self._dev_rules[key] = (self._rev, pairs)
        return pairs

    # -- readings ----------------------------------------------------------------------------
    def on_reading(self, fact: ReadingFact) -> list[ContractEvent]:
        """Evaluate every contract that can fire on this reading; its events, in order."""
        seen = self._last_seen.get(fact.dev)
        if seen is None or (fact.ledger_time, fact.idx) >= (seen[0], seen[2]):
            self._last_seen[fact.dev] = (fact.ledger_time, fact.t, fact.idx)
        events: list[ContractEvent] = []
        if not self._versions:
            return events
        if not isinstance(fact.d, Mapping):          # untrusted device data: no values
            fact = replace(fact, d={})
        self._reading_map = None
        self._pos = None
        own = self._own = self.book.for_device(fact.dev, fact.t)
        shipments = own
        if fact.k == "rfid":
            epc = fact.d.get("epc")
            by_unit = self.book.for_unit(epc) if isinstance(epc, str) else []
            if by_unit:
                merged = {s.id: s for s in own}
                merged.update((s.id, s) for s in by_unit)
                shipments = [merged[i] for i in sorted(merged)]
        at = fact.ledger_time
        for s in shipments:
            if s.id in self._closed:
                continue                              # finished long ago: see _close
            slots, track = self._shipment_rules(s, fact.k)
            scope = ("s", s.id)
            if track and fact.k == "gps":
                self._track(scope, fact)
            for slot in slots:
                v = slot.v
                if v.effective <= at and (v.ended is None or at < v.ended):
                    self._feed(slot, fact, s, scope, events)
        if self._has_device_scope:
            slots, track = self._device_rules(fact.dev, fact.k)
            scope = ("d", fact.dev)
            if track and fact.k == "gps":
                self._track(scope, fact)
            ship = own[0] if own else None
            for slot in slots:
                if slot.v.active(at):
                    self._feed(slot, fact, ship, scope, events)
        return events

    # -- time --------------------------------------------------------------------------------
    def _rebuild_timers(self) -> None:
        deadlines: list[tuple[int, str, str, str]] = []
        watches: dict[_WatchKey, tuple[Slot, int, str | None]] = {}
        for s in self.book.all():
            if s.state in FINAL_STATES and s.id not in self._closing_known:
                self._closing_known.add(s.id)
                heapq.heappush(self._closing, (s.history[-1][0] + LATE_HORIZON_MS, s.id))
            versions = self._versions_for(s)
            for v in versions:
                for slot in v.deadline_rules:
                    key = (v.uid, slot.rule.id, s.id)
                    if s.deadline is not None and key not in self._deadline_done:
                        deadlines.append((s.deadline + slot.rule.grace_ms, s.id, v.uid,
                                          slot.rule.id))
            if s.state in FINAL_STATES:
                continue
            devs = sorted({a.dev for a in s.assignments
                           if a.end is None
                           or a.end > self._last_seen.get(a.dev, (0, -(2**63), 0))[1]})
            for v in versions:
                for slot in v.silence_rules:
                    for dev in devs:
                        watches[(v.uid, slot.rule.id, ("s", s.id), dev)] = (
                            slot, max(v.effective, s.created), s.id)
        for name in sorted(self._versions):
            for v in self._versions[name]:
                for slot in v.silence_rules:
                    for dev in v.doc.applies_to.devices:
                        watches[(v.uid, slot.rule.id, ("d", dev), dev)] = (slot, v.effective,
                                                                           None)
        heapq.heapify(deadlines)
        self._deadlines = deadlines
        self._watches = watches
        self._silence = [(self._last(k[3], w[1]) + w[0].rule.silence_ms, k)
                         for k, w in watches.items()]
        heapq.heapify(self._silence)
        self._timer_key = (self.book.revision, self._rev)

    def _last(self, dev: str, baseline: int) -> int:
        seen = self._last_seen.get(dev)
        return max(seen[0], baseline) if seen is not None else baseline

    def on_time(self, ledger_time: int) -> list[ContractEvent]:
        """Fire the deadlines passed and the devices silent as of `ledger_time`."""
        events: list[ContractEvent] = []
        if (self.book.revision, self._rev) != self._timer_key:
            self._rebuild_timers()
        while self._deadlines and self._deadlines[0][0] < ledger_time:
            due, sid, uid, rid = heapq.heappop(self._deadlines)
            self._check_deadline(uid, rid, sid, due, ledger_time, events)
        while self._silence and self._silence[0][0] <= ledger_time:
            _, key = heapq.heappop(self._silence)
            watch = self._watches.get(key)
            if watch is not None:
                self._check_silence(key, watch, ledger_time, events)
        while self._closing and self._closing[0][0] <= ledger_time:
            self._close(heapq.heappop(self._closing)[1])
        return events

    def _close(self, sid: str) -> None:
        """Drop the state of a shipment delivered or cancelled LATE_HORIZON_MS of ledger time
        ago; its later readings are ignored (so nothing it fired can fire again)."""
        scope = ("s", sid)
        for versions in self._versions.values():
            for v in versions:
                for slots in v.by_kind.values():
                    for slot in slots:
                        for key in [k for k in slot.windows
                                    if k == scope or (isinstance(k, tuple) and scope in k)]:
                            del slot.windows[key]
        for cache in (self._geo, self._units, self._custodian, self._ship_maps, self._unit_at):
            cache.pop(sid, None)
        self._positions.pop(scope, None)
        self._closed.add(sid)

    def _check_silence(self, key: _WatchKey, watch: tuple[Slot, int, str | None], now: int,
                       events: list[ContractEvent]) -> None:
        slot, baseline, sid = watch
        last = self._last(key[3], baseline)
        due = last + slot.rule.silence_ms
        if due > now:
            heapq.heappush(self._silence, (due, key))
            return
        # Silent now. Look again one period later: a reading in between re-arms the watch.
        heapq.heappush(self._silence, (now + slot.rule.silence_ms, key))
        if self._silence_fired.get(key) == last or not slot.v.active(now):
            return
        self._silence_fired[key] = last
        seen = self._last_seen.get(key[3])
        data = {"rule": slot.rule.id, "silent_ms": now - last,
                "last_seen": seen[0] if seen is not None else None,
                "last_t": seen[1] if seen is not None else None}
        s = self.book.get(sid) if sid is not None else None
        self._emit(slot, s, key[3], now, (seen[2],) if seen is not None else (), 0, data,
                   events)

    def _check_deadline(self, uid: str, rid: str, sid: str, due: int, now: int,
                        events: list[ContractEvent]) -> None:
        if (uid, rid, sid) in self._deadline_done:
            return
        self._deadline_done.add((uid, rid, sid))
        name, _, version = uid.rpartition("@")
        v = next((x for x in self._versions.get(name, ()) if str(x.doc.version) == version),
                 None)
        s = self.book.get(sid)
        if v is None or s is None or s.deadline is None or not v.active(now):
            return
        delivered, cancelled = s.entered(DELIVERED), s.entered(CANCELLED)
        if (delivered is not None and delivered <= due) or (
                cancelled is not None and cancelled <= due):
            return
        slot = next(x for x in v.deadline_rules if x.rule.id == rid)
        data = {"rule": rid, "deadline": s.deadline, "due": due, "delivered": delivered}
        self._emit(slot, s, None, now, (), 0, data, events)

    def on_shipment_change(self, shipment_id: str, at: int) -> list[ContractEvent]:
        """After a shipment operator entry at ledger time `at`: a delivery after the
        deadline fires late_delivery now (if no on_time did already)."""
        events: list[ContractEvent] = []
        s = self.book.get(shipment_id)
        if s is None or s.deadline is None or s.state != DELIVERED:
            return events
        for v in self._versions_for(s):
            for slot in v.deadline_rules:
                due = s.deadline + slot.rule.grace_ms
                if at > due and v.active(at):
                    self._check_deadline(v.uid, slot.rule.id, s.id, due, at, events)
        return events
