"""The whole API fuzzed from its own OpenAPI document (schemathesis), as an operator and as a
partner, against the real app served by uvicorn on a loopback port over a real store with
shipments: no 500s, and every answer conforms to the document (status codes, content types,
bodies). Then explicit hostile requests: unknown query fields, wrong types, absurd ranges, huge
limits, injection strings and oversized or NUL-laden ids all get a clear 4xx.

The event stream is left out of the generated cases (it never ends by design); its refusals
are tested here and its behaviour in test_api_stream.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from ledger_node.api import create_app
from ledger_node.auth import hash_token, new_token, tokens_path
from tests.fleet import ShipmentStore, api_token, serve_api, shipment_store

EXAMPLES = 30


@dataclass
class FuzzNode:
    url: str
    store: ShipmentStore
    operator: str
    partner: str


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzNode]:
    folder = tmp_path_factory.mktemp("node")
    store = shipment_store(folder)
    store.tc.store.close()
    operator = install_token(folder, TOKENS["operator"], "fuzz-operator", "operator")
    partner = install_token(folder, TOKENS["partner"], "fuzz@acme", "partner", "acme")
    with serve_api(create_app(store.db, submit_admin=refuse_entry)) as url:
        yield FuzzNode(url, store, operator, partner)


def install_token(folder: Path, token: str, name: str, kind: str, org: str | None = None) -> str:
    """Put a token drawn beforehand into the node's store, as TokenBook.create stores one."""
    api_token(folder, "auditor", name=f"{name}-init")  # creates tokens.db with its schema
    with sqlite3.connect(tokens_path(folder / "ledger.sqlite")) as conn:
        conn.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, 0, NULL)",
                     (name, kind, org, hash_token(token)))
    return token


def refuse_entry(entry: bytes) -> Future[Any]:
    """Stands in for the node's apply thread: what it answers to bytes no operator signed."""
    done: Future[Any] = Future()
    done.set_result(SimpleNamespace(status="rejected", kind="unknown", device=None,
                                    reason="bad_operator_entry",
                                    detail=f"{len(entry)} bytes that are not an operator entry",
                                    height=None))
    return done


# The OpenAPI document, built at import so that schemathesis can parametrize the tests (its
# fixture-loaded schemas do not work with this pytest); test_the_fuzzed_document_is_the_served_one
# checks that it is the very document the server under test serves.
SPEC = create_app(Path("/nonexistent/ledger.sqlite")).openapi()
# A well-typed request can still be refused for what the schema cannot say: a cursor this node
# did not hand out (400), `from` after `to` or a head older than the entry (422). Nothing else
# is acceptable for a schema-valid request; a 5xx never is (not_a_server_error).
CONFIG = schemathesis.Config.from_dict({"checks": {"positive_data_acceptance": {
    "expected-statuses": ["2xx", "400", "401", "403", "404", "422"]}}})
schemathesis.serializer.alias("application/cose", "application/octet-stream")  # entry bytes
TOKENS = {"operator": new_token(), "partner": new_token()}
"""Drawn at import, because schemathesis asks its auth providers while it collects the tests;
the fixture puts them in the node's token store (install_token)."""


def fuzz_schema(principal: str) -> schemathesis.BaseSchema:
    """The document, with the principal's token as its Bearer auth: schemathesis knows the
    credentials are given, so it can also check that requests without them are refused."""
    schema = schemathesis.openapi.from_dict(SPEC, config=CONFIG)

    @schema.auth(refresh_interval=None)
    class Bearer:
        def get(self, case: schemathesis.Case, ctx: schemathesis.AuthContext) -> str:
            return TOKENS[principal]

        def set(self, case: schemathesis.Case, data: str,
                ctx: schemathesis.AuthContext) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    return schema.exclude(path="/v1/events/stream")


operator_schema = fuzz_schema("operator")
partner_schema = fuzz_schema("partner")


def test_the_fuzzed_document_is_the_served_one(fuzz_node: FuzzNode) -> None:
    served = httpx.get(fuzz_node.url + "/openapi.json", timeout=30)
    assert served.status_code == 200 and served.json() == SPEC
    assert len(SPEC["paths"]) >= 20 and "/v1/shipments/{shipment_id}/history" in SPEC["paths"]
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.function_scoped_fixture])


@operator_schema.parametrize()
@FUZZ
def test_fuzz_as_operator(case: schemathesis.Case, fuzz_node: FuzzNode) -> None:
    case.call_and_validate(base_url=fuzz_node.url)


@partner_schema.parametrize()
@FUZZ
def test_fuzz_as_partner(case: schemathesis.Case, fuzz_node: FuzzNode) -> None:
    case.call_and_validate(base_url=fuzz_node.url)


# -- explicit hostile input -----------------------------------------------------------------------

HOSTILE_IDS = ["' OR 1=1 --", "SHP-ACME' --", '"; DROP TABLE shipments; --', "../SHP-ACME",
               "..%2F..%2Fetc%2Fpasswd", "%00", "SHP-ACME%00", "x" * 10_000, "%FF%FE",
               "\u202eEMCA-PHS", "SHP-ACME\n", "*", "%", "_"]


def get(node: FuzzNode, path: str, token: str | None = None, **kw: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token or node.operator}"}
    return httpx.get(node.url + path, headers=headers, timeout=30, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("raw_id", HOSTILE_IDS)
@pytest.mark.parametrize("sub", ["", "/history", "/epcis", "/proof"])
def test_hostile_shipment_ids_get_a_clear_4xx(fuzz_node: FuzzNode, raw_id: str,
                                              sub: str) -> None:
    path = "/v1/shipments/" + (raw_id if "%" in raw_id else quote(raw_id, safe="")) + sub
    for token in (fuzz_node.operator, fuzz_node.partner):
        got = get(fuzz_node, path, token)
        assert got.status_code in (404, 422), (path, got.status_code, got.text[:300])
        assert "detail" in got.json()
    # and nothing leaked or changed: the real shipments are all still there
    assert len(get(fuzz_node, "/v1/shipments").json()["items"]) == 3


@pytest.mark.parametrize("query", [
    "limit=0", "limit=-1", "limit=1001", "limit=99999999999999999999999", "limit=abc",
    "limit=1e3", "limit=", "limit=1&limit=2000", "state=" + "s" * 200, "state=%00",
    "cursor=" + "A" * 300, "cursor=%00%00%00%00", "cursor=' OR 1=1 --",
    "unknown=1", "LIMIT=5", "limit=5&extra=%00",
])
def test_bad_list_queries_get_a_clear_4xx(fuzz_node: FuzzNode, query: str) -> None:
    got = get(fuzz_node, f"/v1/shipments?{query}")
    assert 400 <= got.status_code < 500, (query, got.status_code, got.text[:300])
    assert got.status_code in (400, 422)
    assert "detail" in got.json()


@pytest.mark.parametrize("path", [
    "/v1/shipments/SHP-ACME/history?kind=everything",
    "/v1/shipments/SHP-ACME/history?kind=",
    "/v1/shipments/SHP-ACME/history?from=-5",
    "/v1/shipments/SHP-ACME/history?from=9223372036854775808",
    "/v1/shipments/SHP-ACME/history?to=1.5",
    "/v1/shipments/SHP-ACME/history?limit=100000",
    "/v1/shipments/SHP-ACME/history?cursor=%2F%2F%2F%2F",
    "/v1/shipments/SHP-ACME/history?kind=readings&kinds=events",
    "/v1/shipments/SHP-ACME/proof?height=18446744073709551616",
    "/v1/shipments/SHP-ACME/proof?parts=readings,readings,events,operator,events,operator,x",
    "/v1/shipments/SHP-ACME/proof?parts=' OR 1=1",
    "/v1/shipments/SHP-ACME/epcis?from=abc",
    "/v1/events?since=-1", "/v1/events?limit=0", "/v1/events?shipment=%00",
    "/v1/events?event=" + "e" * 100, "/v1/events?cursor=!!!!",
    "/v1/entries/-1", "/v1/entries/1e3", "/v1/entries/99999999999999999999999",
    "/v1/entries/%00", "/v1/entries/4?height=1",
    "/v1/audit?limit=0", "/v1/audit?since=x", "/v1/audit?cursor=' OR 1=1 --",
    "/v1/devices/" + "d" * 10_000 + "/readings",
    "/v1/devices/truck-1/readings?limit=1001", "/v1/quarantine?cursor=%00",
    "/v1/blocks/-1", "/v1/blocks/x", "/v1/chain/consistency?from=1&to=0",
    "/v1/whoami?as=operator",
])
def test_wrong_types_absurd_ranges_and_unknown_fields_get_a_clear_4xx(fuzz_node: FuzzNode,
                                                                       path: str) -> None:
    for token in (fuzz_node.operator, fuzz_node.partner):
        got = get(fuzz_node, path, token)
        assert 400 <= got.status_code < 500, (path, got.status_code, got.text[:300])
        assert "detail" in got.json()


def test_an_unknown_field_is_named_in_the_answer(fuzz_node: FuzzNode) -> None:
    got = get(fuzz_node, "/v1/shipments?limt=5")
    assert got.status_code == 422
    assert got.json()["detail"] == ("unknown query parameter(s) 'limt'; this endpoint takes "
                                    "cursor, limit, state")


def test_injection_strings_in_filters_match_nothing(fuzz_node: FuzzNode) -> None:
    for value in ("' OR 1=1 --", "in_transit' OR '1'='1", "%"):
        got = get(fuzz_node, "/v1/shipments", params={"state": value})
        assert got.status_code == 200 and got.json()["items"] == []
        events = get(fuzz_node, "/v1/events", fuzz_node.partner, params={"shipment": value})
        assert events.status_code == 200 and events.json()["items"] == []


def test_a_partner_cannot_reach_another_partys_data_by_any_door(fuzz_node: FuzzNode) -> None:
    p = fuzz_node.partner  # acme; SHP-GLOBEX is globex's, entries 5, 6, 9, 12, 15 with it
    for path in ["/v1/shipments/SHP-GLOBEX", "/v1/shipments/SHP-GLOBEX/history",
                 "/v1/shipments/SHP-GLOBEX/history?kind=events", "/v1/shipments/SHP-GLOBEX/epcis",
                 "/v1/shipments/SHP-GLOBEX/proof", "/v1/entries/6", "/v1/entries/6/proof",
                 "/v1/entries/5", "/v1/entries/0"]:
        assert get(fuzz_node, path, p).status_code == 404, path
    assert get(fuzz_node, "/v1/events?shipment=SHP-GLOBEX", p).json()["items"] == []
    ids = [s["id"] for s in get(fuzz_node, "/v1/shipments?limit=1000", p).json()["items"]]
    assert "SHP-GLOBEX" not in ids
    for path in ["/v1/devices", "/v1/devices/truck-3/readings", "/v1/quarantine",
                 "/v1/audit", "/v1/node/status"]:
        assert get(fuzz_node, path, p).status_code == 403, path


def test_a_revoked_partner_token_reads_nothing(fuzz_node: FuzzNode) -> None:
    from ledger_node.auth import TokenBook, wall_clock_ms

    token = api_token(fuzz_node.store.folder, "partner", "acme", name="revoked@acme")
    assert get(fuzz_node, "/v1/shipments/SHP-ACME", token).status_code == 200
    TokenBook(fuzz_node.store.folder / "tokens.db").revoke("revoked@acme", now_ms=wall_clock_ms())
    for path in ["/v1/shipments/SHP-ACME", "/v1/entries/4", "/v1/whoami", "/v1/events"]:
        assert get(fuzz_node, path, token).status_code == 401, path


def test_oversized_headers_and_bodies_are_refused_cleanly(fuzz_node: FuzzNode) -> None:
    got = httpx.get(fuzz_node.url + "/v1/shipments", timeout=30,
                    headers={"Authorization": "Bearer " + "A" * 60_000})
    assert got.status_code in (400, 401, 431)
    big = httpx.post(fuzz_node.url + "/v1/admin/entries?wait=0", content=b"\x00" * 100_000,
                     timeout=30)
    assert big.status_code == 413 and "at most 65536 bytes" in big.json()["detail"]
    junk = httpx.post(fuzz_node.url + "/v1/admin/entries", content=b"\xd2\x84junk", timeout=30)
    assert junk.status_code == 422 and junk.json()["reason"] == "bad_operator_entry"
