"""Replay properties of the whole engine (Hypothesis): the same calls give the same events,
episodes fire once, events cite only readings that were fed, event data is plain."""

from __future__ import annotations

from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_node.contracts import (
    ContractEngine,
    ReadingFact,
    parse_contract,
    template_names,
    template_text,
)
from ledger_node.shipments import ShipmentBook

M = 60_000
T0 = 1_767_225_600_000
SSCC = "urn:epc:id:sscc:0614141.1234567890"
CUSTOM = """
name: custom
version: 1
params: {high: 7.5}
rules:
  - id: avg
    on: {reading: temp}
    window: {field: c, over: 20m}
    when: "window.avg > params.high && reading.d.c / reading.d.n >= 1.0"
    for: 5m
    emit: warm_average
  - id: geo
    on: {reading: gps}
    when: "'depot' in geo.inside || geo.corridor_m > 800.0"
    cumulative: 10m
    emit: geo_time
"""
DOCS = [parse_contract(template_text(n)) for n in template_names()] + [parse_contract(CUSTOM)]


def square(lon: float, lat: float, size: float) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[[lon, lat], [lon + size, lat],
                                                [lon + size, lat + size], [lon, lat + size],
                                                [lon, lat]]]}


reading_op = st.tuples(
    st.just("r"),
    st.sampled_from(["truck-1", "truck-2", "depot-reader-1"]),
    st.integers(-40, 30),                                    # device time offset, minutes
    st.sampled_from(["temp", "temp", "gps", "shock", "door", "rfid"]),
    st.integers(0, 12),                                      # value selector
)
tick_op = st.tuples(st.just("tick"), st.integers(0, 45))
state_op = st.tuples(st.just("state"), st.sampled_from(["SHP-1", "SHP-2"]))
ops_strategy = st.lists(st.one_of(reading_op, reading_op, reading_op, tick_op, state_op),
                        max_size=80)


def values(kind: str, sel: int) -> dict[str, Any]:
    if kind == "temp":
        d: dict[str, Any] = {"c": [1.5, 2.0, 5.0, 8.0, 8.5, 12.0, 26.0][sel % 7], "n": sel % 3}
        return d if sel != 12 else {"probe": "p1"}
    if kind == "gps":
        if sel == 12:
            return {"speed": 1.0}
        return {"lat": [0.0, 0.004, 0.02][sel % 3], "lon": [0.0, 0.5, 1.0, 0.3][sel % 4]}
    if kind == "shock":
        return {"peak_g": float(sel)}
    if kind == "door":
        return {"open": sel % 2 == 0}
    return {"epc": SSCC if sel % 2 else "urn:epc:id:sscc:0614141.0000000001"}


def run(ops: list[tuple[Any, ...]]) -> tuple[list[dict[str, Any]], set[int]]:
    book = ShipmentBook()
    engine = ContractEngine(book)
    for doc in DOCS:
        engine.register(doc, T0)
    for sid, dev in (("SHP-1", "truck-1"), ("SHP-2", "truck-2")):
        book.apply({"v": 1, "type": "shipment_created", "t": 0, "shipment": sid,
                    "parties": [{"org": "shipper-a", "role": "shipper"}],
                    "units": [SSCC] if sid == "SHP-1" else [], "deadline": T0 + 90 * M,
                    "route": {"type": "LineString", "coordinates": [[0.0, 0.0], [1.0, 0.0]]},
                    "geofences": {"depot": square(-0.01, -0.01, 0.02)},
                    "contracts": [d.name for d in DOCS]}, T0)
        book.apply({"v": 1, "type": "shipment_assigned", "t": 0, "shipment": sid, "dev": dev,
                    "start": 0}, T0)
        book.apply({"v": 1, "type": "shipment_state", "t": 0, "shipment": sid,
                    "state": "in_transit"}, T0)
    ledger = T0
    out: list[dict[str, Any]] = []
    fed: set[int] = set()

    def take(events: list[Any]) -> None:
        for ev in events:
            book.apply_event(ev.to_map(), ledger)
            out.append(ev.to_map())

    for n, op in enumerate(ops):
        if op[0] == "r":
            _, dev, offset, kind, sel = op
            ledger += M
            fact = ReadingFact(n, dev, n, ledger + offset * M, kind, values(kind, sel), ledger)
            fed.add(n)
            take(engine.on_reading(fact))
            take(engine.on_time(ledger))
        elif op[0] == "tick":
            ledger += op[1] * M
            take(engine.on_time(ledger))
        else:
            s = book.get(op[1])
            if s is not None and s.state in ("in_transit", "out_of_compliance"):
                book.apply({"v": 1, "type": "shipment_state", "t": 0, "shipment": op[1],
                            "state": "delivered"}, ledger)
                take(engine.on_shipment_change(op[1], ledger))
    return out, fed


def plain(x: Any) -> bool:
    if isinstance(x, dict):
        return all(isinstance(k, str) and plain(v) for k, v in x.items())
    if isinstance(x, list):
        return all(plain(v) for v in x)
    return x is None or isinstance(x, str | int | float | bool)


@settings(max_examples=120, deadline=None)
@given(ops_strategy)
def test_replaying_the_same_calls_gives_byte_identical_events(ops: list[tuple[Any, ...]]) -> None:
    first, fed = run(ops)
    second, _ = run(ops)
    assert cbor2.dumps(first, canonical=True) == cbor2.dumps(second, canonical=True)
    for ev in first:
        assert plain(ev), ev
        assert set(ev["cause"]) <= fed
        assert ev["cause"] == sorted(set(ev["cause"]))
        assert len(ev["cause"]) <= 64
    # episode rules fire once per episode: two events of one rule, scope and start time
    # (distinct episodes may tie in device time) never share a reading
    seen: dict[tuple[Any, ...], set[int]] = {}
    for e in first:
        if "start" in e["data"]:
            key = (e["contract"], e["data"]["rule"], e["shipment"], e["data"].get("geofence"),
                   e["data"]["start"])
            cause = set(e["cause"])
            assert not (seen.get(key, set()) & cause), e
            seen.setdefault(key, set()).update(cause)
    # a fault is reported once per contract, version, kind and shipment
    faults = [(e["contract"], e["version"], e["data"]["kind"], e["shipment"])
              for e in first if e["event"] == "contract_fault"]
    assert len(faults) == len(set(faults))
    # every state move is one the book accepted, in order
    moves = [e for e in first if e["state"] is not None]
    assert len({(e["shipment"], e["state"]) for e in moves}) == len(moves)


@settings(max_examples=60, deadline=None)
@given(ops_strategy, st.integers(0, 80))
def test_a_restart_replaying_a_prefix_reproduces_its_events(
        ops: list[tuple[Any, ...]], cut: int) -> None:
    whole, _ = run(ops)
    part, _ = run(ops[:cut])
    assert whole[:len(part)] == part
