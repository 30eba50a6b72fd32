"""Who may read what through the API (ledger_node.auth, ledger_node.api), and the audit
callback: the real app served by uvicorn on a loopback port, over a real store with shipments
(tests.fleet.shipment_store) and a real token store."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger_node.api import create_app
from ledger_node.auth import AuditRecord, wall_clock_ms
from ledger_node.bundle_verify import verify_bundle
from tests.fleet import ShipmentStore, api_token, serve_api, shipment_store


@dataclass
class Api:
    url: str
    store: ShipmentStore
    tokens: dict[str, str]
    audit: list[AuditRecord]

    def get(self, path: str, who: str | None = None, headers: dict[str, str] | None = None,
            **kw: Any) -> httpx.Response:
        headers = dict(headers or {})
        if who:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        return httpx.get(self.url + path, headers=headers, timeout=30, **kw)


def tokens_for(folder: Path) -> dict[str, str]:
    return {"operator": api_token(folder, "operator", name="ops"),
            "auditor": api_token(folder, "auditor", name="aud"),
            "acme": api_token(folder, "partner", "acme", name="alice@acme"),
            "globex": api_token(folder, "partner", "globex", name="gus@globex"),
            "insureco": api_token(folder, "partner", "insureco", name="ian@insureco"),
            "nobody": api_token(folder, "partner", "nobody", name="nina@nobody")}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    folder = tmp_path_factory.mktemp("node")
    store = shipment_store(folder)
    store.tc.store.close()
    tokens = tokens_for(folder)
    records: list[AuditRecord] = []
    with serve_api(create_app(store.db, audit=records.append)) as url:
        yield Api(url, store, tokens, records)


PUBLIC = ["/healthz", "/healthz?probe=1", "/v1/chain/head", "/v1/blocks/0",
          "/v1/chain/consistency?from=0", "/openapi.json", "/docs", "/", "/static/api.js"]
PROTECTED = ["/v1/whoami", "/v1/shipments", "/v1/shipments/SHP-ACME",
             "/v1/shipments/SHP-ACME/history", "/v1/shipments/SHP-ACME/proof", "/v1/events",
             "/v1/entries/4", "/v1/entries/4/proof", "/v1/devices",
             "/v1/devices/truck-1/readings", "/v1/quarantine", "/v1/quarantine/1",
             "/v1/node/status", "/v1/audit", "/v1/events/stream"]
STAFF_ONLY = ["/v1/devices", "/v1/devices/truck-1/readings", "/v1/quarantine",
              "/v1/node/status", "/v1/audit"]


@pytest.mark.parametrize("path", PUBLIC)
def test_public_endpoints_need_no_token(api: Api, path: str) -> None:
    assert api.get(path).status_code == 200


def test_operator_entries_are_submitted_without_a_token(api: Api) -> None:
    got = httpx.post(api.url + "/v1/admin/entries?wait=0", content=b"\xd2\x84", timeout=30)
    assert got.status_code == 503  # no node attached to this app: not a 401
    assert "not attached to a running node" in got.json()["detail"]


@pytest.mark.parametrize("path", PROTECTED)
def test_protected_endpoints_answer_401_without_a_token(api: Api, path: str) -> None:
    got = api.get(path)
    assert got.status_code == 401
    assert got.headers["www-authenticate"] == 'Bearer realm="trustfleet"'
    assert "Authorization: Bearer" in got.json()["detail"]


@pytest.mark.parametrize("header", [
    "Bearer tf_" + "A" * 43,              # well formed, unknown
    "Bearer tf_short", "Bearer", "Basic YWxpY2U6c2VjcmV0", "tf_" + "A" * 43,
    "Bearer ' OR 1=1 --", "Bearer " + "x" * 8000,
])
def test_a_bad_token_is_401_invalid_token(api: Api, header: str) -> None:
    got = httpx.get(api.url + "/v1/shipments", headers={"Authorization": header}, timeout=30)
    assert got.status_code == 401
    assert got.headers["www-authenticate"] == 'Bearer realm="trustfleet", error="invalid_token"'
    assert got.json() == {"detail": "the API token is malformed, unknown or revoked"}


@pytest.mark.parametrize("path", STAFF_ONLY)
def test_devices_quarantine_status_and_audit_are_staff_only(api: Api, path: str) -> None:
    got = api.get(path, "acme")
    assert got.status_code == 403
    assert "a partner token may not use this endpoint" in got.json()["detail"]
    assert api.get(path, "operator").status_code in (200, 404)
    assert api.get(path, "auditor").status_code in (200, 404)


def test_whoami_names_the_principal(api: Api) -> None:
    assert api.get("/v1/whoami", "acme").json() == {"name": "alice@acme", "kind": "partner",
                                                    "org": "acme"}
    assert api.get("/v1/whoami", "auditor").json() == {"name": "aud", "kind": "auditor",
                                                       "org": None}


@pytest.mark.parametrize("who, ids", [
    ("operator", ["SHP-ACME", "SHP-DONE", "SHP-GLOBEX"]),
    ("auditor", ["SHP-ACME", "SHP-DONE", "SHP-GLOBEX"]),
    ("acme", ["SHP-ACME", "SHP-DONE"]),
    ("insureco", ["SHP-ACME"]),
    ("globex", ["SHP-GLOBEX"]),
    ("nobody", []),
])
def test_each_principal_lists_the_shipments_it_may_see(api: Api, who: str,
                                                       ids: list[str]) -> None:
    assert [s["id"] for s in api.get("/v1/shipments", who).json()["items"]] == ids


def test_partners_see_only_their_shipments_events(api: Api) -> None:
    def events(who: str) -> list[int]:
        return [e["entry"] for e in api.get("/v1/events", who).json()["items"]]

    assert events("operator") == [2, 3, 5] and events("auditor") == [2, 3, 5]
    assert events("acme") == [2, 3] and events("globex") == [5] and events("nobody") == []
    assert api.get("/v1/events?shipment=SHP-GLOBEX", "acme").json()["items"] == []


SUBPATHS = ["", "/history", "/history?kind=events", "/history?kind=custody", "/epcis",
            "/proof", "/proof?parts=readings"]


@pytest.mark.parametrize("sub", SUBPATHS)
def test_another_partys_shipment_is_exactly_a_missing_one(api: Api, tmp_path: Path,
                                                          sub: str) -> None:
    """The same status, body and headers as after the shipment is deleted from the store."""
    assert api.get("/v1/shipments/SHP-GLOBEX" + sub, "globex").status_code == 200
    foreign = api.get("/v1/shipments/SHP-GLOBEX" + sub, "acme")
    assert foreign.status_code == 404
    assert foreign.json() == {"detail": "no shipment 'SHP-GLOBEX'"}
    copy = tmp_path / "copy"
    shutil.copytree(api.store.folder, copy)
    with sqlite3.connect(copy / "ledger.sqlite") as conn:
        for table, column in (("shipments", "id"), ("shipment_parties", "shipment"),
                              ("shipment_devices", "shipment"), ("events", "shipment")):
            conn.execute(f"DELETE FROM {table} WHERE {column} = 'SHP-GLOBEX'")
    with serve_api(create_app(copy / "ledger.sqlite")) as url:
        missing = httpx.get(url + "/v1/shipments/SHP-GLOBEX" + sub, timeout=30,
                            headers={"Authorization": f"Bearer {api.tokens['acme']}"})
        gone_for_owner = httpx.get(url + "/v1/shipments/SHP-GLOBEX" + sub, timeout=30,
                                   headers={"Authorization": f"Bearer {api.tokens['globex']}"})
    assert (missing.status_code, missing.content) == (foreign.status_code, foreign.content)
    assert gone_for_owner.content == foreign.content
    drop = {"date", "server"}
    assert {k: v for k, v in missing.headers.items() if k not in drop} == \
        {k: v for k, v in foreign.headers.items() if k not in drop}


# Entries: 1 SHP-ACME's operator entry, 2 and 3 its events, 5 SHP-GLOBEX's event; readings:
# truck-1 = 4, 7, 10, 13 (t = T0+1..4, assigned to SHP-ACME over [T0+1, T0+5)); truck-2 = 5,
# 8, 11, 14 (SHP-ACME from T0+3: 11 and 14); truck-3 = 6, 9, 12, 15 (SHP-GLOBEX).
@pytest.mark.parametrize("who, readable", [
    ("acme", {1, 2, 3, 4, 7, 10, 13, 11, 14}),
    ("insureco", {1, 2, 3, 4, 7, 10, 13, 11, 14}),
    ("globex", {5, 6, 9, 12, 15}),
    ("nobody", set()),
    ("operator", set(range(16))),
    ("auditor", set(range(16))),
])
def test_a_partner_reads_only_its_shipments_entries(api: Api, who: str,
                                                    readable: set[int]) -> None:
    for index in [*range(16), 999]:
        got = api.get(f"/v1/entries/{index}", who)
        if index in readable:
            assert got.status_code == 200 and got.json()["index"] == index
        elif who in ("operator", "auditor"):
            assert got.status_code == 404 and "the log has 16 entries" in got.json()["detail"]
        else:
            assert got.status_code == 404, (who, index)
            assert got.json() == {"detail": f"no entry {index} among the entries of your "
                                            f"shipments"}
            proof = api.get(f"/v1/entries/{index}/proof", who)
            assert (proof.status_code, proof.content) == (404, got.content)


def test_a_partners_entry_proof_verifies_offline(api: Api) -> None:
    got = api.get("/v1/entries/11/proof", "acme")
    assert got.status_code == 200
    report = verify_bundle(got.content, pinned_ca=api.store.ca_cert)
    assert report.ok, report.problems
    assert [p.index for p in report.readings["truck-2"]] == [11]


def test_a_foreign_entry_answers_like_a_missing_one(api: Api, tmp_path: Path) -> None:
    foreign = api.get("/v1/entries/6", "acme")
    copy = tmp_path / "copy"
    shutil.copytree(api.store.folder, copy)
    with sqlite3.connect(copy / "ledger.sqlite") as conn:
        conn.execute("DELETE FROM readings WHERE idx = 6")
        conn.execute("DELETE FROM entries WHERE idx = 6")
    with serve_api(create_app(copy / "ledger.sqlite")) as url:
        missing = httpx.get(url + "/v1/entries/6", timeout=30,
                            headers={"Authorization": f"Bearer {api.tokens['acme']}"})
    assert (missing.status_code, missing.content) == (foreign.status_code, foreign.content)


def test_a_revoked_token_is_refused_at_the_next_request(api: Api) -> None:
    from ledger_node.auth import TokenBook

    token = api_token(api.store.folder, "partner", "acme", name="temp@acme")
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(api.url + "/v1/shipments", headers=headers).status_code == 200
    TokenBook(api.store.folder / "tokens.db").revoke("temp@acme", now_ms=wall_clock_ms())
    got = httpx.get(api.url + "/v1/shipments", headers=headers)
    assert got.status_code == 401 and 'error="invalid_token"' in got.headers["www-authenticate"]
    assert httpx.get(api.url + "/v1/entries/4", headers=headers).status_code == 401


def test_the_query_token_is_for_the_event_stream_only(api: Api) -> None:
    got = httpx.get(api.url + "/v1/shipments", params={"access_token": api.tokens["operator"]})
    assert got.status_code == 422
    assert "unknown query parameter(s) 'access_token'" in got.json()["detail"]
    assert api.tokens["operator"] not in got.text


# -- audit ----------------------------------------------------------------------------------------

def test_a_partners_requests_are_audited_with_their_outcome(api: Api) -> None:
    api.audit.clear()
    before = wall_clock_ms()
    api.get("/v1/shipments/SHP-ACME/history?kind=events&limit=5", "acme")
    api.get("/v1/shipments/SHP-GLOBEX", "acme")
    api.get("/v1/devices", "acme")
    api.get("/v1/chain/head", "acme")  # public, but the token says who asks
    after = wall_clock_ms()
    assert [(r["path"], r["query"], r["status"]) for r in api.audit] == [
        ("/v1/shipments/SHP-ACME/history", "kind=events&limit=5", 200),
        ("/v1/shipments/SHP-GLOBEX", "", 404),
        ("/v1/devices", "", 403),
        ("/v1/chain/head", "", 200)]
    for r in api.audit:
        assert set(r) == {"who", "kind", "org", "method", "path", "query", "status", "at"}
        assert (r["who"], r["kind"], r["org"], r["method"]) == ("alice@acme", "partner",
                                                                "acme", "GET")
        assert before <= r["at"] <= after


def test_auditors_are_audited_operators_and_anonymous_callers_are_not(api: Api) -> None:
    api.audit.clear()
    api.get("/v1/quarantine?limit=1", "auditor")
    api.get("/v1/quarantine?limit=1", "operator")
    api.get("/v1/shipments")  # no token: 401, nobody to name
    httpx.get(api.url + "/v1/shipments", headers={"Authorization": "Bearer tf_" + "B" * 43})
    assert [(r["who"], r["kind"], r["org"], r["status"]) for r in api.audit] == [
        ("aud", "auditor", None, 200)]


def test_audit_records_are_bounded_and_never_hold_a_token(api: Api) -> None:
    api.audit.clear()
    long_id = "x" * 5000
    api.get(f"/v1/shipments/{long_id}", "acme")
    api.get("/v1/shipments?" + "a" * 3000 + "=1", "acme")
    api.get("/v1/events/stream", params={"access_token": api.tokens["acme"]},
            headers={"Last-Event-ID": "nope"})
    long_path, long_query, stream = api.audit
    assert long_path["status"] == 422 and len(long_path["path"]) < 1100
    assert long_path["path"].endswith("…(+3990 characters)")
    assert long_query["status"] == 422 and len(long_query["query"]) < 1100
    assert stream["path"] == "/v1/events/stream" and stream["status"] == 400
    assert stream["query"] == "access_token=REDACTED"
    assert all(api.tokens["acme"] not in str(r) for r in api.audit)


def test_a_failing_audit_callback_does_not_break_the_answer(tmp_path: Path) -> None:
    store = shipment_store(tmp_path)
    store.tc.store.close()
    token = api_token(tmp_path, "partner", "acme")

    def broken(record: AuditRecord) -> None:
        raise RuntimeError("audit queue full")

    with serve_api(create_app(store.db, audit=broken)) as url:
        got = httpx.get(url + "/v1/shipments", headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 200 and len(got.json()["items"]) == 2


def test_a_damaged_token_store_is_503_not_500(tmp_path: Path) -> None:
    store = shipment_store(tmp_path)
    store.tc.store.close()
    (tmp_path / "tokens.db").write_bytes(b"not sqlite" * 500)
    with serve_api(create_app(store.db)) as url:
        got = httpx.get(url + "/v1/shipments", headers={"Authorization": "Bearer tf_" + "C" * 43})
        public = httpx.get(url + "/v1/chain/head")
    assert got.status_code == 503 and "cannot check API tokens" in got.json()["detail"]
    assert public.status_code == 200
