"""EPCIS 2.0 export of a shipment (ledger_node.epcis), checked against GS1's own schema.

tests/data/epcis/ (GS1 licence: LICENSE there; README.md says where each file comes from):
- JSON-Schema/: GS1's EPCIS 2.0 JSON schema in parts; the parts `$ref` each other by their
  `$id`, so they are loaded from disk into a `referencing` Registry: nothing is fetched.
- EPCIS-JSON-Schema.json: GS1's bundled (single-file) schema; every document here is checked
  against both.
- examples-sensor/: GS1's sensor-data example documents.

The schema's two formats are checked strictly, `uri` by RFC 3986 and `date-time` by RFC 3339:
jsonschema checks neither unless optional packages are installed, and without them any string
would pass as an extension field name or an eventTime. Checked that way, 3 of GS1's 18 sensor
examples are valid as published; the others differ from the schema in the ways listed in
GS1_EXAMPLE_ERRORS, and are valid once those are repaired.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator, FormatChecker
from referencing import Registry, Resource

import ledger_node.epcis as epcis_module
from ledger_node.epcis import (
    BAD_DEVICE_TIME,
    NOT_A_UNIT,
    NOT_AN_EPC,
    EpcisExportError,
    event_id,
    shipment_epcis,
)

DATA = Path(__file__).parent / "data" / "epcis"
EXAMPLES = sorted((DATA / "examples-sensor").glob("*.jsonld"))

# -- strict formats --------------------------------------------------------------------------

_UNRESERVED = r"[A-Za-z0-9\-._~]"
_PCT = r"%[0-9A-Fa-f]{2}"
_SUB = r"[!$&'()*+,;=]"
_PCHAR = f"(?:{_UNRESERVED}|{_PCT}|{_SUB}|[:@])"
_AUTHORITY = (f"(?:(?:{_UNRESERVED}|{_PCT}|{_SUB}|:)*@)?"
              f"(?:\\[[0-9A-Fa-f:.]+\\]|\\[v[0-9A-Fa-f]+\\.(?:{_UNRESERVED}|{_SUB}|:)+\\]"
              f"|(?:{_UNRESERVED}|{_PCT}|{_SUB})*)(?::[0-9]*)?")
_HIER = (f"(?://{_AUTHORITY}(?:/{_PCHAR}*)*"
         f"|/(?:{_PCHAR}+(?:/{_PCHAR}*)*)?"
         f"|{_PCHAR}+(?:/{_PCHAR}*)*"
         f"|)")
URI_RE = re.compile(f"[A-Za-z][A-Za-z0-9+\\-.]*:{_HIER}(?:\\?(?:{_PCHAR}|[/?])*)?"
                    f"(?:#(?:{_PCHAR}|[/?])*)?")
"""RFC 3986 `URI` (absolute, fragment allowed), from its ABNF (appendix A)."""
DATE_TIME_RE = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(\.\d+)?"
                          r"([Zz]|[+-](\d\d):(\d\d))")
"""RFC 3339 `date-time` (section 5.6); the values are range-checked in is_date_time."""


def is_uri(value: object) -> bool:
    return not isinstance(value, str) or URI_RE.fullmatch(value) is not None


def is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    m = DATE_TIME_RE.fullmatch(value)
    if m is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if m.group(9) is not None and (int(m.group(9)) > 23 or int(m.group(10)) > 59):
        return False
    try:  # a leap second (:60) is valid in RFC 3339; datetime cannot hold it
        datetime(year, month, day, hour, minute, min(second, 59), tzinfo=UTC)
    except ValueError:
        return False
    return second <= 59 or (second == 60 and minute == 59)


STRICT_FORMATS = FormatChecker(formats=())
STRICT_FORMATS.checks("uri")(is_uri)
STRICT_FORMATS.checks("date-time")(is_date_time)


@cache
def validators() -> tuple[Draft7Validator, Draft7Validator]:
    """(the schema in parts, resolved through a Registry; the bundled schema)."""
    resources = []
    for path in sorted((DATA / "JSON-Schema").rglob("*.json")):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    registry: Registry[Any] = Registry().with_resources(resources)
    root = json.loads((DATA / "JSON-Schema" / "EPCIS-JSON-Schema-root.json").read_text())
    bundled = json.loads((DATA / "EPCIS-JSON-Schema.json").read_text())
    for schema in (root, bundled):
        Draft7Validator.check_schema(schema)
    return (Draft7Validator(root, registry=registry, format_checker=STRICT_FORMATS),
            Draft7Validator(bundled, format_checker=STRICT_FORMATS))


def errors_of(doc: Any) -> list[tuple[str, str]]:
    """(instance path, failing keyword) of each schema error, the same from both schemas."""
    parts, bundled = validators()
    found = sorted((e.json_path, str(e.validator)) for e in parts.iter_errors(doc))
    assert found == sorted((e.json_path, str(e.validator)) for e in bundled.iter_errors(doc))
    return found


def assert_valid(doc: dict[str, Any]) -> None:
    text = json.dumps(doc, allow_nan=False)  # no NaN or Infinity: they are not JSON
    assert json.loads(text) == doc
    parts, _ = validators()
    problems = [f"{e.json_path}: {e.message[:300]}" for e in parts.iter_errors(doc)]
    assert not problems, "\n".join(problems[:10])
    assert errors_of(doc) == []


def test_strict_formats_accept_and_reject_what_the_rfcs_say() -> None:
    for good in ("urn:epc:id:sscc:0614141.1234567890", "geo:51.9,4.4", "tf:entry",
                 "https://trustfleet.example/epcis/device/truck-1", "ni:///sha-256;ab?ver=CBV2.0",
                 "urn:uuid:3e1bf84a-f5cc-534c-8b77-4dbde684285f", "http://[::1]:80/a%20b"):
        assert is_uri(good), good
    for bad in ("_:document1", "entry", "tf entry", "urn:epc:id:sscc:1\n", "a:b%zz", "1a:b",
                "https://exa mple.org/", "tf:\x00", ""):
        assert not is_uri(bad), bad
    for good in ("2025-11-21T04:40:00.000Z", "2019-04-02T15:00:00+01:00", "2016-12-31T23:59:60Z"):
        assert is_date_time(good), good
    for bad in ("2025-11-21T04:40:00", "2025-11-21 04:40:00Z", "2025-02-30T00:00:00Z",
                "2025-11-21T24:00:00Z", "2025-11-21T04:40:00+0100", "2025-11-21T04:40:00Z\n"):
        assert not is_date_time(bad), bad


# -- GS1's own examples ------------------------------------------------------------------------

BLANK_ID = [("$.id", "format")]  # "id": "_:document1", a JSON-LD blank node: not an RFC 3986 URI
SENSOR_ELEMENT_TYPE = [("$.epcisBody.eventList[0].sensorElementList[0]", "anyOf")]
# ^ a sensorElement with "type": "epcis:SensorElement": the schema allows no "type" key there
GS1_EXAMPLE_ERRORS: dict[str, list[tuple[str, str]]] = {
    **{f"SensorDataExample{n}.jsonld": [] for n in ("9", "11", "16")},
    **{f"SensorDataExample{n}.jsonld": BLANK_ID
       for n in ("1", "1b", "2", "3", "4", "5", "6", "7", "8", "10", "13")},
    "SensorDataExample12.jsonld": [("$", "required"), ("$", "required"), *SENSOR_ELEMENT_TYPE],
    # ^ no schemaVersion, no creationDate
    "SensorDataExample14.jsonld": SENSOR_ELEMENT_TYPE,
    "SensorDataExample15.jsonld": SENSOR_ELEMENT_TYPE,
    "SensorDataExample17.jsonld": [*BLANK_ID, ("$.schemaVersion", "type")],  # 2.0, a number
}


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def repaired(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` with the differences listed in GS1_EXAMPLE_ERRORS put right."""
    doc = copy.deepcopy(doc)
    if str(doc.get("id", "")).startswith("_:"):
        del doc["id"]
    if not isinstance(doc.get("schemaVersion"), str):
        doc["schemaVersion"] = "2.0"
    doc.setdefault("creationDate", "2019-10-07T15:00:00.000+01:00")
    for event in doc["epcisBody"]["eventList"]:
        for element in event.get("sensorElementList", []):
            element.pop("type", None)
    return doc


def test_all_gs1_sensor_examples_are_listed() -> None:
    assert sorted(p.name for p in EXAMPLES) == sorted(GS1_EXAMPLE_ERRORS)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_gs1_sensor_example_has_exactly_the_known_schema_differences(path: Path) -> None:
    assert errors_of(load(path)) == sorted(GS1_EXAMPLE_ERRORS[path.name])


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_gs1_sensor_example_is_valid_once_repaired(path: Path) -> None:
    assert_valid(repaired(load(path)))


def _event0(doc: dict[str, Any]) -> dict[str, Any]:
    event: dict[str, Any] = doc["epcisBody"]["eventList"][0]
    return event


def _report0(doc: dict[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = _event0(doc)["sensorElementList"][0]["sensorReport"][0]
    return report


BREAKAGES: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "no_time_zone_offset": (lambda d: _event0(d).pop("eventTimeZoneOffset"),
                            "$.epcisBody.eventList[0]"),
    "event_time_without_zone": (lambda d: _event0(d).update(eventTime="2019-04-02T15:00:00"),
                                "$.epcisBody.eventList[0].eventTime"),
    "bizstep_not_in_cbv": (lambda d: _event0(d).update(bizStep="shipped"),
                           "$.epcisBody.eventList[0].bizStep"),
    "action_not_an_action": (lambda d: _event0(d).update(action="OBSERVED"),
                             "$.epcisBody.eventList[0].action"),
    "extension_name_not_a_uri": (lambda d: _event0(d).update({"my field": 1}),
                                 "$.epcisBody.eventList[0]"),
    "gs1_web_vocabulary_type": (lambda d: _report0(d).update(type="https://gs1.org/voc/Temp"),
                                "$.epcisBody.eventList[0].sensorElementList[0].sensorReport[0]"
                                ".type"),
    "value_as_text": (lambda d: _report0(d).update(value="26.0"),
                      "$.epcisBody.eventList[0].sensorElementList[0].sensorReport[0].value"),
    "repeated_epc": (lambda d: _event0(d).update(epcList=["urn:epc:id:sscc:0614141.1"] * 2),
                     "$.epcisBody.eventList[0].epcList"),
    "no_creation_date": (lambda d: d.pop("creationDate"), "$"),
}


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_broken_copy_of_a_gs1_example_is_rejected(name: str) -> None:
    doc = repaired(load(DATA / "examples-sensor" / "SensorDataExample1.jsonld"))
    assert errors_of(doc) == []
    breakage, where = BREAKAGES[name]
    breakage(doc)
    assert where in {path for path, _ in errors_of(doc)}


# -- a trip ------------------------------------------------------------------------------------

T0 = 1763700000000  # 2025-11-21T04:40:00.000Z
MIN = 60_000
PALLET_A = "urn:epc:id:sscc:0614141.1234567890"
PALLET_B = "urn:epc:id:sscc:0614141.1234567891"
FOREIGN = "urn:epc:id:sscc:0614141.9999999999"
EVENT_NS = uuid.uuid5(uuid.NAMESPACE_URL, "https://trustfleet.example/epcis/event")


def entry_hash(idx: int) -> str:
    return hashlib.sha256(f"entry {idx}".encode()).hexdigest()


def reading(idx: int, k: str, d: Any, t: Any, dev: str = "truck-1") -> dict[str, Any]:
    return {"idx": idx, "dev": dev, "seq": idx, "t": t, "ts": "gps", "k": k, "d": d,
            "ledger_time": T0 + 100 * MIN, "height": 3, "hash": entry_hash(idx)}


def contract_event(idx: int, event: str, at: Any, cause: list[int], state: str | None = None,
                   data: Any = None) -> dict[str, Any]:
    """ContractEvent.to_map() (ledger_node.contracts.engine) plus its entry's idx, hash and
    ledger time."""
    return {"type": "contract_event", "v": 1, "contract": "cold-chain-2-8", "version": 1,
            "event": event, "shipment": "SHP-1", "dev": "truck-1", "at": at, "cause": cause,
            "state": state, "data": {"rule": "excursion"} if data is None else data,
            "notify": ["mqtt"], "idx": idx, "hash": entry_hash(idx), "ledger_time": T0 + 99 * MIN}


def shipment(units: list[str] | None = None, state: str = "delivered") -> dict[str, Any]:
    return {"id": "SHP-1", "state": state,
            "parties": [{"org": "acme-pharma", "role": "shipper"},
                        {"org": "fastfreight", "role": "carrier"}],
            "units": [PALLET_A, PALLET_B] if units is None else units,
            "assignments": [{"dev": "truck-1", "start": T0 - MIN, "end": None}],
            "deadline": T0 + 24 * 60 * MIN, "created": T0 - 2 * MIN}


def trip() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    readings = [
        reading(1, "gps", {"lat": 51.9, "lon": 4.4, "speed": 0.0, "course": 0.0, "fix": 1}, T0),
        reading(2, "rfid", {"epc": PALLET_A, "hex": "31", "antenna": 1, "rssi": -50}, T0 + 1000),
        reading(3, "rfid", {"epc": PALLET_B, "hex": "32", "antenna": 1, "rssi": -52}, T0 + 1200),
        reading(4, "temp", {"c": 4.5, "probe": "28-0000"}, T0 + MIN),
        reading(5, "hum", {"rh": 55.2}, T0 + MIN),
        reading(6, "temp", {"c": 9.1, "probe": "28-0000"}, T0 + 2 * MIN),
        reading(7, "temp", {"c": 9.4, "probe": "28-0000"}, T0 + 3 * MIN),
        reading(8, "shock", {"peak_g": 3.5, "x": 3.4, "y": 0.1, "z": 1.0}, T0 + 4 * MIN),
        reading(9, "door", {"open": True, "line": 17}, T0 + 5 * MIN),
        reading(10, "rfid", {"epc": PALLET_A, "hex": "31"}, T0 + 6 * MIN),
        reading(11, "gps", {"lat": -33.8688197, "lon": 151.2092955, "fix": 2}, T0 + 20 * MIN),
        reading(12, "rfid", {"epc": PALLET_A, "hex": "31"}, T0 + 21 * MIN),
        reading(13, "rfid", {"epc": FOREIGN, "hex": "33"}, T0 + 21 * MIN),
        reading(14, "status", {"backlog": 0}, T0 + 22 * MIN),
        reading(15, "temp", {"c": 5.0, "probe": "28-0000"}, T0 + 40 * MIN),
    ]
    events = [
        contract_event(20, "excursion", T0 + 3 * MIN + 500, [6, 7], "out_of_compliance"),
        contract_event(21, "shock", T0 + 4 * MIN + 500, [8]),
        contract_event(22, "custody_transfer", T0 + 21 * MIN + 500, [12]),
        contract_event(23, "delivered", T0 + 50 * MIN, [], "delivered"),
    ]
    return readings, events


def export(readings: list[dict[str, Any]], events: list[dict[str, Any]],
           ship: dict[str, Any] | None = None) -> dict[str, Any]:
    return shipment_epcis(shipment() if ship is None else ship, readings, events,
                          node_id="node-1", created_ms=T0 + 60 * MIN)


def by_entry(doc: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {e["tf:entry"]: e for e in doc["epcisBody"]["eventList"]}


def test_trip_exports_a_document_valid_under_gs1_schema() -> None:
    doc = export(*trip())
    assert_valid(doc)
    assert doc["@context"] == ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld",
                               {"tf": "https://trustfleet.example/epcis/"}]
    assert (doc["type"], doc["schemaVersion"]) == ("EPCISDocument", "2.0")
    assert doc["creationDate"] == "2025-11-21T05:40:00.000Z"
    assert (doc["tf:shipment"], doc["tf:shipmentState"], doc["tf:node"]) == \
        ("SHP-1", "delivered", "node-1")


def test_every_reading_but_gps_status_and_foreign_scans_becomes_one_event_in_time_order() -> None:
    doc = export(*trip())
    events = doc["epcisBody"]["eventList"]
    assert [e["tf:entry"] for e in events] == \
        [2, 3, 4, 5, 6, 7, 20, 8, 21, 9, 10, 12, 22, 15, 23]
    assert doc["tf:notExported"] == [{"tf:entry": 13, "tf:reason": NOT_A_UNIT}]
    assert {e["type"] for e in events} == {"ObjectEvent"}
    assert {e["action"] for e in events} == {"OBSERVE"}
    assert {e["eventTimeZoneOffset"] for e in events} == {"+00:00"}
    assert events[0]["eventTime"] == "2025-11-21T04:40:01.000Z"
    assert by_entry(doc)[23]["eventTime"] == "2025-11-21T05:30:00.000Z"
    assert by_entry(doc)[4]["recordTime"] == "2025-11-21T06:20:00.000Z"  # the ledger time
    for e in events:
        assert e["bizTransactionList"] == [
            {"bizTransaction": "https://trustfleet.example/epcis/shipment/SHP-1"}]


def test_event_ids_are_uuid5_of_the_entry_hash_and_point_back_to_the_entry() -> None:
    events = export(*trip())["epcisBody"]["eventList"]
    for e in events:
        idx = e["tf:entry"]
        assert e["tf:entryHash"] == entry_hash(idx)
        assert e["eventID"] == f"urn:uuid:{uuid.uuid5(EVENT_NS, entry_hash(idx))}"
        assert uuid.UUID(e["eventID"][9:]).version == 5
    assert len({e["eventID"] for e in events}) == len(events)


def test_event_id_of_a_known_hash_never_changes() -> None:
    assert event_id("00" * 32) == "urn:uuid:61a1a0a2-f7a2-55c0-8445-208b59c8db0b"
    assert event_id("ab" * 32) == event_id("AB" * 32)


def test_event_id_does_not_depend_on_hash_case_node_or_creation_time() -> None:
    readings, events = trip()
    upper = copy.deepcopy(readings)
    for r in upper:
        r["hash"] = r["hash"].upper()
    a = shipment_epcis(shipment(), readings, events, node_id="node-1", created_ms=T0)
    b = shipment_epcis(shipment(), upper, events, node_id="node-2", created_ms=T0 + 1)
    assert [e["eventID"] for e in a["epcisBody"]["eventList"]] == \
        [e["eventID"] for e in b["epcisBody"]["eventList"]]


def test_scans_are_loading_then_transporting_then_receiving_at_a_custody_transfer() -> None:
    ev = by_entry(export(*trip()))
    assert (ev[2]["epcList"], ev[2]["bizStep"], ev[2]["disposition"]) == \
        ([PALLET_A], "loading", "in_transit")
    assert (ev[3]["epcList"], ev[3]["bizStep"]) == ([PALLET_B], "loading")
    assert (ev[10]["bizStep"], ev[10]["disposition"]) == ("transporting", "in_transit")
    assert ev[12]["bizStep"] == "receiving"
    assert "disposition" not in ev[12]
    assert (ev[12]["tf:device"], ev[12]["tf:timeSource"]) == ("truck-1", "gps")


def test_read_point_is_the_last_gps_fix_within_ten_minutes_else_the_device() -> None:
    ev = by_entry(export(*trip()))
    assert ev[2]["readPoint"] == {"id": "geo:51.9,4.4"}
    assert ev[10]["readPoint"] == {"id": "geo:51.9,4.4"}  # 6 minutes after
    assert ev[12]["readPoint"] == {"id": "geo:-33.8688197,151.2092955"}
    assert ev[15]["readPoint"] == {"id": "https://trustfleet.example/epcis/device/truck-1"}


def test_sensor_readings_become_sensor_reports_with_un_ece_units() -> None:
    ev = by_entry(export(*trip()))
    temp = ev[4]
    assert (temp["epcList"], temp["bizStep"]) == ([PALLET_A, PALLET_B], "sensor_reporting")
    assert "disposition" not in temp
    assert temp["sensorElementList"] == [{
        "sensorMetadata": {"time": "2025-11-21T04:41:00.000Z",
                           "deviceID": "https://trustfleet.example/epcis/device/truck-1"},
        "sensorReport": [{"type": "Temperature", "value": 4.5, "uom": "CEL",
                          "deviceID": "https://trustfleet.example/epcis/device/truck-1/probe/"
                                      "28-0000"}]}]
    assert ev[5]["sensorElementList"][0]["sensorReport"] == [
        {"type": "RelativeHumidity", "value": 55.2, "uom": "P1"}]
    assert ev[8]["sensorElementList"][0]["sensorReport"] == [
        {"type": "Acceleration", "maxValue": 3.5, "uom": "K40", "exception": "ALARM_CONDITION"},
        {"type": "Acceleration", "component": "x", "value": 3.4, "uom": "K40"},
        {"type": "Acceleration", "component": "y", "value": 0.1, "uom": "K40"},
        {"type": "Acceleration", "component": "z", "value": 1.0, "uom": "K40"}]
    assert ev[9]["sensorElementList"][0]["sensorReport"] == [
        {"type": "tf:DoorOpen", "booleanValue": True}]


def test_readings_cited_by_an_excursion_carry_an_alarm_and_the_event_is_non_conformant() -> None:
    ev = by_entry(export(*trip()))
    for idx in (6, 7):
        assert ev[idx]["sensorElementList"][0]["sensorReport"][0]["exception"] == \
            "ALARM_CONDITION"
    assert "exception" not in ev[4]["sensorElementList"][0]["sensorReport"][0]
    excursion = ev[20]
    assert (excursion["bizStep"], excursion["disposition"]) == ("inspecting", "non_conformant")
    assert excursion["epcList"] == [PALLET_A, PALLET_B]
    assert (excursion["tf:contract"], excursion["tf:contractVersion"], excursion["tf:event"],
            excursion["tf:state"], excursion["tf:causeEntries"]) == \
        ("cold-chain-2-8", 1, "excursion", "out_of_compliance", [6, 7])
    assert excursion["eventTime"] == "2025-11-21T04:43:00.500Z"  # `at`
    assert excursion["recordTime"] == "2025-11-21T06:19:00.000Z"  # its block's ledger time
    assert (ev[21]["bizStep"], ev[21]["disposition"]) == ("inspecting", "non_conformant")
    assert "tf:state" not in ev[21]


@pytest.mark.parametrize(("event", "state", "step", "disposition"), [
    ("custody_transfer", None, "receiving", None),
    ("delivered", "delivered", "receiving", None),
    ("cancelled", "cancelled", "void_shipping", None),
    ("departed", "in_transit", "departing", "in_transit"),
    ("geofence_exit", None, "inspecting", None),
    ("late_delivery", "out_of_compliance", "inspecting", "non_conformant"),
    ("custody_transfer", "out_of_compliance", "inspecting", "non_conformant"),
])
def test_contract_event_bizstep_and_disposition(event: str, state: str | None, step: str,
                                                disposition: str | None) -> None:
    doc = export([], [contract_event(30, event, T0, [], state)])
    assert_valid(doc)
    (out,) = doc["epcisBody"]["eventList"]
    assert out["bizStep"] == step
    assert out.get("disposition") == disposition


def test_custody_transfer_names_the_parties_it_moves_between() -> None:
    doc = export([], [contract_event(30, "custody_transfer", T0, [], data={
        "rule": "custody", "epc": PALLET_A, "from": "fastfreight", "to": "consignee-b",
        "reader": "depot-reader-2"})])
    assert_valid(doc)
    out = _event0(doc)
    assert out["sourceList"] == [
        {"type": "possessing_party", "source": "https://trustfleet.example/epcis/org/fastfreight"}]
    assert out["destinationList"] == [
        {"type": "possessing_party",
         "destination": "https://trustfleet.example/epcis/org/consignee-b"}]



@pytest.mark.parametrize(("event", "step", "disposition"), [
    ("unit_loaded", "loading", "in_transit"), ("unit_unloaded", "unloading", None)])
def test_a_unit_move_is_an_event_about_that_unit_only(event: str, step: str,
                                                      disposition: str | None) -> None:
    doc = export([], [contract_event(30, event, T0, [12], data={
        "rule": "pallets", "epc": PALLET_A, "reader": "truck-7"})])
    assert_valid(doc)
    out = _event0(doc)
    assert (out["epcList"], out["bizStep"], out.get("disposition")) == (
        [PALLET_A], step, disposition)
    assert (out["tf:event"], out["tf:causeEntries"]) == (event, [12])


@pytest.mark.parametrize("data", [{"epc": "not an epc"}, {"epc": 7}, "epc", None])
def test_a_unit_move_without_a_usable_epc_names_all_units(data: Any) -> None:
    event = contract_event(30, "unit_loaded", T0, [])
    event["data"] = data
    doc = export([], [event])
    assert_valid(doc)
    assert _event0(doc)["epcList"] == [PALLET_A, PALLET_B]

@pytest.mark.parametrize("data", [{"from": None, "to": "b\n"}, {"to": "x" * 1000}, "to=b", None])
def test_custody_transfer_with_unusable_parties_names_none(data: Any) -> None:
    event = contract_event(30, "custody_transfer", T0, [])
    event["data"] = data
    doc = export([], [event])
    assert_valid(doc)
    assert "sourceList" not in _event0(doc)
    assert "destinationList" not in _event0(doc)


def test_contract_event_without_a_ledger_time_has_no_record_time() -> None:
    doc = export([], [_with(contract_event(30, "shock", T0, []), ledger_time=_DROP)])
    assert_valid(doc)
    assert "recordTime" not in _event0(doc)


def test_contract_event_not_tied_to_a_shipment_is_accepted() -> None:
    doc = export([], [contract_event(30, "device_silent", T0, []) | {"shipment": None}])
    assert [e["tf:event"] for e in doc["epcisBody"]["eventList"]] == ["device_silent"]


def test_contract_faults_are_not_exported() -> None:
    doc = export([], [contract_event(30, "contract_fault", T0, [1], data={
        "rule": "custody", "kind": "missing_field", "message": "the rfid reading has no epc"})])
    assert doc["epcisBody"]["eventList"] == []
    assert doc["tf:notExported"] == []


@pytest.mark.parametrize("at", [-1, 253_402_300_800_000, 2**70], ids=repr)
def test_contract_event_fired_at_an_unwritable_device_time_is_withheld(at: int) -> None:
    doc = export([], [contract_event(30, "excursion", at, [])])
    assert_valid(doc)
    assert doc["epcisBody"]["eventList"] == []
    assert doc["tf:notExported"] == [{"tf:entry": 30, "tf:reason": BAD_DEVICE_TIME}]


def test_export_is_the_same_whatever_the_input_order() -> None:
    readings, events = trip()
    first = json.dumps(export(readings, events))
    rng = random.Random(8)
    for _ in range(5):
        rng.shuffle(readings)
        rng.shuffle(events)
        assert json.dumps(export(readings, events)) == first


def test_entries_at_the_same_time_are_ordered_by_entry_index() -> None:
    readings = [reading(i, "temp", {"c": 5.0}, T0) for i in (9, 3, 7)]
    events = [contract_event(5, "geofence_exit", T0, [])]
    doc = export(readings, events)
    assert [e["tf:entry"] for e in doc["epcisBody"]["eventList"]] == [3, 5, 7, 9]


def test_shipment_without_units_still_exports_a_valid_document() -> None:
    doc = export(*trip(), ship=shipment(units=[]))
    assert_valid(doc)
    ev = by_entry(doc)
    assert "epcList" not in ev[4]  # a sensor event about the conveyance: readPoint + sensors
    assert ev[4]["readPoint"]["id"].startswith("geo:")
    assert ev[20]["epcList"] == []
    assert {e["tf:entry"] for e in doc["tf:notExported"]} == {2, 3, 10, 12, 13}
    assert {e["tf:reason"] for e in doc["tf:notExported"]} == {NOT_A_UNIT}


def test_empty_history_is_a_valid_document_with_no_events() -> None:
    doc = export([], [])
    assert_valid(doc)
    assert doc["epcisBody"]["eventList"] == []
    assert doc["tf:notExported"] == []


def test_humidity_kind_spelled_out_is_exported_too() -> None:
    doc = export([reading(1, "humidity", {"rh": 40}, T0)], [])
    assert_valid(doc)
    assert _report0(doc) == {"type": "RelativeHumidity", "value": 40, "uom": "P1"}


# -- hostile device values: exported safely ---------------------------------------------------

BAD_NUMBERS = [float("nan"), float("inf"), float("-inf"), "4.5", None, True, 10**400, [], {},
               "\x00" * 10_000]


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=lambda v: repr(v)[:20])
@pytest.mark.parametrize(("kind", "field", "measure"), [
    ("temp", "c", "Temperature"), ("hum", "rh", "RelativeHumidity"),
    ("shock", "peak_g", "Acceleration")])
def test_sensor_value_that_is_not_a_finite_number_is_an_error_condition(
        value: Any, kind: str, field: str, measure: str) -> None:
    doc = export([reading(1, kind, {field: value, "x": value}, T0)], [])
    assert_valid(doc)
    assert _event0(doc)["sensorElementList"][0]["sensorReport"] == [
        {"type": measure, "exception": "ERROR_CONDITION"}]


@pytest.mark.parametrize("d", [None, "c=4.5", [4.5], {}, {"open": "yes"}, {"open": 1}])
def test_reading_with_missing_or_malformed_values_is_exported_as_an_error_condition(
        d: Any) -> None:
    doc = export([reading(1, "temp", d, T0), reading(2, "door", d, T0)], [])
    assert_valid(doc)
    reports = [e["sensorElementList"][0]["sensorReport"] for e in doc["epcisBody"]["eventList"]]
    assert reports == [[{"type": "Temperature", "exception": "ERROR_CONDITION"}],
                       [{"type": "tf:DoorOpen", "exception": "ERROR_CONDITION"}]]


def test_cited_reading_with_a_bad_value_stays_an_error_not_an_alarm() -> None:
    doc = export([reading(1, "temp", {"c": float("nan")}, T0)],
                 [contract_event(2, "excursion", T0 + 1, [1], "out_of_compliance")])
    assert_valid(doc)
    assert _report0(doc) == {"type": "Temperature", "exception": "ERROR_CONDITION"}


def test_bad_probe_id_is_left_out_of_the_report() -> None:
    doc = export([reading(1, "temp", {"c": 4.0, "probe": "28 0000\n" * 1000}, T0)], [])
    assert_valid(doc)
    assert _report0(doc) == {"type": "Temperature", "value": 4.0, "uom": "CEL"}


@pytest.mark.parametrize("epc", [
    "urn:epc:id:sscc:" + "1" * 10_000,
    PALLET_A + "\x00", PALLET_A + "\n", "\u202e" + PALLET_A, PALLET_A.replace(".", " "),
    "urn:epc:raw:96.x3074257BF7194E4000001A85", "urn:epc:id:sscc:0614141.%zz", "", None, 42,
    ["urn:epc:id:sscc:0614141.1234567890"],
], ids=lambda v: repr(v)[:24])
def test_scan_whose_epc_is_not_an_epc_uri_is_withheld_and_listed(epc: Any) -> None:
    doc = export([reading(1, "rfid", {"epc": epc, "hex": "00"}, T0),
                  reading(2, "temp", {"c": 5.0}, T0)], [])
    assert_valid(doc)
    assert [e["tf:entry"] for e in doc["epcisBody"]["eventList"]] == [2]
    assert doc["tf:notExported"] == [{"tf:entry": 1, "tf:reason": NOT_AN_EPC}]


def test_scan_of_an_undecodable_tag_is_withheld() -> None:  # what edge_agent.rfid_scan sends
    doc = export([reading(1, "rfid", {"epc": None, "hex": "E2801160", "decoded": False}, T0)],
                 [])
    assert doc["tf:notExported"] == [{"tf:entry": 1, "tf:reason": NOT_AN_EPC}]


@pytest.mark.parametrize("t", [-1, 253_402_300_800_000, 2**70, "1763700000000", 1.7637e12,
                               None, True, float("nan")], ids=repr)
def test_reading_whose_device_time_cannot_be_written_is_withheld(t: Any) -> None:
    doc = export([reading(1, "temp", {"c": 5.0}, t), reading(2, "rfid", {"epc": PALLET_A}, t),
                  reading(3, "temp", {"c": 5.0}, T0)], [])
    assert_valid(doc)
    assert [e["tf:entry"] for e in doc["epcisBody"]["eventList"]] == [3]
    assert doc["tf:notExported"] == [{"tf:entry": 1, "tf:reason": BAD_DEVICE_TIME},
                                     {"tf:entry": 2, "tf:reason": BAD_DEVICE_TIME}]


def test_times_at_the_ends_of_the_range_are_written_as_rfc_3339() -> None:
    doc = export([reading(1, "temp", {"c": 5.0}, 0),
                  reading(2, "temp", {"c": 5.0}, 253_402_300_799_999)], [])
    assert_valid(doc)
    assert [e["eventTime"] for e in doc["epcisBody"]["eventList"]] == \
        ["1970-01-01T00:00:00.000Z", "9999-12-31T23:59:59.999Z"]


@pytest.mark.parametrize("fix", [
    {"lat": float("nan"), "lon": 4.4}, {"lat": 91.0, "lon": 4.4}, {"lat": 51.9, "lon": -180.5},
    {"lat": "51.9", "lon": "4.4"}, {"lat": 51.9, "lon": 4.4, "fix": 0}, {"lon": 4.4}, None,
], ids=repr)
def test_unusable_gps_fix_is_not_a_read_point(fix: Any) -> None:
    doc = export([reading(1, "gps", fix, T0), reading(2, "temp", {"c": 5.0}, T0 + 1)], [])
    assert_valid(doc)
    assert _event0(doc)["readPoint"] == {"id": "https://trustfleet.example/epcis/device/truck-1"}


def test_gps_fix_of_another_device_is_not_a_read_point() -> None:
    doc = export([reading(1, "gps", {"lat": 1.0, "lon": 2.0}, T0, dev="truck-2"),
                  reading(2, "temp", {"c": 5.0}, T0 + 1)], [])
    assert _event0(doc)["readPoint"] == {"id": "https://trustfleet.example/epcis/device/truck-1"}


def test_tiny_and_negative_coordinates_are_written_without_exponents() -> None:
    doc = export([reading(1, "gps", {"lat": -1e-9, "lon": 1e-5}, T0),
                  reading(2, "temp", {"c": 5.0}, T0 + 1)], [])
    assert_valid(doc)
    assert _event0(doc)["readPoint"] == {"id": "geo:0,0.00001"}


# -- what is not ledger data: EpcisExportError ------------------------------------------------

GOOD = reading(1, "temp", {"c": 5.0}, T0)
GOOD_EVENT = contract_event(2, "excursion", T0, [1], "out_of_compliance")


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if value is _DROP:
            out.pop(key)
        else:
            out[key] = value
    return out


_DROP = object()

BAD_READINGS: dict[str, tuple[Any, int | None]] = {
    "not_a_mapping": (["idx", 1], None),
    "no_idx": (_with(GOOD, idx=_DROP), None),
    "negative_idx": (_with(GOOD, idx=-1), None),
    "bool_idx": (_with(GOOD, idx=True), None),
    "text_idx": (_with(GOOD, idx="1"), None),
    "huge_idx": (_with(GOOD, idx=2**64), None),
    "no_hash": (_with(GOOD, hash=_DROP), 1),
    "short_hash": (_with(GOOD, hash="ab" * 31), 1),
    "hash_not_hex": (_with(GOOD, hash="zz" * 32), 1),
    "hash_with_newline": (_with(GOOD, hash="ab" * 32 + "\n"), 1),
    "no_device": (_with(GOOD, dev=_DROP), 1),
    "device_10kb": (_with(GOOD, dev="t" * 10_000), 1),
    "device_with_space": (_with(GOOD, dev="truck 1"), 1),
    "device_with_newline": (_with(GOOD, dev="truck-1\n"), 1),
    "device_control_chars": (_with(GOOD, dev="truck\x1b[2J"), 1),
    "no_kind": (_with(GOOD, k=_DROP), 1),
    "kind_10kb": (_with(GOOD, k="k" * 10_000), 1),
    "no_ledger_time": (_with(GOOD, ledger_time=_DROP), 1),
    "ledger_time_float": (_with(GOOD, ledger_time=1.5e12), 1),
    "ledger_time_negative": (_with(GOOD, ledger_time=-1), 1),
}


@pytest.mark.parametrize("name", sorted(BAD_READINGS))
def test_malformed_reading_is_an_export_error(name: str) -> None:
    bad, entry = BAD_READINGS[name]
    with pytest.raises(EpcisExportError) as caught:
        export([GOOD | {"idx": 0, "hash": entry_hash(0)}, bad], [])
    assert caught.value.entry == entry
    assert len(str(caught.value)) < 200  # says what is wrong without echoing 10 kB back


BAD_EVENTS: dict[str, Any] = {
    "not_a_mapping": "excursion",
    "other_shipment": _with(GOOD_EVENT, shipment="SHP-2"),
    "no_event_name": _with(GOOD_EVENT, event=_DROP),
    "event_name_with_newline": _with(GOOD_EVENT, event="excursion\n"),
    "contract_10kb": _with(GOOD_EVENT, contract="c" * 10_000),
    "state_not_a_name": _with(GOOD_EVENT, state="out of compliance"),
    "version_bool": _with(GOOD_EVENT, version=True),
    "version_missing": _with(GOOD_EVENT, version=_DROP),
    "cause_text": _with(GOOD_EVENT, cause="17,18"),
    "cause_with_text": _with(GOOD_EVENT, cause=[1, "2"]),
    "cause_negative": _with(GOOD_EVENT, cause=[-1]),
    "no_at": _with(GOOD_EVENT, at=_DROP),
    "at_text": _with(GOOD_EVENT, at=str(T0)),
    "at_float": _with(GOOD_EVENT, at=float(T0)),
    "ledger_time_negative": _with(GOOD_EVENT, ledger_time=-1),
    "device_not_a_name": _with(GOOD_EVENT, dev="truck/1"),
    "no_hash": _with(GOOD_EVENT, hash=_DROP),
}


@pytest.mark.parametrize("name", sorted(BAD_EVENTS))
def test_malformed_contract_event_is_an_export_error(name: str) -> None:
    with pytest.raises(EpcisExportError, match=r"^(entry 2: )?.{1,160}$"):
        export([GOOD], [BAD_EVENTS[name]])


BAD_SHIPMENTS: dict[str, Any] = {
    "not_a_mapping": ["SHP-1"],
    "no_id": _with(shipment(), id=_DROP),
    "empty_id": _with(shipment(), id=""),
    "id_control_chars": _with(shipment(), id="SHP\x00-1"),
    "id_10kb": _with(shipment(), id="S" * 10_000),
    "no_state": _with(shipment(), state=_DROP),
    "units_text": _with(shipment(), units=PALLET_A),
    "unit_not_an_epc": _with(shipment(), units=["pallet-1"]),
    "unit_10kb": _with(shipment(), units=["urn:epc:id:sscc:" + "1" * 10_000]),
    "unit_repeated": _with(shipment(), units=[PALLET_A, PALLET_A]),
}


@pytest.mark.parametrize("name", sorted(BAD_SHIPMENTS))
def test_malformed_shipment_is_an_export_error(name: str) -> None:
    with pytest.raises(EpcisExportError):
        export([GOOD], [], ship=BAD_SHIPMENTS[name])


@pytest.mark.parametrize(("readings", "events", "node_id", "created_ms"), [
    ("not a list", [], "node-1", T0),
    ([], {"idx": 1}, "node-1", T0),
    ([], [], "node 1", T0),
    ([], [], None, T0),
    ([], [], "node-1", -5),
    ([], [], "node-1", float(T0)),
    ([], [], "node-1", None),
], ids=["readings_text", "events_mapping", "node_space", "node_none", "created_negative",
        "created_float", "created_none"])
def test_malformed_arguments_are_an_export_error(readings: Any, events: Any, node_id: Any,
                                                 created_ms: Any) -> None:
    with pytest.raises(EpcisExportError):
        shipment_epcis(shipment(), readings, events, node_id=node_id, created_ms=created_ms)


def test_two_entries_with_one_index_or_one_hash_are_an_export_error() -> None:
    with pytest.raises(EpcisExportError, match="same index") as caught:
        export([GOOD], [_with(GOOD_EVENT, idx=1)])
    assert caught.value.entry == 1
    with pytest.raises(EpcisExportError, match="same hash"):
        export([GOOD, _with(GOOD, idx=5, hash=GOOD["hash"].upper())], [])


def test_too_many_readings_is_an_export_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(epcis_module, "MAX_READINGS", 3)
    readings = [reading(i, "temp", {"c": 5.0}, T0 + i) for i in range(4)]
    with pytest.raises(EpcisExportError, match="for one document"):
        export(readings, [])
    assert len(export(readings[:3], [])["epcisBody"]["eventList"]) == 3


# -- fuzzing: a device may have signed anything in `d` and `t` --------------------------------

_anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6)
_values = st.dictionaries(
    st.sampled_from(["c", "rh", "peak_g", "x", "y", "z", "open", "epc", "probe", "lat", "lon",
                     "fix"]),
    _anything | st.sampled_from([PALLET_A, PALLET_B, FOREIGN]) | st.floats(-200, 200),
    max_size=6)
_readings = st.lists(st.tuples(
    st.sampled_from(["temp", "hum", "shock", "door", "rfid", "gps", "status", "x.y-z"]),
    _values | _anything,
    st.integers(-1, 2**64) | st.sampled_from([T0, T0 + MIN]) | _anything,
    st.sampled_from(["truck-1", "truck-2"])), max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_readings, st.lists(st.tuples(
    st.sampled_from(["excursion", "shock", "custody_transfer", "contract_fault", "x"]),
    st.integers(-1, 2**64) | st.sampled_from([T0, T0 + MIN]),
    _values | _anything), max_size=3), st.booleans())
def test_any_device_values_give_a_valid_document(rows: list[tuple[str, Any, Any, str]],
                                                 fired: list[tuple[str, int, Any]],
                                                 units: bool) -> None:
    readings = [reading(i, k, d, t, dev) for i, (k, d, t, dev) in enumerate(rows)]
    events = [contract_event(100 + j, name, at, list(range(len(rows))), data=data)
              for j, (name, at, data) in enumerate(fired)]
    doc = export(readings, events, ship=shipment(units=None if units else []))
    assert_valid(doc)
    exported = {e["tf:entry"] for e in doc["epcisBody"]["eventList"]}
    withheld = {e["tf:entry"] for e in doc["tf:notExported"]}
    assert not exported & withheld
    for i, (k, _, _, _) in enumerate(rows):  # every rfid/sensor reading is accounted for
        assert (i in exported | withheld) == (k in ("temp", "hum", "shock", "door", "rfid"))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["idx", "dev", "k", "t", "d", "hash", "ledger_time"]),
                       _anything, max_size=7))
def test_garbage_reading_gives_a_document_or_an_export_error_never_a_crash(
        garbage: dict[str, Any]) -> None:
    raw = {**GOOD, **garbage}
    try:
        doc = export([raw], [])
    except EpcisExportError:
        return
    assert_valid(doc)


# -- a long trip --------------------------------------------------------------------------------


def long_trip(n: int) -> Iterator[dict[str, Any]]:
    kinds = ["gps", "temp", "hum", "temp", "shock", "door", "rfid", "status"]
    for i in range(n):
        k = kinds[i % len(kinds)]
        t = T0 + i * 1000
        if k == "gps":
            d: dict[str, Any] = {"lat": 51.9 + i * 1e-6, "lon": 4.4 - i * 1e-6, "fix": 1}
        elif k in ("temp", "hum"):
            d = {"c": 4.0 + (i % 50) / 10, "rh": 40 + i % 20}
        elif k == "shock":
            d = {"peak_g": 1.0 + (i % 7) / 3, "x": 0.1, "y": 0.2, "z": 1.0}
        elif k == "door":
            d = {"open": i % 16 == 5}
        else:
            d = {"epc": PALLET_A if i % 3 else PALLET_B, "backlog": 0}
        yield reading(i, k, d, t, dev="truck-1" if i % 2 else "truck-2")


def test_twenty_thousand_readings_export_in_order_and_a_sample_validates() -> None:
    readings = list(long_trip(20_000))
    events = [contract_event(30_000 + j, "excursion", T0 + j * 997_000, [j * 8 + 1],
                             "out_of_compliance") for j in range(20)]
    doc = export(readings, events)
    body = doc["epcisBody"]["eventList"]
    assert len(body) == 20_000 - 2 * 2_500 + 20  # no event for gps and status readings
    assert doc["tf:notExported"] == []
    keys = [(e["eventTime"], e["tf:entry"]) for e in body]
    assert keys == sorted(keys)
    assert len({e["eventID"] for e in body}) == len(body)
    json.dumps(doc, allow_nan=False)
    sample = dict(doc, epcisBody={"eventList": body[::97] + body[-3:]})
    assert_valid(sample)
