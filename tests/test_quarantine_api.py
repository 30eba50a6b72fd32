"""`GET /v1/quarantine` (filters, time, cursor pagination) and `GET /v1/quarantine/{id}`, over a
real SQLite store filled by real block application (FastAPI TestClient)."""

from __future__ import annotations

import base64
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from ledger_node.api import create_app
from ledger_node.chain import Message
from ledger_node.quarantine import QuarantineLimits
from tests.chainkit import ChainUnderTest, Device
from tests.fleet import operator_token
from trustfleet import cbor

T = 1_763_700_000_000  # 2025-11-21T04:40:00Z


@pytest.fixture
def tc(tmp_path: Path) -> Iterator[ChainUnderTest]:
    good, stranger = Device("truck-1"), Device("stranger")
    tc = ChainUnderTest(tmp_path / "ledger.sqlite", [good])
    forged = bytearray(good.reading())
    forged[-2] ^= 0x40
    good.seq -= 1
    tc.apply([Message(good.topic, b"\xff\x00junk", T),                       # id 1 bad_cbor
              Message(good.topic, bytes(forged), T + 1000),                  # id 2 bad_signature
              Message(stranger.topic, stranger.reading(), T + 2000),         # id 3 unknown_device
              Message(good.topic, cbor.dumps({"v": 1, "x": [1, 2]}), T + 3000),  # 4 bad_envelope
              Message(good.topic, good.reading(), T + 4000)])                # accepted
    for n in range(20):                                                     # ids 5..24
        tc.apply([Message("tf/v1/test/noisy/up", b"\xff" + bytes([n]), T + 10_000 + n)])
    yield tc
    tc.store.close()


@pytest.fixture
def client(tc: ChainUnderTest) -> TestClient:
    token = operator_token(tc.store.path.parent)
    return TestClient(create_app(tc.store.path), headers={"Authorization": f"Bearer {token}"})


def ids(page: dict[str, Any]) -> list[int]:
    return [i["id"] for i in page["items"]]


def test_items_come_newest_first_with_totals_and_without_raw_bytes(client: TestClient) -> None:
    page = client.get("/v1/quarantine?limit=3").json()
    assert ids(page) == [24, 23, 22]
    assert page["counts"] == {"bad_cbor": 21, "bad_signature": 1, "unknown_device": 1,
                              "bad_envelope": 1}
    assert page["stored"]["rows"] == 24 and page["summarised"] == 0
    assert page["stored"]["max_rows"] == QuarantineLimits().max_rows
    assert "raw" not in page["items"][0]
    assert "raw" in client.get("/v1/quarantine?limit=1&include_raw=true").json()["items"][0]


@pytest.mark.parametrize("query, want", [
    ("reason=bad_signature", [2]),
    ("device=stranger", [3]),
    ("device=truck-1", [4, 2, 1]),  # garbage on truck-1's topic counts as about truck-1
    (f"since={T + 1000}&until={T + 3000}", [3, 2]),
    ("since=2025-11-21T04:40:01Z&until=2025-11-21T04:40:03.000%2B00:00", [3, 2]),
    (f"reason=bad_cbor&until={T + 10_002}", [6, 5, 1]),
])
def test_filters_by_reason_device_and_received_time(client: TestClient, query: str,
                                                    want: list[int]) -> None:
    assert ids(client.get(f"/v1/quarantine?{query}").json()) == want


def test_cursor_pages_neither_repeat_nor_skip_while_new_rows_arrive(
        client: TestClient, tc: ChainUnderTest) -> None:
    seen: list[int] = []
    page = client.get("/v1/quarantine?limit=5").json()
    while True:
        seen += ids(page)
        tc.apply([Message("tf/v1/test/noisy/up", b"\xfe", T + 99_000)])  # newer than any page
        if page["next_cursor"] is None:
            break
        page = client.get(f"/v1/quarantine?limit=5&cursor={page['next_cursor']}").json()
    assert seen == list(range(24, 0, -1))


def test_one_item_has_every_field_its_raw_bytes_and_a_cbor_view(client: TestClient) -> None:
    item = client.get("/v1/quarantine/4").json()
    assert item["reason"] == "bad_envelope" and item["device"] == "truck-1"
    assert item["received"] == T + 3000 and item["received_iso"] == "2025-11-21T04:40:03.000Z"
    assert base64.b64decode(item["raw"]) == cbor.dumps({"v": 1, "x": [1, 2]})
    assert item["cbor"] == '{"v": 1, "x": [1, 2]}'
    assert item["truncated"] is False and item["stored_size"] == item["size"]
    forged = client.get("/v1/quarantine/2").json()
    assert forged["cbor"].startswith("18([<<{1: -7, 4: h'")  # COSE_Sign1, header decoded
    assert '"dev": "truck-1"' in forged["cbor"]               # and the payload inside it
    junk = client.get("/v1/quarantine/1").json()
    assert junk["cbor"] is None and "CBOR" in junk["cbor_error"]


def test_beyond_the_cap_the_oldest_items_are_summarised_and_shown_as_counters(
        client: TestClient, tc: ChainUnderTest) -> None:
    tc.store.quarantine.limits = QuarantineLimits(max_rows=10)
    tc.apply([Message("tf/v1/test/noisy/up", b"\xfd", T + 50_000)])  # id 25: evicts to 90%
    page = client.get("/v1/quarantine?limit=100").json()
    assert ids(page) == list(range(25, 16, -1))
    assert page["stored"]["rows"] == 9 and page["summarised"] == 16
    assert {(s["reason"], s["device"]): s["count"] for s in page["summary"]} == {
        ("bad_cbor", "noisy"): 12, ("bad_cbor", "truck-1"): 1, ("bad_signature", "truck-1"): 1,
        ("unknown_device", "stranger"): 1, ("bad_envelope", "truck-1"): 1}
    (stranger,) = client.get("/v1/quarantine?device=stranger").json()["summary"]
    assert (stranger["count"], stranger["first_seen"]) == (1, T + 2000)
    assert client.get("/v1/quarantine/3").status_code == 404


@pytest.mark.parametrize("path, status", [
    ("/v1/quarantine/999", 404),
    ("/v1/quarantine/0", 422),
    ("/v1/quarantine?since=yesterday", 422),
    ("/v1/quarantine?since=2025-11-21T04:40:00", 422),  # no zone
    ("/v1/quarantine?cursor=abc", 422),
    ("/v1/quarantine?cursor=99999999999999999999", 422),
    ("/v1/quarantine?limit=0", 422),
])
def test_bad_quarantine_requests_get_a_clear_4xx(client: TestClient, path: str,
                                                 status: int) -> None:
    got = client.get(path)
    assert got.status_code == status, got.text
