"""Entry, proof-bundle and consistency endpoints over a real SQLite store (FastAPI TestClient)."""

from __future__ import annotations

import base64
import json
import sqlite3
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

with warnings.catch_warnings():
    # Starlette 1.x warns at import that it prefers httpx2 to the httpx our dev extra installs;
    # the client works the same. Drop this once pyproject's dev extra names httpx2.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from ledger_node.api import create_app
from ledger_node.bundle_verify import verify_bundle
from ledger_node.heads import check_consistency, parse_consistency, read_head_file
from ledger_node.merkle import leaf_hash
from ledger_node.store import Store
from tests.chainkit import ChainUnderTest, Device
from tests.fleet import operator_token


def build(db: Path) -> ChainUnderTest:
    a, b = Device("truck-1"), Device("truck-2")
    tc = ChainUnderTest(db, [a, b])  # block 0: genesis (0), enrolments (1, 2)
    for _ in range(4):  # blocks 1-4, three readings each: entries 3..14
        tc.apply([a.message(a.reading()), b.message(b.reading()), a.message(a.reading())])
    return tc


@pytest.fixture
def chain(tmp_path: Path) -> ChainUnderTest:
    tc = build(tmp_path / "ledger.sqlite")
    tc.store.close()
    return tc


@pytest.fixture
def db(chain: ChainUnderTest) -> Path:
    return chain.store.path


@pytest.fixture
def ca_cert(chain: ChainUnderTest) -> bytes:
    return chain.pki.ca_cert


def bearer(folder: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {operator_token(folder)}"}


@pytest.fixture
def client(db: Path) -> Iterator[TestClient]:
    with TestClient(create_app(db), headers=bearer(db.parent)) as c:
        yield c


def test_entry_returns_its_bytes_kind_and_block(client: TestClient, db: Path) -> None:
    got = client.get("/v1/entries/4")
    assert got.status_code == 200
    body = got.json()
    with sqlite3.connect(db) as conn:
        data = conn.execute("SELECT data FROM entries WHERE idx = 4").fetchone()[0]
    assert body == {"index": 4, "kind": "reading", "block": 1,
                    "leaf_hash": leaf_hash(data).hex(), "data": base64.b64encode(data).decode()}
    assert client.get("/v1/entries/1").json()["kind"] == "device_enrolled"


@pytest.mark.parametrize("path, status, detail", [
    ("/v1/entries/15", 404, "no entry 15: the log has 15 entries"),
    ("/v1/entries/-1", 422, None),
    ("/v1/entries/abc", 422, None),
    ("/v1/entries/99999999999999999999999", 422, None),
    ("/v1/entries/15/proof", 404, "no entry 15"),
    ("/v1/entries/3/proof?height=9", 404, "no block at height 9 (the chain is at height 4)"),
    ("/v1/entries/9/proof?height=1", 422, "entry 9 was committed in block 3; the head at "
                                          "height 1 (tree size 6) cannot include it"),
    ("/v1/entries/3/proof?height=-2", 422, None),
    ("/v1/entries/3/proof?height=x", 422, None),
    ("/v1/chain/consistency", 422, None),
    ("/v1/chain/consistency?from=3&to=1", 422, "from (3) must not be after to (1)"),
    ("/v1/chain/consistency?from=2&to=7", 404, "no block at height 7"),
    ("/v1/chain/consistency?from=5", 404, "no block at height 5 (the chain is at height 4)"),
    ("/v1/chain/consistency?from=one", 422, None),
    ("/v1/chain/consistency?from=18446744073709551616", 422, None),
])
def test_bad_requests_get_a_clear_4xx(client: TestClient, path: str, status: int,
                                      detail: str | None) -> None:
    got = client.get(path)
    assert got.status_code == status, got.text
    if detail is not None:
        assert detail in got.json()["detail"]


@pytest.mark.parametrize("path", [
    "/v1/blocks/99999999999999999999",
    "/v1/devices/truck-1/readings?after_seq=99999999999999999999",
    "/v1/devices/truck-1/readings?from=99999999999999999999",
    "/v1/devices/truck-1/readings?to=99999999999999999999",
    "/v1/quarantine?before_id=99999999999999999999",
])
def test_integers_sqlite_cannot_hold_get_422_not_500(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 422


def test_entry_proof_is_a_bundle_that_verifies_offline(client: TestClient,
                                                        ca_cert: bytes) -> None:
    got = client.get("/v1/entries/7/proof")
    assert got.status_code == 200
    bundle = got.json()
    assert bundle["version"] == 2
    assert bundle["subject"] == {"device": "truck-2", "from": None, "to": None}
    # genesis (names the CA and the node key), truck-2's enrolment, then the reading
    assert [e["index"] for e in bundle["entries"]] == [0, 2, 7]
    assert bundle["certificates"] == {"ca": base64.b64encode(ca_cert).decode(), "nodes": []}
    assert len(bundle["blocks"]) == 1  # block 0's signed header: when truck-2 was enrolled
    report = verify_bundle(got.content, pinned_ca=ca_cert)
    assert report.ok, report.problems
    assert report.head is not None and report.head.header.height == 4
    assert [p.index for p in report.readings["truck-2"]] == [7]
    assert report.devices["truck-2"].enrolled == 2 and report.operator_entries == 1


def test_entry_proof_against_an_older_head(client: TestClient) -> None:
    bundle = client.get("/v1/entries/4/proof?height=1").json()
    report = verify_bundle(json.dumps(bundle).encode())
    assert report.ok, report.problems
    assert report.head is not None and report.head.header.size == 6


def test_proof_of_the_genesis_entry(client: TestClient) -> None:
    report = verify_bundle(client.get("/v1/entries/0/proof?height=0").content)
    assert report.ok and report.entries == 1 and not report.readings


def test_proof_of_an_operator_entry_carries_the_device_history(client: TestClient) -> None:
    bundle = client.get("/v1/entries/1/proof?height=0").json()
    assert bundle["subject"]["device"] is None
    assert [e["index"] for e in bundle["entries"]] == [0, 1]
    assert bundle["blocks"] == []  # block 0 is the head: its header gives the ledger time
    report = verify_bundle(json.dumps(bundle).encode())
    assert report.ok, report.problems
    assert report.operator_entries == 1 and report.devices["truck-1"].enrolled == 1


def test_consistency_document_checks_against_a_head_saved_from_the_api(client: TestClient) -> None:
    saved = read_head_file(client.get("/v1/blocks/1").content, "saved head")
    got = client.get("/v1/chain/consistency?from=1&to=4")
    assert got.status_code == 200
    doc = parse_consistency(got.json())
    summary = check_consistency(doc, saved_old=saved)
    assert "block 1 (tree size 6" in summary and "block 4 (tree size 15" in summary
    same = parse_consistency(client.get("/v1/chain/consistency?from=2&to=2").json())
    assert same.proof == () and check_consistency(same)


def test_a_tampered_store_answers_503_and_says_why(client: TestClient, db: Path) -> None:
    with sqlite3.connect(db) as conn:
        data = bytearray(conn.execute("SELECT data FROM entries WHERE idx = 5").fetchone()[0])
        data[-1] ^= 1  # still a well-formed envelope; no longer the committed bytes
        conn.execute("UPDATE entries SET data = ? WHERE idx = 5", (bytes(data),))
    got = client.get("/v1/entries/5/proof")
    assert got.status_code == 503
    detail = got.json()["detail"]
    # The bundle proves the genesis entry first: its path's sibling [4, 8), a subtree too small
    # to be stored, is hashed from entries 4 to 7, so the damage shows there already.
    assert detail.startswith("this node cannot serve that proof: entry 0 against block 4: the "
                             "store does not reproduce the signed root")
    assert detail.endswith("refusing to serve this proof")
    assert client.get("/v1/entries/4/proof").status_code == 503  # entry 5 is on 4's path
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE entries SET data = ? WHERE idx = 6", (b"\xa0",))
    got = client.get("/v1/entries/6/proof")
    assert got.status_code == 503 and "entry 6: reading does not decode" in got.json()["detail"]


def test_an_empty_chain_answers_404(tmp_path: Path) -> None:
    Store(tmp_path / "empty.sqlite").close()
    with TestClient(create_app(tmp_path / "empty.sqlite"), headers=bearer(tmp_path)) as c:
        assert c.get("/v1/entries/0").status_code == 404
        got = c.get("/v1/chain/consistency?from=0")
        assert got.status_code == 404 and "no blocks yet" in got.json()["detail"]
