"""The engine over the shipped templates: just inside and just outside every threshold and
window edge, time triggers, faults, lifecycle."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from ledger_node.contracts import (
    CONTRACT_FAULT,
    ContractDocumentError,
    ContractEngine,
    ContractEvent,
    ContractRegistrationError,
    ReadingFact,
    parse_contract,
    template_text,
)
from ledger_node.contracts.geo import EARTH_RADIUS_M
from ledger_node.shipments import ShipmentBook

M = 60_000
T0 = 1_767_225_600_000          # 2026-01-01T00:00:00Z
SSCC = "urn:epc:id:sscc:0614141.1234567890"
DATA = Path(__file__).parent / "data" / "contracts"


def square(lon: float, lat: float, size: float) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[[lon, lat], [lon + size, lat],
                                                [lon + size, lat + size], [lon, lat + size],
                                                [lon, lat]]]}


class World:
    """A book and an engine with the given templates, one shipment SHP-1 on truck-1."""

    def __init__(self, *templates: str, docs: tuple[str, ...] = (), deadline: int | None = None,
                 state: str = "in_transit", effective: int = 0, attach: bool = True) -> None:
        self.book = ShipmentBook()
        self.engine = ContractEngine(self.book)
        names = []
        for text in [template_text(t) for t in templates] + list(docs):
            doc = parse_contract(text)
            self.engine.register(doc, effective)
            names.append(doc.name)
        self.book.apply({"v": 1, "type": "shipment_created", "t": 0, "shipment": "SHP-1",
                         "parties": [{"org": "shipper-a", "role": "shipper"}],
                         "units": [SSCC], "deadline": deadline,
                         "route": {"type": "LineString", "coordinates": [[0.0, 0.0], [1.0, 0.0]]},
                         "geofences": {"depot": square(-0.01, -0.01, 0.02),
                                       "customer": square(0.99, -0.01, 0.02)},
                         "contracts": names if attach else []}, T0)
        self.book.apply({"v": 1, "type": "shipment_assigned", "t": 0, "shipment": "SHP-1",
                         "dev": "truck-1", "start": 0}, T0)
        if state != "created":
            self.book.apply({"v": 1, "type": "shipment_state", "t": 0, "shipment": "SHP-1",
                             "state": state}, T0)
        self.idx = 100
        self.events: list[ContractEvent] = []

    def take(self, events: list[ContractEvent], at: int) -> list[ContractEvent]:
        for ev in events:
            self.book.apply_event(ev.to_map(), at)
        self.events.extend(events)
        return events

    def read(self, minutes: float, k: str, dev: str = "truck-1", ledger: int | None = None,
             **d: Any) -> list[ContractEvent]:
        self.idx += 1
        t = T0 + round(minutes * M)
        at = ledger if ledger is not None else t
        fact = ReadingFact(self.idx, dev, self.idx, t, k, d, at)
        return self.take(self.engine.on_reading(fact), at)

    def tick(self, at: int) -> list[ContractEvent]:
        return self.take(self.engine.on_time(at), at)

    def state(self) -> str:
        s = self.book.get("SHP-1")
        assert s is not None
        return s.state


def names(events: list[ContractEvent]) -> list[tuple[str, str]]:
    return [(e.event, e.data.get("rule", "")) for e in events]


# -- cold chain 2-8 --------------------------------------------------------------------------
def test_cold_chain_15_minutes_above_8_is_an_excursion_not_a_millisecond_less() -> None:
    w = World("cold-chain-2-8")
    assert w.read(0, "temp", c=8.1) == []
    assert w.read(10, "temp", c=9.0) == []
    assert w.read(15 - 1 / M, "temp", c=8.5) == []
    [ev] = w.read(15, "temp", c=8.2)
    assert (ev.event, ev.data["rule"], ev.at, ev.state) == ("excursion", "excursion",
                                                            T0 + 15 * M, "out_of_compliance")
    assert ev.cause == (101, 102, 103, 104)
    assert ev.data["value"] == 8.2 and ev.data["duration_ms"] == 15 * M
    assert w.state() == "out_of_compliance"
    assert w.read(20, "temp", c=9.0) == []                  # the same episode fires once


def test_cold_chain_bounds_are_exclusive() -> None:
    w = World("cold-chain-2-8")
    for minute in range(0, 31, 5):
        assert w.read(minute, "temp", c=8.0 if minute % 10 else 2.0) == []
    assert w.read(31, "temp", c=1.99) == []
    [ev] = w.read(46, "temp", c=1.5)
    assert ev.data["start"] == T0 + 31 * M


def test_cold_chain_cumulative_60_minutes_over_separate_episodes() -> None:
    w = World("cold-chain-2-8")
    # four 14-minute excursions (never 15 in a row), 1 minute in range between them
    for k in range(4):
        w.read(15 * k, "temp", c=9.0)
        w.read(15 * k + 14, "temp", c=9.0)
        w.read(15 * k + 14.5, "temp", c=5.0)
    assert names(w.events) == []
    # 4 x 14.5 min = 58 min so far (each hot sample holds until the next sample)
    w.read(60, "temp", c=9.0)
    assert w.read(62 - 1 / M, "temp", c=9.0) == []
    [ev] = w.read(62, "temp", c=9.0)
    assert ev.data["rule"] == "cumulative" and ev.data["total_ms"] == 60 * M
    assert ev.state == "out_of_compliance"


def test_cold_chain_critical_above_25_fires_at_once_and_once_per_episode() -> None:
    w = World("cold-chain-2-8")
    assert w.read(0, "temp", c=25.0) == []
    [ev] = w.read(1, "temp", c=25.01)
    assert ev.data["rule"] == "critical" and ev.data["value"] == 25.01
    assert w.read(2, "temp", c=30.0) == []
    w.read(3, "temp", c=5.0)
    [again] = w.read(4, "temp", c=26.0)
    assert again.data["rule"] == "critical"
    assert again.state is None                     # already out of compliance


def test_frozen_at_most_minus_18() -> None:
    w = World("frozen")
    assert w.read(0, "temp", c=-18.0) == []
    assert w.read(20, "temp", c=-18.0) == []
    w.read(21, "temp", c=-17.9)
    assert w.read(35.99, "temp", c=-17.5) == []
    [ev] = w.read(36, "temp", c=-16.0)
    assert ev.event == "excursion" and ev.data["start"] == T0 + 21 * M


# -- shock, door -------------------------------------------------------------------------------
def test_shock_above_the_threshold_fires_per_reading() -> None:
    w = World("shock")
    assert w.read(0, "shock", peak_g=4.0) == []
    assert len(w.read(1, "shock", peak_g=4.01)) == 1
    [ev] = w.read(2, "shock", peak_g=9.5, x=1.0)
    assert ev.event == "shock" and ev.data == {"rule": "shock", "field": "peak_g", "value": 9.5}
    assert ev.notify == ("mqtt",)


def test_door_opened_outside_the_geofences_uses_the_last_position() -> None:
    w = World("door-outside")
    [unknown] = w.read(0, "door", open=True)              # no position yet: outside
    assert unknown.event == "door_open_outside" and "value" not in unknown.data
    w.read(1, "gps", lat=0.0, lon=0.0)                      # in the depot
    assert w.read(2, "door", open=True) == []
    assert w.read(3, "door", open=False) == []
    w.read(4, "gps", lat=0.0, lon=0.5)                      # on the road
    [ev] = w.read(5, "door", open=True)
    assert ev.data["value"] == [0.5, 0.0]
    # a late door reading is judged by the position at its own device time
    assert w.read(2.5, "door", open=True) == []
    assert w.read(6, "door", open=1) == []                 # 1 is not True


# -- geofences and corridor --------------------------------------------------------------------
def test_geofence_exit_and_entry_need_the_other_side_first() -> None:
    w = World("geofence")
    assert w.read(0, "gps", lat=0.0, lon=0.0) == []         # in the depot, outside customer
    [ex] = w.read(1, "gps", lat=0.0, lon=0.5)
    assert (ex.event, ex.data["geofence"]) == ("geofence_exit", "depot")
    assert w.read(2, "gps", lat=0.0, lon=0.6) == []
    [en] = w.read(3, "gps", lat=0.0, lon=1.0)
    assert (en.event, en.data["geofence"]) == ("geofence_entry", "customer")
    # the boundary counts as inside
    assert w.read(4, "gps", lat=0.0, lon=0.99) == []


def test_gps_without_position_is_a_fault_once() -> None:
    w = World("geofence", "shock")
    [f] = w.read(0, "gps", speed=3.0)
    assert f.event == CONTRACT_FAULT and f.data["kind"] == "missing_field"
    assert w.read(1, "gps", lat="x", lon=0.0) == []          # same kind: no flood
    assert len(w.read(2, "shock", peak_g=5.0)) == 1            # other contracts go on


def lat_at(metres: float) -> float:
    return math.degrees(metres / EARTH_RADIUS_M)


def test_corridor_deviation_beyond_half_the_width_held_two_minutes() -> None:
    w = World("route-corridor")
    assert w.read(0, "gps", lat=lat_at(499.9), lon=0.5) == []
    assert w.read(1, "gps", lat=lat_at(499.9), lon=0.5) == []
    assert w.read(3, "gps", lat=lat_at(499.9), lon=0.5) == []     # inside: never
    w.read(4, "gps", lat=lat_at(500.1), lon=0.5)
    assert w.read(6 - 1 / M, "gps", lat=-lat_at(800), lon=0.5) == []
    [ev] = w.read(6, "gps", lat=lat_at(600), lon=0.5)
    assert ev.event == "corridor_deviation" and ev.data["value"] == 600.0
    assert ev.data["start"] == T0 + 4 * M


# -- time --------------------------------------------------------------------------------------
def test_late_delivery_fires_strictly_after_the_deadline() -> None:
    deadline = T0 + 60 * M
    w = World("late-delivery", deadline=deadline)
    assert w.tick(deadline) == []
    [ev] = w.tick(deadline + 1)
    assert (ev.event, ev.at, ev.data["deadline"], ev.dev) == ("late_delivery", deadline + 1,
                                                               deadline, None)
    assert w.tick(deadline + 10 * M) == []


def test_delivery_at_the_deadline_is_on_time() -> None:
    deadline = T0 + 60 * M
    w = World("late-delivery", deadline=deadline)
    w.book.apply({"v": 1, "type": "shipment_state", "t": 0, "shipment": "SHP-1",
                  "state": "delivered"}, deadline)
    assert w.engine.on_shipment_change("SHP-1", deadline) == []
    assert w.tick(deadline + 5 * M) == []


def test_delivery_after_the_deadline_in_the_same_block_fires_at_once() -> None:
    deadline = T0 + 60 * M
    w = World("late-delivery", deadline=deadline)
    w.book.apply({"v": 1, "type": "shipment_state", "t": 0, "shipment": "SHP-1",
                  "state": "delivered"}, deadline + 1)
    [ev] = w.engine.on_shipment_change("SHP-1", deadline + 1)
    assert ev.data["delivered"] == deadline + 1
    assert w.tick(deadline + 2) == []


def test_a_cancelled_shipment_is_never_late() -> None:
    deadline = T0 + 60 * M
    w = World("late-delivery", deadline=deadline)
    w.book.apply({"v": 1, "type": "shipment_state", "t": 0, "shipment": "SHP-1",
                  "state": "cancelled"}, deadline - 1)
    assert w.tick(deadline + 1) == []


def test_device_silent_for_30_minutes_once_per_silence() -> None:
    w = World("device-silent", effective=T0)
    w.read(0, "temp", c=5.0)
    last = T0
    assert w.tick(last + 30 * M - 1) == []
    [ev] = w.tick(last + 30 * M)
    assert (ev.event, ev.dev, ev.cause) == ("device_silent", "truck-1", (101,))
    assert ev.data["silent_ms"] == 30 * M
    assert w.tick(last + 90 * M) == []                           # still the same silence
    w.read(100, "temp", c=5.0)
    assert w.tick(T0 + 129 * M) == []
    [again] = w.tick(T0 + 131 * M)
    assert again.cause == (102,)


def test_a_device_never_heard_is_silent_from_when_it_was_watched() -> None:
    w = World("device-silent", effective=T0 + 10 * M)
    assert w.tick(T0 + 39 * M) == []
    [ev] = w.tick(T0 + 40 * M)
    assert ev.cause == () and ev.data["last_seen"] is None


# -- custody -----------------------------------------------------------------------------------
def test_custody_transfer_when_a_pallet_is_scanned_at_a_depot() -> None:
    w = World("custody-transfer")
    [ev] = w.read(0, "rfid", dev="depot-reader-1", epc=SSCC, rssi=-50)
    assert ev.event == "custody_transfer"
    assert (ev.data["from"], ev.data["to"]) == ("shipper-a", "carrier-a")
    assert ev.notify == ("mqtt", "webhook:custody")
    s = w.book.get("SHP-1")
    assert s is not None and s.custodian == "carrier-a"
    assert w.read(1, "rfid", dev="depot-reader-1", epc=SSCC) == []      # no change
    assert w.read(2, "rfid", dev="gate-9", epc=SSCC) == []              # not a depot reader
    assert w.read(3, "rfid", dev="depot-reader-2",
                  epc="urn:epc:id:sscc:0614141.0000000001") == []        # not our pallet
    [ev2] = w.read(10, "rfid", dev="depot-reader-2", epc=SSCC)
    assert (ev2.data["from"], ev2.data["to"]) == ("carrier-a", "consignee-b")
    assert w.read(5, "rfid", dev="depot-reader-1", epc=SSCC) == []      # older scan: history


# -- logistic units ------------------------------------------------------------------------------
OTHER_SSCC = "urn:epc:id:sscc:0614141.0000000001"


def test_a_pallet_is_loaded_by_the_trucks_reader_and_unloaded_at_a_depot() -> None:
    w = World("unit-tracking")
    assert w.read(0, "rfid", dev="depot-reader-1", epc=SSCC) == []   # not on board yet
    [loaded] = w.read(1, "rfid", dev="truck-1", epc=SSCC, rssi=-40)
    assert (loaded.event, loaded.shipment, loaded.cause) == ("unit_loaded", "SHP-1", (w.idx,))
    assert loaded.data == {"rule": "pallets", "epc": SSCC, "reader": "truck-1"}
    assert loaded.notify == ("mqtt",) and loaded.state is None
    s = w.book.get("SHP-1")
    assert s is not None and s.on_board == [SSCC]
    assert w.read(2, "rfid", dev="truck-1", epc=SSCC) == []           # still on board
    assert w.read(3, "rfid", dev="truck-1", epc=OTHER_SSCC) == []     # not this shipment's
    [unloaded] = w.read(30, "rfid", dev="depot-reader-2", epc=SSCC)
    assert (unloaded.event, unloaded.data["reader"]) == ("unit_unloaded", "depot-reader-2")
    assert s.on_board == []
    assert w.read(20, "rfid", dev="truck-1", epc=SSCC) == []          # older than the unload
    [again] = w.read(40, "rfid", dev="truck-1", epc=SSCC)             # loaded again
    assert again.event == "unit_loaded"
    assert [(m.action, m.reader, m.t) for m in s.unit_moves] == [
        ("loaded", "truck-1", T0 + M), ("unloaded", "depot-reader-2", T0 + 30 * M),
        ("loaded", "truck-1", T0 + 40 * M)]


def test_unloading_can_be_limited_to_listed_readers() -> None:
    doc = template_text("unit-tracking").replace(
        "units: {}", "units: {unload_readers: [dock-7]}")
    w = World(docs=(doc,))
    w.read(0, "rfid", dev="truck-1", epc=SSCC)
    assert w.read(1, "rfid", dev="gate-9", epc=SSCC) == []            # not an unloading reader
    [ev] = w.read(2, "rfid", dev="dock-7", epc=SSCC)
    assert ev.event == "unit_unloaded"


def test_a_scan_outside_the_trucks_assignment_does_not_load() -> None:
    w = World("unit-tracking")
    w.book.apply({"v": 1, "type": "shipment_assigned", "t": 0, "shipment": "SHP-1",
                  "dev": "van-2", "start": T0 + 10 * M, "end": T0 + 20 * M}, T0)
    assert w.read(5, "rfid", dev="van-2", epc=SSCC) == []             # before van-2 served
    [ev] = w.read(15, "rfid", dev="van-2", epc=SSCC)
    assert ev.event == "unit_loaded" and ev.dev == "van-2"


def test_two_unit_contracts_record_each_move_once() -> None:
    second = template_text("unit-tracking").replace("name: unit-tracking", "name: pallets-2")
    w = World("unit-tracking", docs=(second,))
    assert [e.event for e in w.read(0, "rfid", dev="truck-1", epc=SSCC)] == ["unit_loaded"]


@pytest.mark.parametrize(("rule", "message"), [
    ("units: {}\n    emit: loaded", "cannot have 'emit'"),
    ("units: {}\n    set_state: delivered", "cannot have 'set_state'"),
    ("units: {readers: [a]}", "unknown field 'readers' in units"),
    ("units: [a]", "units must be a map"),
    ("units: {unload_readers: ['bad reader']}", "must match"),
])
def test_bad_units_rules_are_refused_with_the_line(rule: str, message: str) -> None:
    text = ("name: u\nversion: 1\nrules:\n  - id: r\n    on: {event: rfid}\n    "
            + rule + "\n")
    with pytest.raises(ContractDocumentError, match=message) as err:
        parse_contract(text)
    assert ":6:" in str(err.value) or ":7:" in str(err.value)


def test_a_units_rule_needs_rfid_readings() -> None:
    text = "name: u\nversion: 1\nrules:\n  - id: r\n    on: {reading: temp}\n    units: {}\n"
    with pytest.raises(ContractDocumentError, match=r"'units' needs on: \{reading: rfid\}"):
        parse_contract(text)

# -- CEL, faults, isolation ----------------------------------------------------------------------
HOT = """
name: hot
version: 1
params: {limit: 30.0}
rules:
  - id: hot
    on: {reading: temp}
    when: "reading.d.c / reading.d.n > params.limit && shipment.state == 'in_transit'"
    emit: hot
    repeat: reading
"""


def test_a_failing_contract_is_isolated_with_one_fault_per_kind() -> None:
    w = World("cold-chain-2-8", docs=(HOT,))
    [fault] = w.read(0, "temp", c=20, n=0)
    assert fault.event == CONTRACT_FAULT and fault.contract == "hot"
    assert fault.data["kind"] == "division_by_zero" and fault.cause == (101,)
    assert fault.state is None and fault.notify == ()
    assert w.read(1, "temp", c=20, n=0) == []                   # once, not per reading
    [missing] = w.read(2, "temp", c=20.0)
    assert missing.data["kind"] == "missing_field"
    # the cold chain went on regardless of the faulty contract
    [critical] = w.read(3, "temp", c=40, n=0)
    assert critical.data["rule"] == "critical"
    # 62 / 2 > 30 but the shipment is out of compliance now: CEL's && absorbs the error
    assert w.read(4, "temp", c=62, n=2) == []
    w2 = World(docs=(HOT,))
    [hot] = w2.read(3, "temp", c=62, n=2)
    assert hot.event == "hot" and hot.data == {"rule": "hot"}


def test_a_device_scoped_cel_contract_with_a_window_average() -> None:
    w = World(docs=((DATA / "custom-cel.json").read_text(),), attach=False)
    assert w.read(0, "temp", c=31.0) == []           # count 1
    assert w.read(5, "temp", c=31.0) == []           # count 2
    [ev] = w.read(10, "temp", c=29.0)                # avg 30.33 > 30, count 3
    assert (ev.event, ev.contract, ev.version, ev.notify) == ("hot_average", "hot-and-humid", 3,
                                                             ("webhook:insurer",))
    assert w.read(15, "temp", c=10.0) == []          # avg 25.25: the episode ends
    assert w.read(41, "temp", c=40.0) == []          # the window is 30m: count 1 again
    assert w.read(0, "temp", dev="truck-2", c=99.0) == []   # not a device of the contract


def test_readings_no_contract_listens_to_cost_nothing_and_emit_nothing() -> None:
    w = World("cold-chain-2-8")
    assert w.read(0, "hum", rh=99.0) == []
    assert w.read(0, "temp", dev="truck-unknown", c=99.0) == []


def test_two_rules_moving_the_state_on_one_reading_move_it_once() -> None:
    w = World("cold-chain-2-8", "frozen")
    w.read(0, "temp", c=30.0)
    [crit] = [e for e in w.events if e.data.get("rule") == "critical"]
    assert crit.state == "out_of_compliance"
    w.read(15, "temp", c=30.0)
    moved = [e for e in w.events if e.state is not None]
    assert len(moved) == 1


# -- lifecycle ---------------------------------------------------------------------------------
SHOCK_V2 = template_text("shock").replace("version: 1", "version: 2").replace("4.0", "8.0")


def test_upgrade_stops_the_old_version_at_its_effective_time() -> None:
    w = World("shock")
    w.engine.upgrade(parse_contract(SHOCK_V2), T0 + 10 * M)
    [v1] = w.read(5, "shock", peak_g=5.0)
    assert v1.version == 1
    assert w.read(10, "shock", peak_g=5.0) == []          # v2: 5 g is fine
    [v2] = w.read(11, "shock", peak_g=9.0)
    assert v2.version == 2
    infos = [(i.version, i.status, i.effective, i.retired) for i in w.engine.contracts()]
    assert infos == [(1, "superseded", 0, T0 + 10 * M), (2, "active", T0 + 10 * M, None)]


def test_register_upgrade_retire_refusals() -> None:
    w = World("shock")
    with pytest.raises(ContractRegistrationError) as info:
        w.engine.register(parse_contract(template_text("shock")), 5)
    assert info.value.reason == "already_registered"
    with pytest.raises(ContractRegistrationError) as info:
        w.engine.upgrade(parse_contract(template_text("shock")), 5)
    assert info.value.reason == "version_not_higher"
    with pytest.raises(ContractRegistrationError) as info:
        w.engine.upgrade(parse_contract(template_text("frozen")), 5)
    assert info.value.reason == "unknown_contract"
    w.engine.retire("shock", T0 + 5 * M)
    assert w.read(6, "shock", peak_g=9.0) == []
    with pytest.raises(ContractRegistrationError) as info:
        w.engine.retire("shock", T0 + 6 * M)
    assert info.value.reason == "retired"
    w.engine.register(parse_contract(SHOCK_V2), T0 + 7 * M)    # a retired name, higher version
    assert len(w.read(8, "shock", peak_g=9.0)) == 1


def test_a_contract_applies_only_from_its_effective_ledger_time() -> None:
    w = World("shock", effective=T0 + 10 * M)
    assert w.read(20, "shock", ledger=T0 + 9 * M, peak_g=9.0) == []
    assert len(w.read(21, "shock", ledger=T0 + 10 * M, peak_g=9.0)) == 1


def test_event_maps_are_plain_and_ordered() -> None:
    w = World("cold-chain-2-8")
    [ev] = w.read(0, "temp", c=30.0)
    m = ev.to_map()
    assert list(m) == ["type", "v", "contract", "version", "event", "shipment", "dev", "at",
                       "cause", "state", "data", "notify"]
    assert m["type"] == "contract_event" and isinstance(m["cause"], list)


@pytest.mark.parametrize("d", [
    [1, 2, 3], "hot", None, {"c": float("nan")}, {"c": float("inf")}, {"c": "9"},
    {"c": True}, {"c": [9.0]}, {"c": {"v": 9}}, {"c": b"\x00"}, {1: 2, "c": 9.0},
    {"c": 10**400}, {"lat": float("nan"), "lon": 0.0}, {"epc": 12}, {"open": "yes"},
    {"peak_g": -1e308}, {"c": 9.0, "n": 0, "x" * 10_000: "y" * 100_000},
])
def test_hostile_reading_values_never_crash_the_engine(d: Any) -> None:
    w = World("cold-chain-2-8", "shock", "geofence", "door-outside", "custody-transfer",
              "route-corridor", docs=(HOT,))
    for k in ("temp", "gps", "shock", "door", "rfid"):
        for minute in (0, 20):
            w.idx += 1
            fact = ReadingFact(w.idx, "truck-1", w.idx, T0 + minute * M, k, d, T0 + minute * M)
            w.take(w.engine.on_reading(fact), T0 + minute * M)
    assert {e.event for e in w.events} <= {CONTRACT_FAULT, "excursion", "door_open_outside"}
    kinds = {e.data["kind"] for e in w.events if e.event == CONTRACT_FAULT}
    assert kinds <= {"missing_field", "type_error", "bad_value", "bad_input", "eval_error"}


def test_a_finished_shipment_is_forgotten_six_hours_after_it_ended() -> None:
    w = World("cold-chain-2-8")
    w.read(0, "temp", c=9.0)
    w.book.apply({"v": 1, "type": "shipment_state", "t": 0, "shipment": "SHP-1",
                  "state": "delivered"}, T0 + 10 * M)
    w.tick(T0 + 10 * M)
    # a late reading within the horizon still completes the episode
    [late] = w.read(15, "temp", ledger=T0 + 20 * M, c=9.5)
    assert late.data["rule"] == "excursion" and late.state is None
    slots = [s for v in w.engine._versions["cold-chain-2-8"] for s in v.by_kind["temp"]]
    assert any(s.windows for s in slots)
    w.tick(T0 + 10 * M + 6 * 60 * M)
    assert not any(s.windows for s in slots)
    assert w.read(30, "temp", ledger=T0 + 7 * 60 * M, c=30.0) == []


def test_events_applied_at_the_end_of_the_block_never_ask_for_a_refused_move() -> None:
    delivered_on_scan = template_text("custody-transfer").replace(
        "    emit: custody_transfer\n", "    emit: custody_transfer\n    set_state: delivered\n")
    w = World("cold-chain-2-8", docs=(delivered_on_scan,))
    block: list[ContractEvent] = []
    idx = 500
    for k, dev, minute, d in (("rfid", "depot-reader-2", 0, {"epc": SSCC}),
                              ("temp", "truck-1", 1, {"c": 30.0})):
        idx += 1
        at = T0 + 2 * M
        block += w.engine.on_reading(ReadingFact(idx, dev, idx, T0 + minute * M, k, d, at))
    block += w.engine.on_time(T0 + 2 * M)
    assert [(e.event, e.state) for e in block] == [("custody_transfer", "delivered"),
                                                   ("excursion", None)]
    for ev in block:                       # as block application does, after the block
        if ev.state is not None:
            w.book.set_state("SHP-1", ev.state, T0 + 2 * M, "test")
    assert w.state() == "delivered"
