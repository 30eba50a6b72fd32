"""EPCIS 2.0 JSON-LD export of one shipment's history (DESIGN.md §8; docs/epcis.md).

`shipment_epcis` turns the ledger entries of a shipment (its devices' readings and the contract
events about it) into one `EPCISDocument` that validates against GS1's EPCIS 2.0 JSON schema.
Pure: no I/O, no clock. The same input gives the same document, whatever the order of the input
lists: events are sorted by eventTime, then ledger entry index.

    one ledger entry -> at most one ObjectEvent (action OBSERVE), with
        eventID   urn:uuid: UUIDv5(EVENT_ID_NAMESPACE, entry hash in lower-case hex)
        tf:entry  the entry index: a partner fetches its inclusion proof with it
    rfid                    -> epcList [epc], bizStep loading | transporting | receiving
    temp, hum, shock, door  -> epcList = units, sensorElementList, bizStep sensor_reporting
    contract event          -> epcList = units, bizStep and disposition from the event/state;
                               unit_loaded / unit_unloaded: epcList [the unit's SSCC],
                               bizStep loading / unloading
                               (contract_fault events are about a contract: not exported)
    gps                     -> no event of its own: the readPoint (geo: URI) of the others

What bad input gets:
- `EpcisExportError` when what the ledger itself writes or checks is malformed: an entry index,
  hash or ledger time, a device id, a kind, the shipment record, a contract event. That is not
  ledger data, so no document is made.
- Exported safely when what a *device* reported is bad (it was signed and is on the ledger):
  a sensor value that is not a finite number becomes a sensorReport with exception
  ERROR_CONDITION and no value; a scan whose EPC is not a pure-identity EPC URI of one of the
  shipment's units, and a reading or contract event whose device-derived time cannot be
  written as RFC 3339, are left out and listed under the document's "tf:notExported" with the
  entry index and a reason.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote

from ledger_node.shipments import UNIT_EVENTS, UNIT_LOADED, UNIT_UNLOADED

__all__ = [
    "CONTEXT",
    "EPCIS_CONTEXT",
    "EVENT_ID_NAMESPACE",
    "TF_NS",
    "EpcisExportError",
    "event_id",
    "shipment_epcis",
]

EPCIS_CONTEXT: Final = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
TF_NS: Final = "https://trustfleet.example/epcis/"
CONTEXT: Final = (EPCIS_CONTEXT, {"tf": TF_NS})
EVENT_ID_NAMESPACE: Final = uuid.UUID("3e1bf84a-f5cc-534c-8b77-4dbde684285f")
"""Fixed for good (event ids must never change): it is uuid5(NAMESPACE_URL,
"https://trustfleet.example/epcis/event"), and stays this value if TF_NS ever changes."""
_NAMESPACE_BYTES: Final = EVENT_ID_NAMESPACE.bytes

GEO_MAX_AGE_MS: Final = 10 * 60 * 1000
"""A GPS fix older than this (device time) is not used as an event's readPoint."""
MAX_TIME_MS: Final = 253_402_300_800_000
"""10000-01-01T00:00:00Z: the first instant RFC 3339 cannot write. Times are in [0, this)."""
MAX_READINGS: Final = 2_000_000
MAX_EVENTS: Final = 200_000
MAX_UNITS: Final = 10_000

NOT_AN_EPC: Final = "not_an_epc_uri"
NOT_A_UNIT: Final = "not_a_unit_of_this_shipment"
BAD_DEVICE_TIME: Final = "bad_device_time"

SENSOR_KINDS: Final = frozenset({"temp", "hum", "humidity", "shock", "door"})
ALARM_EVENTS: Final = frozenset({"excursion", "shock"})
CONTRACT_FAULT: Final = "contract_fault"  # ledger_node.contracts: about a contract, not goods
TIME_SOURCES: Final = frozenset({"gps", "rtc", "ntp"})

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_HASH_RE: Final = re.compile(r"[0-9a-fA-F]{64}")
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # trustfleet.topics' rule
# An EPC pure-identity URI (GS1 Tag Data Standard): every character is legal in a URI.
_EPC_RE: Final = re.compile(r"urn:epc:id:[a-z]{2,10}:(?:[A-Za-z0-9!'()*+,\-.:;=_]|%[0-9A-Fa-f]{2})"
                            r"{1,150}")


class EpcisExportError(ValueError):
    """The input is not ledger data of one shipment; `entry` is the index at fault, if one."""

    def __init__(self, detail: str, entry: int | None = None) -> None:
        super().__init__(detail if entry is None else f"entry {entry}: {detail}")
        self.detail = detail
        self.entry = entry


@dataclass(frozen=True, slots=True)
class _Reading:
    idx: int
    dev: str
    kind: str
    t: int | None
    """device time, None when it cannot be exported"""
    ledger_time: int
    hash: str
    d: Mapping[str, Any]
    ts: str | None


@dataclass(frozen=True, slots=True)
class _Event:
    idx: int
    event: str
    contract: str
    version: int
    dev: str | None
    at: int | None
    """the contract's time of the event, None when it cannot be exported"""
    ledger_time: int | None
    cause: tuple[int, ...]
    state: str | None
    hash: str
    custody: tuple[str | None, str | None]
    """custody_transfer: (from, to) organisation ids, each None if unknown"""
    unit: str | None = None
    """unit_loaded / unit_unloaded: the SSCC moved, None if it is not an EPC URI"""


def event_id(entry_hash_hex: str) -> str:
    """The eventID of the EPCIS event made from the ledger entry with this hash (64 hex
    digits): urn:uuid: of uuid.uuid5(EVENT_ID_NAMESPACE, the hash in lower-case hex)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + entry_hash_hex.lower().encode(),
                                    usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"urn:uuid:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def shipment_epcis(shipment: Mapping[str, Any], readings: Sequence[Mapping[str, Any]],
                   events: Sequence[Mapping[str, Any]], *, node_id: str,
                   created_ms: int) -> dict[str, Any]:
    """The EPCISDocument of `shipment`: its devices' `readings` and the contract `events`
    about it, as the API layer reads them from the store (DESIGN.md §8). `node_id` and
    `created_ms` (creationDate) say which node made it and when.

    Raises EpcisExportError if the input is not ledger data (see the module docstring)."""
    ship_id, state, units = _shipment(shipment)
    node = _name(node_id, "node id")
    created = _ledger_time(created_ms, "created_ms")
    if isinstance(readings, str | bytes) or not isinstance(readings, Sequence):
        raise EpcisExportError("readings must be a list")
    if isinstance(events, str | bytes) or not isinstance(events, Sequence):
        raise EpcisExportError("events must be a list")
    if len(readings) > MAX_READINGS or len(events) > MAX_EVENTS:
        raise EpcisExportError(f"more than {MAX_READINGS} readings or {MAX_EVENTS} events "
                               "for one document")
    rs = [_reading(r) for r in readings]
    es = [_event(e, ship_id) for e in events]
    _unique(rs, es)
    return _Export(ship_id, units, rs, es).document(node, state, created)


# -- the document --------------------------------------------------------------------------


class _Export:
    """One export: the plan (which entry becomes which event, in what order), then the
    rendering of each event, in order."""

    def __init__(self, ship_id: str, units: tuple[str, ...], readings: list[_Reading],
                 events: list[_Event]) -> None:
        self.ship_id = ship_id
        self.units = units
        self.unit_set = frozenset(units)
        self.readings = readings
        self.events = events
        self.shipment_uri = f"{TF_NS}shipment/{quote(ship_id, safe='')}"
        self.fixes = _fixes(readings)
        self.alarmed: set[int] = set()
        self.handed_over: set[int] = set()
        for e in events:
            if _contract_step(e)[1] == "non_conformant":
                self.alarmed.update(e.cause)
            if e.event == "custody_transfer":
                self.handed_over.update(e.cause)

    def document(self, node: str, state: str, created: int) -> dict[str, Any]:
        plan: list[tuple[int, int, _Reading | _Event]] = []
        withheld: list[tuple[int, str]] = []
        for r in self.readings:
            if r.kind != "rfid" and r.kind not in SENSOR_KINDS:
                continue
            if r.t is None:
                withheld.append((r.idx, BAD_DEVICE_TIME))
            elif r.kind == "rfid" and (reason := self._scan_problem(r)) is not None:
                withheld.append((r.idx, reason))
            else:
                plan.append((r.t, r.idx, r))
        for e in self.events:
            if e.event == CONTRACT_FAULT:
                continue
            if e.at is None:
                withheld.append((e.idx, BAD_DEVICE_TIME))
            else:
                plan.append((e.at, e.idx, e))
        plan.sort(key=lambda p: (p[0], p[1]))
        seen: set[str] = set()
        out = []
        for _, _, item in plan:
            if isinstance(item, _Event):
                out.append(self._contract_event(item))
            elif item.kind == "rfid":
                out.append(self._scan(item, seen))
            else:
                out.append(self._sensor_event(item))
        return {
            "@context": [CONTEXT[0], dict(CONTEXT[1])],
            "type": "EPCISDocument",
            "schemaVersion": "2.0",
            "creationDate": _iso(created),
            "tf:shipment": self.ship_id,
            "tf:shipmentState": state,
            "tf:node": node,
            "tf:notExported": [{"tf:entry": idx, "tf:reason": reason}
                               for idx, reason in sorted(withheld)],
            "epcisBody": {"eventList": out},
        }

    def _scan_problem(self, r: _Reading) -> str | None:
        epc = r.d.get("epc")
        if not isinstance(epc, str) or not _EPC_RE.fullmatch(epc):
            return NOT_AN_EPC
        return None if epc in self.unit_set else NOT_A_UNIT

    def _head(self, when: str, recorded: int | None, entry_hash: str) -> dict[str, Any]:
        out = {"type": "ObjectEvent", "eventTime": when, "eventTimeZoneOffset": "+00:00"}
        if recorded is not None:
            out["recordTime"] = _iso_cached(recorded)
        out["eventID"] = event_id(entry_hash)
        return out

    def _read_point(self, dev: str, when: int) -> dict[str, str]:
        times, geos = self.fixes.get(dev, ((), ()))
        i = bisect.bisect_right(times, when) - 1
        if i >= 0 and when - times[i] <= GEO_MAX_AGE_MS:
            return {"id": geos[i]}
        return {"id": _device_uri(dev)}

    def _tail(self, out: dict[str, Any], r: _Reading) -> dict[str, Any]:
        out["tf:entry"] = r.idx
        out["tf:entryHash"] = r.hash
        out["tf:device"] = r.dev
        if r.ts is not None:
            out["tf:timeSource"] = r.ts
        return out

    def _scan(self, r: _Reading, seen: set[str]) -> dict[str, Any]:
        assert r.t is not None
        epc = r.d["epc"]
        if r.idx in self.handed_over:
            step, disposition = "receiving", None
        elif epc not in seen:
            step, disposition = "loading", "in_transit"
        else:
            step, disposition = "transporting", "in_transit"
        seen.add(epc)
        out = self._head(_iso(r.t), r.ledger_time, r.hash)
        out.update(epcList=[epc], action="OBSERVE", bizStep=step)
        if disposition is not None:
            out["disposition"] = disposition
        out["readPoint"] = self._read_point(r.dev, r.t)
        out["bizTransactionList"] = [{"bizTransaction": self.shipment_uri}]
        return self._tail(out, r)

    def _sensor_event(self, r: _Reading) -> dict[str, Any]:
        assert r.t is not None
        when = _iso(r.t)
        out = self._head(when, r.ledger_time, r.hash)
        if self.units:
            out["epcList"] = list(self.units)
        out.update(action="OBSERVE", bizStep="sensor_reporting")
        out["readPoint"] = self._read_point(r.dev, r.t)
        out["bizTransactionList"] = [{"bizTransaction": self.shipment_uri}]
        out["sensorElementList"] = [{
            "sensorMetadata": {"time": when, "deviceID": _device_uri(r.dev)},
            "sensorReport": _sensor_reports(r, alarm=r.idx in self.alarmed),
        }]
        return self._tail(out, r)

    def _contract_event(self, e: _Event) -> dict[str, Any]:
        assert e.at is not None
        step, disposition = _contract_step(e)
        out = self._head(_iso(e.at), e.ledger_time, e.hash)
        units = [e.unit] if e.unit is not None else list(self.units)
        out.update(epcList=units, action="OBSERVE", bizStep=step)
        if disposition is not None:
            out["disposition"] = disposition
        if e.dev is not None:
            out["readPoint"] = self._read_point(e.dev, e.at)
        out["bizTransactionList"] = [{"bizTransaction": self.shipment_uri}]
        source, destination = e.custody
        if source is not None:
            out["sourceList"] = [{"type": "possessing_party", "source": _org_uri(source)}]
        if destination is not None:
            out["destinationList"] = [{"type": "possessing_party",
                                       "destination": _org_uri(destination)}]
        out.update({"tf:entry": e.idx, "tf:entryHash": e.hash, "tf:contract": e.contract,
                    "tf:contractVersion": e.version, "tf:event": e.event})
        if e.state is not None:
            out["tf:state"] = e.state
        out["tf:causeEntries"] = list(e.cause)
        return out


def _contract_step(e: _Event) -> tuple[str, str | None]:
    """CBV bizStep and disposition of a contract event (docs/epcis.md, "bizStep and
    disposition")."""
    if e.state == "out_of_compliance" or e.event in ALARM_EVENTS:
        return "inspecting", "non_conformant"
    if e.state == "delivered":
        return "receiving", None
    if e.state == "cancelled":
        return "void_shipping", None
    if e.event == "custody_transfer":
        return "receiving", None
    if e.event == UNIT_LOADED:
        return "loading", "in_transit"
    if e.event == UNIT_UNLOADED:
        return "unloading", None
    if e.state == "in_transit":
        return "departing", "in_transit"
    return "inspecting", None


def _sensor_reports(r: _Reading, *, alarm: bool) -> list[dict[str, Any]]:
    d = r.d
    if r.kind == "temp":
        report = _measure("Temperature", d.get("c"), "CEL", alarm)
        probe = d.get("probe")
        if isinstance(probe, str) and _TOKEN_RE.fullmatch(probe):
            report["deviceID"] = f"{_device_uri(r.dev)}/probe/{probe}"
        return [report]
    if r.kind in ("hum", "humidity"):
        return [_measure("RelativeHumidity", d.get("rh"), "P1", alarm)]
    if r.kind == "shock":
        peak = _finite(d.get("peak_g"))
        if peak is None:
            return [{"type": "Acceleration", "exception": "ERROR_CONDITION"}]
        out: list[dict[str, Any]] = [{"type": "Acceleration", "maxValue": peak, "uom": "K40"}]
        if alarm:
            out[0]["exception"] = "ALARM_CONDITION"
        for axis in ("x", "y", "z"):
            value = _finite(d.get(axis))
            if value is not None:
                out.append({"type": "Acceleration", "component": axis, "value": value,
                            "uom": "K40"})
        return out
    is_open = d.get("open")  # door
    if not isinstance(is_open, bool):
        return [{"type": "tf:DoorOpen", "exception": "ERROR_CONDITION"}]
    door: dict[str, Any] = {"type": "tf:DoorOpen", "booleanValue": is_open}
    if alarm:
        door["exception"] = "ALARM_CONDITION"
    return [door]


def _measure(kind: str, raw: object, uom: str, alarm: bool) -> dict[str, Any]:
    value = _finite(raw)
    if value is None:
        return {"type": kind, "exception": "ERROR_CONDITION"}
    out: dict[str, Any] = {"type": kind, "value": value, "uom": uom}
    if alarm:
        out["exception"] = "ALARM_CONDITION"
    return out


def _fixes(readings: list[_Reading]) -> dict[str, tuple[list[int], list[str]]]:
    """Per device: the device times of its usable GPS fixes, ascending, and their geo: URIs."""
    found: list[tuple[str, int, int, str]] = []
    for r in readings:
        if r.kind == "gps" and r.t is not None and (geo := _geo(r.d)) is not None:
            found.append((r.dev, r.t, r.idx, geo))
    found.sort()
    out: dict[str, tuple[list[int], list[str]]] = {}
    for dev, t, _, geo in found:
        times, geos = out.setdefault(dev, ([], []))
        times.append(t)
        geos.append(geo)
    return out


def _geo(d: Mapping[str, Any]) -> str | None:
    """RFC 5870 geo: URI of a GPS fix (WGS 84), or None if it is no usable fix."""
    if "fix" in d and not d["fix"]:
        return None
    lat, lon = _finite(d.get("lat")), _finite(d.get("lon"))
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return f"geo:{_coord(lat)},{_coord(lon)}"


def _coord(x: float) -> str:
    text = f"{x:.7f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _finite(x: object) -> int | float | None:
    """`x` if it is a number JSON carries exactly everywhere (finite; an int within 2**53)."""
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return x if -(2**53) <= x <= 2**53 else None
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return None


def _org_uri(org: str) -> str:
    return f"{TF_NS}org/{org}"  # organisation ids are [A-Za-z0-9._-] too


def _device_uri(dev: str) -> str:
    return f"{TF_NS}device/{dev}"  # device ids are [A-Za-z0-9._-]: nothing to escape


@functools.lru_cache(maxsize=1024)
def _iso_cached(ms: int) -> str:
    """_iso for ledger times: one per block, so many entries share each."""
    return _iso(ms)


def _iso(ms: int) -> str:
    """RFC 3339 UTC with milliseconds; requires 0 <= ms < MAX_TIME_MS."""
    t = _EPOCH + timedelta(milliseconds=ms)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


# -- input checks --------------------------------------------------------------------------


def _shipment(shipment: object) -> tuple[str, str, tuple[str, ...]]:
    if not isinstance(shipment, Mapping):
        raise EpcisExportError("shipment must be a mapping")
    ship_id = shipment.get("id")
    if not isinstance(ship_id, str) or not 1 <= len(ship_id) <= 128 or not ship_id.isprintable():
        raise EpcisExportError("shipment id must be 1-128 printable characters")
    state = shipment.get("state")
    if not isinstance(state, str) or not _TOKEN_RE.fullmatch(state):
        raise EpcisExportError("shipment state must be a name like in_transit")
    units = shipment.get("units", [])
    if isinstance(units, str | bytes) or not isinstance(units, Sequence):
        raise EpcisExportError("shipment units must be a list of EPC URIs")
    if len(units) > MAX_UNITS:
        raise EpcisExportError(f"a shipment has at most {MAX_UNITS} units")
    for unit in units:
        if not isinstance(unit, str) or not _EPC_RE.fullmatch(unit):
            raise EpcisExportError(f"shipment unit {_show(unit)} is not an EPC pure-identity URI")
    if len(set(units)) != len(units):
        raise EpcisExportError("shipment units repeat an EPC")
    return ship_id, state, tuple(units)


def _reading(raw: object) -> _Reading:
    if not isinstance(raw, Mapping):
        raise EpcisExportError("a reading must be a mapping")
    idx = _index(raw.get("idx"))
    kind = raw.get("k")
    if not isinstance(kind, str) or not _TOKEN_RE.fullmatch(kind):
        raise EpcisExportError(f"kind {_show(kind)} is not a name", idx)
    t = raw.get("t")
    d = raw.get("d")
    ts = raw.get("ts")
    return _Reading(
        idx=idx, dev=_name(raw.get("dev"), "device id", idx), kind=kind,
        t=t if isinstance(t, int) and not isinstance(t, bool) and 0 <= t < MAX_TIME_MS else None,
        ledger_time=_ledger_time(raw.get("ledger_time"), "ledger_time", idx),
        hash=_hash(raw.get("hash"), idx), d=d if isinstance(d, Mapping) else {},
        ts=ts if isinstance(ts, str) and ts in TIME_SOURCES else None)


def _event(raw: object, ship_id: str) -> _Event:
    if not isinstance(raw, Mapping):
        raise EpcisExportError("a contract event must be a mapping")
    idx = _index(raw.get("idx"))
    if raw.get("shipment") not in (None, ship_id):
        raise EpcisExportError("contract event of another shipment", idx)
    name, contract, state = raw.get("event"), raw.get("contract"), raw.get("state")
    for what, value in (("event", name), ("contract", contract)):
        if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
            raise EpcisExportError(f"{what} {_show(value)} is not a name", idx)
    if state is not None and (not isinstance(state, str) or not _TOKEN_RE.fullmatch(state)):
        raise EpcisExportError(f"state {_show(state)} is not a name", idx)
    version = raw.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version < 2**31:
        raise EpcisExportError(f"contract version {_show(version)} is not a number", idx)
    cause = raw.get("cause", [])
    if isinstance(cause, str | bytes) or not isinstance(cause, Sequence) or len(cause) > 100_000:
        raise EpcisExportError("cause must be a list of entry indexes", idx)
    at = raw.get("at")  # the device time of the reading that fired it, or a block time
    if not isinstance(at, int) or isinstance(at, bool):
        raise EpcisExportError(f"at {_show(at)} is not ms since the epoch", idx)
    ledger_time = raw.get("ledger_time")
    dev = raw.get("dev")
    assert isinstance(name, str) and isinstance(contract, str)
    return _Event(idx=idx, event=name, contract=contract, version=version,
                  dev=None if dev is None else _name(dev, "device id", idx),
                  at=at if 0 <= at < MAX_TIME_MS else None,
                  ledger_time=None if ledger_time is None else _ledger_time(
                      ledger_time, "ledger_time", idx),
                  cause=tuple(sorted({_index(c, idx) for c in cause})), state=state,
                  hash=_hash(raw.get("hash"), idx), custody=_custody(name, raw.get("data")),
                  unit=_unit(name, raw.get("data")))


def _unit(name: str, data: object) -> str | None:
    """The SSCC of a unit_loaded / unit_unloaded event's data, if it is an EPC URI."""
    if name not in UNIT_EVENTS or not isinstance(data, Mapping):
        return None
    epc = data.get("epc")
    return epc if isinstance(epc, str) and _EPC_RE.fullmatch(epc) else None


def _custody(name: str, data: object) -> tuple[str | None, str | None]:
    """(from, to) of a custody_transfer's data; an id that is not a plain name is left out."""
    if name != "custody_transfer" or not isinstance(data, Mapping):
        return None, None
    ends = [data.get(key) for key in ("from", "to")]
    source, destination = (e if isinstance(e, str) and _TOKEN_RE.fullmatch(e) else None
                           for e in ends)
    return source, destination


def _unique(readings: list[_Reading], events: list[_Event]) -> None:
    idxs: set[int] = set()
    hashes: set[str] = set()
    items: list[_Reading | _Event] = [*readings, *events]
    for item in items:
        if item.idx in idxs:
            raise EpcisExportError("two entries with the same index", item.idx)
        if item.hash in hashes:
            raise EpcisExportError("two entries with the same hash", item.idx)
        idxs.add(item.idx)
        hashes.add(item.hash)


def _index(value: object, entry: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise EpcisExportError(f"entry index {_show(value)} is not a number >= 0", entry)
    return value


def _ledger_time(value: object, what: str, entry: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_TIME_MS:
        raise EpcisExportError(f"{what} {_show(value)} is not ms since the epoch", entry)
    return value


def _hash(value: object, entry: int) -> str:
    if not isinstance(value, str) or not _HASH_RE.fullmatch(value):
        raise EpcisExportError("hash must be 64 hex digits (SHA-256)", entry)
    return value.lower()


def _name(value: object, what: str, entry: int | None = None) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise EpcisExportError(f"{what} {_show(value)} must be 1-64 characters of [A-Za-z0-9._-]",
                               entry)
    return value


def _show(value: object) -> str:
    """A short, printable rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
