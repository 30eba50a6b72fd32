"""Shipments, contracts and contract events inside block application (ledger_node.world):
real SQLite stores, real operator entries and device signatures (software keys).

What is checked: operator entries create shipments and register contracts; a cold-chain
excursion becomes a contract-event entry in the same block, citing the readings that caused it,
and moves the shipment to out_of_compliance; the node rebuilds the same world from its log at
start and refuses a log whose events do not follow from it; two nodes fed the same batches write
identical blocks; a bad contract is refused with line and column; heartbeat blocks fire timers;
audit entries land on the ledger.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ledger_node.chain import Chain, OrderedBatch
from ledger_node.contracts import template_text
from ledger_node.errors import TamperError
from ledger_node.store import Store
from ledger_node.verify import verify_store
from ledger_node.world import audit_entry
from ledger_node.world_replay import replay_world
from tests.chainkit import ChainUnderTest, Device

T0 = 1_763_700_000_000
MIN = 60_000


def shipment(cut: ChainUnderTest, sid: str, dev: str, contracts: list[str],
             deadline: int | None = None) -> list[bytes]:
    return cut.shipment_entries(sid, dev, contracts, start=T0 - 60 * MIN, deadline=deadline)


@pytest.fixture
def cold(tmp_path: Path) -> tuple[ChainUnderTest, Device]:
    truck = Device("truck-1")
    cut = ChainUnderTest(tmp_path / "a.sqlite", [truck])
    admin = [cut.contract_entry(template_text("cold-chain-2-8")),
             *shipment(cut, "SHP-1", "truck-1", ["cold-chain-2-8"])]
    result = cut.apply(admin=admin)
    assert [a.status for a in result.admin] == ["accepted"] * 3, result.admin
    return cut, truck


def test_excursion_of_15_minutes_becomes_an_event_entry_citing_its_readings(cold) -> None:
    cut, truck = cold
    inside = cut.apply([truck.message(e) for e in truck.temps(T0, [5.0, 7.9, 8.0])])
    assert inside.events == []
    # above 8 °C from T0+3 min; the excursion completes 15 minutes later
    warm = truck.temps(T0 + 3 * MIN, [9.0] * 16)
    result = cut.apply([truck.message(e) for e in warm])
    assert [e.event for e in result.events] == ["excursion"]
    event = result.events[0]
    assert event.shipment == "SHP-1" and event.state == "out_of_compliance"
    conn = cut.store.conn
    rows = conn.execute("SELECT idx, event, shipment, doc FROM events").fetchall()
    assert len(rows) == 1
    doc = json.loads(rows[0]["doc"])
    cited = conn.execute(f"SELECT t FROM readings WHERE idx IN "
                         f"({','.join('?' * len(doc['cause']))})", doc["cause"]).fetchall()
    assert cited and min(r[0] for r in cited) == T0 + 3 * MIN
    kind = conn.execute("SELECT kind FROM entries WHERE idx = ?", (rows[0]["idx"],)).fetchone()
    assert kind[0] == "contract_event"
    state = conn.execute("SELECT state, doc FROM shipments WHERE id = 'SHP-1'").fetchone()
    assert state["state"] == "out_of_compliance"
    assert json.loads(state["doc"])["history"][-1]["state"] == "out_of_compliance"
    assert verify_store(cut.store.path).ok


def test_14_minutes_above_8_is_no_excursion(cold) -> None:
    cut, truck = cold
    result = cut.apply([truck.message(e) for e in truck.temps(T0, [9.0] * 15 + [7.0])])
    assert result.events == []
    assert cut.store.conn.execute("SELECT state FROM shipments").fetchone()[0] == "created"


def test_node_restart_rebuilds_the_world_and_derives_the_same_events(cold, tmp_path) -> None:
    cut, truck = cold
    cut.apply([truck.message(e) for e in truck.temps(T0, [9.0] * 17)])
    path = cut.store.path
    cut.store.close()
    store = Store(path)
    chain = Chain(store, "main", "node-1", cut.node)
    assert chain.world.book.get("SHP-1").state == "out_of_compliance"
    # the rebuilt world goes on exactly where it was: no second excursion for this episode
    more = [truck.message(e) for e in truck.temps(T0 + 17 * MIN, [9.5, 9.6])]
    result = chain.apply(OrderedBatch(cut.time + 5000, "node-1", (), tuple(more)))
    assert result.events == []
    store.close()


def test_an_event_that_does_not_follow_from_the_log_is_tamper(cold) -> None:
    cut, truck = cold
    cut.apply([truck.message(e) for e in truck.temps(T0, [9.0] * 17)])
    conn = cut.store.conn
    idx, data = conn.execute("SELECT idx, data FROM entries WHERE kind = 'contract_event'"
                             ).fetchone()
    forged = bytes(data).replace(b"out_of_compliance", b"in_transit\x00\x00\x00\x00\x00\x00\x00")
    with conn:
        conn.execute("UPDATE entries SET data = ? WHERE idx = ?", (forged, idx))
    with pytest.raises(TamperError, match="contract event"):
        replay_world(cut.store, cut.pki.ca_cert)
    report = verify_store(cut.store.path)
    assert not report.ok


def test_two_nodes_fed_the_same_batches_write_identical_blocks(tmp_path: Path) -> None:
    truck = Device("truck-1")
    a = ChainUnderTest(tmp_path / "a.sqlite", [truck])
    b_store = Store(tmp_path / "b.sqlite")
    b = Chain(b_store, "main", "node-1", a.node)
    genesis = a.store.entry(0), a.store.entry(1)
    b.apply(OrderedBatch(a.time, "node-1", genesis, ()))
    batches = [OrderedBatch(a.time + 1000, "node-1",
                            (a.contract_entry(template_text("cold-chain-2-8")),
                             *shipment(a, "SHP-1", "truck-1", ["cold-chain-2-8"])), ())]
    for n in range(4):
        batches.append(OrderedBatch(a.time + 2000 + n * 1000, "node-1", (), tuple(
            truck.message(e) for e in truck.temps(T0 + n * 6 * MIN, [9.0] * 6))))
    for batch in batches:
        ra, rb = a.chain.apply(batch), b.apply(batch)
        assert ra.block_hash == rb.block_hash
        assert [e.to_map() for e in ra.events] == [e.to_map() for e in rb.events]
    assert a.chain.tip_hash == b.tip_hash
    assert a.store.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] >= 1
    b_store.close()


def test_bad_contract_is_refused_with_line_and_column(tmp_path: Path) -> None:
    cut = ChainUnderTest(tmp_path / "a.sqlite", [])
    text = "name: broken\nversion: 1\nrules:\n  - id: r\n    on: {reading: temp}\n" \
           "    when: 'reading.d.c > '\n    emit: x\n"
    entry = cut.pki.signed({"type": "contract_registered", "name": "broken", "version": 1,
                            "doc": text, "effective": None})
    result = cut.apply(admin=[entry])
    outcome = result.admin[0]
    assert outcome.status == "rejected" and outcome.reason == "bad_contract"
    assert "broken v1:6:26:" in outcome.detail, outcome.detail  # source:line:column
    row = cut.store.conn.execute("SELECT reason FROM quarantine").fetchone()
    assert row[0] == "bad_contract"


def test_duplicate_registration_and_unknown_shipment_are_refused(cold) -> None:
    cut, _ = cold
    again = cut.contract_entry(template_text("cold-chain-2-8"))
    orphan = cut.pki.signed({"type": "shipment_state", "shipment": "NOPE", "state": "delivered"})
    result = cut.apply(admin=[again, orphan])
    assert [(a.status, a.reason) for a in result.admin] == [
        ("rejected", "contract_conflict"), ("rejected", "unknown_shipment")]


def test_heartbeat_block_fires_a_deadline_in_a_quiet_fleet(tmp_path: Path) -> None:
    truck = Device("truck-1")
    cut = ChainUnderTest(tmp_path / "a.sqlite", [truck])
    deadline = cut.time + 10_000
    cut.apply(admin=[cut.contract_entry(template_text("late-delivery")),
                     *shipment(cut, "SHP-9", "truck-1", ["late-delivery"], deadline=deadline)])
    quiet = cut.chain.apply(OrderedBatch(deadline - 1, "node-1", heartbeat=True))
    assert quiet.header is not None and quiet.header.count == 0 and quiet.events == []
    late = cut.chain.apply(OrderedBatch(deadline + 1, "node-1", heartbeat=True))
    assert [e.event for e in late.events] == ["late_delivery"]
    assert verify_store(cut.store.path).ok


def test_audit_entries_are_appended_and_checked(tmp_path: Path) -> None:
    cut = ChainUnderTest(tmp_path / "a.sqlite", [])
    record = {"who": "alice", "kind": "partner", "org": "acme-pharma", "method": "GET",
              "path": "/v1/shipments/SHP-1", "query": "", "status": 200, "at": T0}
    result = cut.chain.apply(OrderedBatch(cut.time + 1, "node-1",
                                          audit=(audit_entry(record),)))
    assert result.header is not None and result.header.count == 1
    doc = json.loads(cut.store.conn.execute("SELECT doc FROM audit").fetchone()[0])
    assert doc["who"] == "alice" and doc["path"] == "/v1/shipments/SHP-1"
    assert verify_store(cut.store.path).ok


def test_verify_names_a_tampered_events_or_shipments_row(cold) -> None:
    cut, truck = cold
    cut.apply([truck.message(e) for e in truck.temps(T0, [9.0] * 17)])
    conn = cut.store.conn
    with conn:
        conn.execute("UPDATE events SET state = 'in_transit'")
        conn.execute("UPDATE shipments SET state = 'delivered' WHERE id = 'SHP-1'")
    report = verify_store(cut.store.path)
    named = {p.where for p in report.problems}
    assert any(w.startswith("events row") for w in named), named
    assert "shipments row 'SHP-1'" in named


def test_pallet_scans_load_and_unload_units_on_the_ledger(tmp_path: Path) -> None:
    truck, depot = Device("truck-1"), Device("depot-reader-1")
    cut = ChainUnderTest(tmp_path / "u.sqlite", [truck, depot])
    admin = [cut.contract_entry(template_text("unit-tracking")),
             *shipment(cut, "SHP-1", "truck-1", ["unit-tracking"])]
    assert [a.status for a in cut.apply(admin=admin).admin] == ["accepted"] * 3
    pallet = "urn:epc:id:sscc:0614141.1234567890"
    loaded = cut.apply([truck.message(truck.at(T0, "rfid", {"epc": pallet, "rssi": -40}))])
    assert [e.event for e in loaded.events] == ["unit_loaded"]
    unloaded = cut.apply([depot.message(depot.at(T0 + 90 * MIN, "rfid", {"epc": pallet}))])
    assert [e.event for e in unloaded.events] == ["unit_unloaded"]
    doc = json.loads(cut.store.conn.execute(
        "SELECT doc FROM shipments WHERE id = 'SHP-1'").fetchone()[0])
    assert doc["on_board"] == []
    assert [(m["action"], m["reader"], m["t"]) for m in doc["unit_moves"]] == [
        ("loaded", "truck-1", T0), ("unloaded", "depot-reader-1", T0 + 90 * MIN)]
    event_entries = [r[0] for r in cut.store.conn.execute("SELECT idx FROM events ORDER BY idx")]
    assert [m["entry"] for m in doc["unit_moves"]] == event_entries
    assert doc["history"] == [{"at": doc["created"], "state": "created",
                               "cause": doc["entries"][0]}]
    assert verify_store(cut.store.path).ok           # the replay derives the same moves
    path = cut.store.path
    cut.store.close()
    store = Store(path)
    try:
        book = Chain(store, "main", "node-1", cut.node).world.book
        assert [m.action for m in book.get("SHP-1").unit_moves] == ["loaded", "unloaded"]
    finally:
        store.close()
