"""The shipment endpoints (ledger_node.shipments_api): documents, history with cursor pages,
EPCIS export, proof bundles that `trustfleet verify-bundle` accepts, contract events and the
audit log; the real app served by uvicorn over a real store (tests.fleet.shipment_store)."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger_node.api import create_app
from ledger_node.bundle_verify import verify_bundle
from tests.fleet import T0, ShipmentStore, api_token, cli, serve_api, shipment_store

ACME_READINGS = [4, 7, 10, 11, 13, 14]
"""truck-1's four readings (two overlapping windows, merged) and truck-2's from T0+3."""


@dataclass
class Api:
    url: str
    store: ShipmentStore
    operator: str
    acme: str

    def get(self, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        token = token or self.operator
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {token}"},
                         timeout=30, **kw)

    def json(self, path: str, token: str | None = None) -> Any:
        got = self.get(path, token)
        assert got.status_code == 200, got.text
        return got.json()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    folder = tmp_path_factory.mktemp("node")
    store = shipment_store(folder)
    with store.tc.store.conn as c:  # the audit log the node keeps on the ledger
        c.executemany("INSERT INTO audit VALUES (?, ?, ?, ?)",
                      [(100 + i, 4, T0 + 5000 + i, json.dumps(
                          {"who": "alice@acme", "kind": "partner", "org": "acme",
                           "method": "GET", "path": f"/v1/shipments/{i}", "query": "",
                           "status": 404, "at": T0 + i})) for i in range(3)])
    store.tc.store.close()
    operator = api_token(folder, "operator")
    acme = api_token(folder, "partner", "acme")
    with serve_api(create_app(store.db)) as url:
        yield Api(url, store, operator, acme)


def entries(page: dict[str, Any]) -> list[int]:
    return [i["entry"] for i in page["items"]]


def test_a_shipment_document_with_its_heights(api: Api) -> None:
    doc = api.json("/v1/shipments/SHP-ACME")
    assert doc["id"] == "SHP-ACME" and doc["state"] == "in_transit"
    assert doc["parties"] == [{"org": "acme", "role": "shipper"},
                              {"org": "insureco", "role": "insurer"}]
    assert doc["entries"] == [1] and doc["created_height"] == 0
    assert doc["assignments"][2] == {"dev": "truck-2", "start": T0 + 3, "end": None}
    got = api.get("/v1/shipments/SHP-NONE")
    assert got.status_code == 404 and got.json() == {"detail": "no shipment 'SHP-NONE'"}


def test_shipment_list_pages_and_filters(api: Api) -> None:
    first = api.json("/v1/shipments?limit=2")
    assert [s["id"] for s in first["items"]] == ["SHP-ACME", "SHP-DONE"]
    assert set(first["items"][0]) == {"id", "state", "parties", "custodian", "deadline",
                                      "created", "created_height", "updated_height"}
    rest = api.json(f"/v1/shipments?limit=2&cursor={first['next_cursor']}")
    assert [s["id"] for s in rest["items"]] == ["SHP-GLOBEX"] and rest["next_cursor"] is None
    assert [s["id"] for s in api.json("/v1/shipments?state=delivered")["items"]] == ["SHP-DONE"]
    assert api.json("/v1/shipments?state=lost")["items"] == []


def test_history_readings_are_those_in_the_assignment_windows(api: Api) -> None:
    page = api.json("/v1/shipments/SHP-ACME/history")
    assert entries(page) == ACME_READINGS and page["next_cursor"] is None
    assert page["shipment"] == "SHP-ACME" and page["kind"] == "readings"
    first = page["items"][0]
    assert set(first) == {"entry", "device", "seq", "device_time", "time_source", "kind",
                          "values", "flags", "block", "ledger_time", "hash"}
    assert (first["device"], first["seq"], first["device_time"], first["block"]) == (
        "truck-1", 1, T0 + 1, 1)
    with sqlite3.connect(api.store.db) as conn:
        data = conn.execute("SELECT data FROM entries WHERE idx = 4").fetchone()[0]
    import hashlib

    assert first["hash"] == hashlib.sha256(data).hexdigest()
    assert entries(api.json(f"/v1/shipments/SHP-ACME/history?from={T0 + 3}&to={T0 + 4}")) == \
        [10, 11]
    assert entries(api.json("/v1/shipments/SHP-GLOBEX/history")) == [6, 9, 12, 15]
    assert api.json("/v1/shipments/SHP-DONE/history")["items"] == []


def test_history_pages_follow_the_cursor_to_the_end(api: Api) -> None:
    seen: list[int] = []
    cursor = None
    for _ in range(10):
        query = "limit=4" + (f"&cursor={cursor}" if cursor else "")
        page = api.json(f"/v1/shipments/SHP-ACME/history?{query}")
        seen += entries(page)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ACME_READINGS
    one = api.json("/v1/shipments/SHP-ACME/history?limit=6")
    assert one["next_cursor"] is None  # a full last page says there is no more


def test_history_events_and_custody(api: Api) -> None:
    events = api.json("/v1/shipments/SHP-ACME/history?kind=events")
    assert entries(events) == [2, 3]
    excursion = events["items"][1]
    assert excursion == {"entry": 3, "block": 0, "ledger_time": T0 + 5000,
                         "contract": "cold-chain", "version": 1,
                         "event": "temperature_excursion", "shipment": "SHP-ACME",
                         "device": "truck-1", "at": T0 + 3, "state": "out_of_compliance",
                         "cause": [4], "data": {"note": "event at 3"}}
    assert entries(api.json("/v1/shipments/SHP-ACME/history?kind=custody")) == [2]
    assert entries(api.json(f"/v1/shipments/SHP-ACME/history?kind=events&from={T0 + 3}")) == [3]


@pytest.mark.parametrize("cursor", [
    "abc", "!!!!", "=" * 8, base64.urlsafe_b64encode(b"readings:abc").decode().rstrip("="),
    base64.urlsafe_b64encode(b"readings:99999999999999999999").decode().rstrip("="),
    base64.urlsafe_b64encode(b"readings:-1").decode().rstrip("="),
    base64.urlsafe_b64encode(b"\xff\xfe:1").decode().rstrip("="),
    "A" * 257,
])
def test_a_cursor_this_node_did_not_hand_out_is_refused(api: Api, cursor: str) -> None:
    got = api.get("/v1/shipments/SHP-ACME/history", params={"cursor": cursor})
    assert got.status_code in (400, 422), got.text
    assert got.status_code == 422 or "cursor" in got.json()["detail"]


def test_a_cursor_belongs_to_its_list(api: Api) -> None:
    readings = api.json("/v1/shipments/SHP-ACME/history?limit=1")["next_cursor"]
    events = api.get(f"/v1/shipments/SHP-ACME/history?kind=events&cursor={readings}")
    assert events.status_code == 400 and "not a cursor of this list" in events.json()["detail"]
    assert api.get(f"/v1/events?cursor={readings}").status_code == 400
    assert api.get(f"/v1/shipments?cursor={readings}").status_code == 400


def test_epcis_export_holds_the_events_and_the_readings(api: Api) -> None:
    got = api.get("/v1/shipments/SHP-ACME/epcis")
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == "application/ld+json"
    doc = got.json()
    assert doc["type"] == "EPCISDocument" and doc["tf:shipment"] == "SHP-ACME"
    listed = doc["epcisBody"]["eventList"]
    assert sorted(e["tf:entry"] for e in listed) == sorted([2, 3, *ACME_READINGS])
    assert all("sensorElementList" in e for e in listed if e["tf:entry"] in ACME_READINGS)
    narrow = api.get(f"/v1/shipments/SHP-ACME/epcis?from={T0 + 4}").json()
    assert sorted(e["tf:entry"] for e in narrow["epcisBody"]["eventList"]) == [2, 3, 13, 14]


def test_shipment_proof_of_its_readings_verifies_offline(api: Api, tmp_path: Path) -> None:
    got = api.get("/v1/shipments/SHP-ACME/proof?parts=readings", api.acme)
    assert got.status_code == 200, got.text
    bundle = got.json()
    # genesis, the enrolments of truck-1 and truck-2 (their operator history), the readings
    assert [e["index"] for e in bundle["entries"]] == [0, 1, 2, *ACME_READINGS]
    report = verify_bundle(got.content, pinned_ca=api.store.ca_cert)
    assert report.ok, report.problems
    assert [p.index for p in report.readings["truck-1"]] == [4, 7, 10, 13]
    assert [p.index for p in report.readings["truck-2"]] == [11, 14]
    path = tmp_path / "bundle.json"
    path.write_bytes(got.content)
    (tmp_path / "ca.der").write_bytes(api.store.ca_cert)
    checked = subprocess.run(cli("verify-bundle", str(path), "--ca", str(tmp_path / "ca.der")),
                             capture_output=True, text=True, timeout=120, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_shipment_proof_with_every_part_against_an_older_head(api: Api) -> None:
    readings = api.json("/v1/shipments/SHP-ACME/proof?parts=readings")
    assert [e["index"] for e in readings["entries"]] == [0, 1, 2, *ACME_READINGS]
    full = api.json("/v1/shipments/SHP-ACME/proof?parts=readings,events,operator")
    assert [e["index"] for e in full["entries"]] == [0, 1, 2, 3, *ACME_READINGS]
    assert api.json("/v1/shipments/SHP-ACME/proof") == full  # every part by default
    assert verify_bundle(json.dumps(full).encode()).ok  # the stand-in events are enrolments
    old = api.json("/v1/shipments/SHP-ACME/proof?parts=readings&height=1")
    assert [e["index"] for e in old["entries"]] == [0, 1, 4]
    ranged = api.json(f"/v1/shipments/SHP-ACME/proof?parts=readings&from={T0 + 3}&to={T0 + 4}")
    assert ranged["subject"] == {"device": None, "from": T0 + 3, "to": T0 + 4}
    assert [e["index"] for e in ranged["entries"]] == [0, 1, 2, 10, 11]
    report = verify_bundle(json.dumps(ranged).encode(), pinned_ca=api.store.ca_cert)
    assert report.ok, report.problems


@pytest.mark.parametrize("query, status, detail", [
    ("parts=bogus", 422, None),
    ("parts=readings,", 422, None),
    ("height=9", 404, "no block at height 9"),
    ("height=-1", 422, None),
    (f"parts=readings&from={T0 + 100}", 404, "has no entries"),
])
def test_shipment_proof_refusals(api: Api, query: str, status: int, detail: str | None) -> None:
    got = api.get(f"/v1/shipments/SHP-ACME/proof?{query}")
    assert got.status_code == status, got.text
    if detail is not None:
        assert detail in got.json()["detail"]


def test_a_shipment_with_nothing_to_prove_is_404(api: Api) -> None:
    got = api.get("/v1/shipments/SHP-DONE/proof")
    assert got.status_code == 404 and "has no entries" in got.json()["detail"]


def test_events_list_filters_and_pages(api: Api) -> None:
    assert entries(api.json("/v1/events")) == [2, 3, 5]
    assert entries(api.json("/v1/events?shipment=SHP-ACME")) == [2, 3]
    assert entries(api.json("/v1/events?event=door_opened")) == [5]
    assert entries(api.json(f"/v1/events?since={T0 + 5000}")) == [2, 3, 5]
    assert entries(api.json(f"/v1/events?since={T0 + 5001}")) == []
    first = api.json("/v1/events?limit=2")
    assert entries(first) == [2, 3]
    assert entries(api.json(f"/v1/events?limit=2&cursor={first['next_cursor']}")) == [5]


def test_audit_log_reads_the_ledgers_audit_entries(api: Api) -> None:
    page = api.json("/v1/audit?limit=2")
    assert [i["entry"] for i in page["items"]] == [100, 101]
    assert page["items"][0]["record"]["who"] == "alice@acme"
    assert page["items"][0]["ledger_time"] == T0 + 5000 and page["items"][0]["block"] == 4
    rest = api.json(f"/v1/audit?cursor={page['next_cursor']}")
    assert [i["entry"] for i in rest["items"]] == [102] and rest["next_cursor"] is None
    assert [i["entry"] for i in api.json(f"/v1/audit?since={T0 + 5002}")["items"]] == [102]
    assert api.get("/v1/audit?cursor=bad!").status_code == 400
