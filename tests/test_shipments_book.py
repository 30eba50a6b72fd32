"""The shipment book: operator payloads applied in log order, contract moves, refusals."""

from __future__ import annotations

from typing import Any

import pytest

from ledger_node.shipments import (
    ALREADY_EXISTS,
    BAD_GEOMETRY,
    BAD_PAYLOAD,
    BAD_TRANSITION,
    UNKNOWN_SHIPMENT,
    ShipmentBook,
    ShipmentRejected,
    check_shipment_body,
)

SSCC = "urn:epc:id:sscc:0614141.1234567890"
SQUARE = {"type": "Polygon", "coordinates": [[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0],
                                              [0.0, 0.0]]]}


def created(sid: str = "SHP-1", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"v": 1, "type": "shipment_created", "t": 5, "shipment": sid,
                            "parties": [{"org": "acme", "role": "shipper"},
                                        {"org": "haul", "role": "carrier"}],
                            "units": [SSCC], "route": None, "geofences": {"depot": SQUARE},
                            "deadline": 1000, "contracts": ["cold-chain-2-8"]}
    body.update(extra)
    return body


def assigned(dev: str, start: int, end: int | None = None, sid: str = "SHP-1") -> dict[str, Any]:
    return {"v": 1, "type": "shipment_assigned", "t": 5, "shipment": sid, "dev": dev,
            "start": start, "end": end}


def state(st: str, sid: str = "SHP-1") -> dict[str, Any]:
    return {"v": 1, "type": "shipment_state", "t": 5, "shipment": sid, "state": st}


def rejected(book: ShipmentBook, body: dict[str, Any]) -> str:
    with pytest.raises(ShipmentRejected) as info:
        book.apply(body, 10)
    return info.value.reason


def test_created_shipment_has_its_fields_and_the_shipper_as_custodian() -> None:
    book = ShipmentBook()
    s = book.apply(created(), 42)
    assert (s.id, s.state, s.created, s.deadline) == ("SHP-1", "created", 42, 1000)
    assert s.custodian == "acme"
    assert s.units == (SSCC,)
    assert s.contracts == ("cold-chain-2-8",)
    assert s.history == [(42, "created", "operator", None)]
    assert book.get("SHP-1") is s
    assert book.for_unit(SSCC) == [s]


def test_optional_fields_may_be_left_out() -> None:
    book = ShipmentBook()
    s = book.apply({"v": 1, "type": "shipment_created", "t": 0, "shipment": "S"}, 1)
    assert (s.units, s.route, s.geofences, s.deadline, s.contracts, s.custodian) == \
        ((), None, {}, None, (), None)


def test_for_device_covers_start_inclusive_end_exclusive_in_id_order() -> None:
    book = ShipmentBook()
    book.apply(created("B"), 1)
    book.apply(created("A"), 1)
    book.apply(assigned("truck", 100, 200, "B"), 2)
    book.apply(assigned("truck", 150, None, "A"), 2)
    assert [s.id for s in book.for_device("truck", 99)] == []
    assert [s.id for s in book.for_device("truck", 100)] == ["B"]
    assert [s.id for s in book.for_device("truck", 150)] == ["A", "B"]
    assert [s.id for s in book.for_device("truck", 199)] == ["A", "B"]
    assert [s.id for s in book.for_device("truck", 200)] == ["A"]
    assert book.for_device("other", 150) == []


def test_operator_moves_follow_the_state_machine() -> None:
    book = ShipmentBook()
    book.apply(created(), 1)
    assert rejected(book, state("delivered")) == BAD_TRANSITION
    book.apply(state("in_transit"), 2)
    book.apply(state("delivered"), 3)
    assert book.get("SHP-1").entered("delivered") == 3  # type: ignore[union-attr]
    assert rejected(book, state("cancelled")) == BAD_TRANSITION
    assert rejected(book, assigned("truck", 0)) == BAD_TRANSITION


def test_contract_moves_and_apply_event() -> None:
    book = ShipmentBook()
    book.apply(created(), 1)
    book.apply(state("in_transit"), 2)
    assert book.can_move("SHP-1", "out_of_compliance")
    book.apply_event({"contract": "c", "version": 1, "event": "excursion", "shipment": "SHP-1",
                      "state": "out_of_compliance", "data": {}}, 7, entry=70)
    s = book.get("SHP-1")
    assert s is not None and s.state == "out_of_compliance"
    assert s.history[-1] == (7, "out_of_compliance", "c@1:excursion", 70)
    # the same move again is skipped by apply_event, refused by set_state
    book.apply_event({"shipment": "SHP-1", "state": "out_of_compliance", "data": {}}, 8)
    with pytest.raises(ShipmentRejected):
        book.set_state("SHP-1", "out_of_compliance", 8, "again")
    book.apply(state("delivered"), 9)          # out_of_compliance can still be delivered
    book.apply_event({"contract": "k", "version": 2, "event": "custody_transfer",
                      "shipment": "SHP-1", "state": None, "data": {"to": "depot-org"}}, 10)
    assert s.custodian == "depot-org"
    assert s.custody == [(10, "depot-org", "k@2:custody_transfer", None)]



def unit_event(event: str, data: Any, at: Any = 5) -> dict[str, Any]:
    return {"contract": "u", "version": 1, "event": event, "shipment": "SHP-1", "at": at,
            "state": None, "data": data}


def test_unit_events_move_units_on_and_off_board() -> None:
    book = ShipmentBook()
    book.apply(created(), 1)
    s = book.get("SHP-1")
    assert s is not None
    book.apply_event(unit_event("unit_unloaded", {"epc": SSCC, "reader": "d"}), 2)
    assert s.unit_moves == [] and s.on_board == []          # never loaded: nothing to unload
    rev = s.rev
    book.apply_event(unit_event("unit_loaded", {"epc": SSCC, "reader": "truck-1"}), 3)
    assert s.on_board == [SSCC] and s.rev == rev + 1
    book.apply_event(unit_event("unit_loaded", {"epc": SSCC, "reader": "truck-1"}), 4)
    assert len(s.unit_moves) == 1                           # already on board
    book.apply_event(unit_event("unit_unloaded", {"epc": SSCC, "reader": "d"}, at=9), 6)
    assert s.on_board == [] and [m.action for m in s.unit_moves] == ["loaded", "unloaded"]
    assert s.unit_moves[-1].t == 9 and s.unit_moves[-1].cause == "u@1:unit_unloaded"


@pytest.mark.parametrize(("data", "at"), [
    ({"epc": "urn:epc:id:sscc:0614141.0000000001", "reader": "r"}, 5),  # not a unit of it
    ({"epc": SSCC}, 5), ({"epc": SSCC, "reader": 7}, 5), ({"reader": "r"}, 5),
    ("epc", 5), (None, 5), ({"epc": SSCC, "reader": "r"}, "5"),
    ({"epc": SSCC, "reader": "r"}, True),
])
def test_malformed_unit_events_change_nothing(data: Any, at: Any) -> None:
    book = ShipmentBook()
    book.apply(created(), 1)
    book.apply_event(unit_event("unit_loaded", data, at), 2)
    s = book.get("SHP-1")
    assert s is not None and s.unit_moves == [] and s.rev == 1

def test_unknown_and_duplicate_shipments_are_refused() -> None:
    book = ShipmentBook()
    assert rejected(book, state("in_transit")) == UNKNOWN_SHIPMENT
    book.apply(created(), 1)
    assert rejected(book, created()) == ALREADY_EXISTS
    with pytest.raises(ShipmentRejected) as info:
        book.set_state("nope", "out_of_compliance", 1, "x")
    assert info.value.reason == UNKNOWN_SHIPMENT


@pytest.mark.parametrize(("change", "reason"), [
    ({"shipment": "bad id!"}, BAD_PAYLOAD),
    ({"shipment": "x" * 65}, BAD_PAYLOAD),
    ({"v": 2}, BAD_PAYLOAD),
    ({"v": True}, BAD_PAYLOAD),
    ({"t": "now"}, BAD_PAYLOAD),
    ({"extra": 1}, BAD_PAYLOAD),
    ({"parties": [{"org": "a", "role": "pirate"}]}, BAD_PAYLOAD),
    ({"parties": [{"org": "a"}]}, BAD_PAYLOAD),
    ({"units": ["urn:epc:id:sgtin:0614141.812345.6789"]}, BAD_PAYLOAD),
    ({"units": ["urn:epc:id:sscc:0614141.123"]}, BAD_PAYLOAD),
    ({"units": [SSCC, SSCC]}, BAD_PAYLOAD),
    ({"deadline": -1}, BAD_PAYLOAD),
    ({"deadline": 1.5}, BAD_PAYLOAD),
    ({"contracts": ["Cold"]}, BAD_PAYLOAD),
    ({"contracts": "cold"}, BAD_PAYLOAD),
    ({"route": {"type": "LineString", "coordinates": [[0.0, 0.0]]}}, BAD_GEOMETRY),
    ({"route": {"type": "LineString", "coordinates": [[0.0, 0.0], [0.0, 0.0]]}}, BAD_GEOMETRY),
    ({"route": {"type": "LineString", "coordinates": [[0.0, 0.0], [200.0, 0.0]]}},
     BAD_GEOMETRY),
    ({"route": {"type": "LineString", "coordinates": [[0.0, 0.0], [float("nan"), 0.0]]}},
     BAD_PAYLOAD),
    ({"route": {"type": "Point", "coordinates": [0.0, 0.0]}}, BAD_PAYLOAD),
    ({"route": {"type": "LineString", "coordinates": [[0.0, 0.0], [1.0, 1.0]], "x": 1}},
     BAD_PAYLOAD),
    ({"geofences": {"bow": {"type": "Polygon", "coordinates": [[[0.0, 0.0], [1.0, 1.0],
                                                                 [1.0, 0.0], [0.0, 1.0],
                                                                 [0.0, 0.0]]]}}},
     BAD_GEOMETRY),
    ({"geofences": {"open": {"type": "Polygon", "coordinates": [[[0.0, 0.0], [1.0, 0.0],
                                                                  [1.0, 1.0], [0.0, 1.0]]]}}},
     BAD_GEOMETRY),
    ({"geofences": {"bad name": SQUARE}}, BAD_PAYLOAD),
    ({"geofences": {f"g{i}": SQUARE for i in range(65)}}, BAD_PAYLOAD),
    ({"units": [f"urn:epc:id:sscc:0614141.{i:010d}" for i in range(10_001)]}, BAD_PAYLOAD),
])
def test_malformed_shipment_created_is_refused_with_its_reason(
        change: dict[str, Any], reason: str) -> None:
    book = ShipmentBook()
    assert rejected(book, created(**change)) == reason
    assert book.all() == []


@pytest.mark.parametrize("body", [
    None, [], {"type": "shipment_exploded"}, {"v": 1, "type": "shipment_state"},
    {1: 2, "type": "shipment_state"},
    {"v": 1, "type": "shipment_assigned", "t": 0, "shipment": "S", "dev": "d", "start": 10,
     "end": 10},
    {"v": 1, "type": "shipment_assigned", "t": 0, "shipment": "S", "dev": "d", "start": True},
    {"v": 1, "type": "shipment_state", "t": 0, "shipment": "S", "state": "lost"},
])
def test_check_shipment_body_refuses_hostile_payloads(body: Any) -> None:
    with pytest.raises(ShipmentRejected) as info:
        check_shipment_body(body)
    assert info.value.reason == BAD_PAYLOAD


def test_revision_counts_every_change() -> None:
    book = ShipmentBook()
    r0 = book.revision
    s = book.apply(created(), 1)
    book.apply(assigned("truck", 0), 2)
    assert book.revision == r0 + 2
    assert s.rev == 2
