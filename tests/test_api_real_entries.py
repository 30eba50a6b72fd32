"""The partner API over shipments and a contract event that the chain itself made: real
operator entries (contract, shipments, assignments, signed with a software operator key the
fleet CA certified), a real cold-chain excursion in block application, the real app served
by uvicorn on a loopback port."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger_node.api import create_app
from ledger_node.bundle_verify import verify_bundle
from ledger_node.contracts import template_text
from tests.chainkit import ChainUnderTest, Device
from tests.fleet import api_token, cli, serve_api

T0 = 1_763_700_000_000
MIN = 60_000


def business(cut: ChainUnderTest) -> list[bytes]:
    """The cold-chain contract; SHP-1 (acme-pharma, fastfreight) on truck-1 and SHP-2
    (nordic-foods) on truck-2, both from an hour before T0."""
    return [cut.contract_entry(template_text("cold-chain-2-8")),
            *cut.shipment_entries("SHP-1", "truck-1", ["cold-chain-2-8"], start=T0 - 60 * MIN),
            *cut.shipment_entries("SHP-2", "truck-2", ["cold-chain-2-8"], start=T0 - 60 * MIN,
                                  parties=[("nordic-foods", "shipper")])]


@dataclass
class Node:
    url: str
    cut: ChainUnderTest
    trucks: list[Device]
    tokens: dict[str, str]

    def get(self, path: str, who: str = "operator", **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30,
                         headers={"Authorization": f"Bearer {self.tokens[who]}"}, **kw)

    def excursion(self) -> None:
        """Sixteen minutes above 8 °C on truck-1: the contract's excursion event."""
        t1 = self.trucks[0]
        self.cut.apply([t1.message(e) for e in t1.temps(T0 + 3 * MIN, [9.0] * 16)])


def start(folder: Path) -> tuple[ChainUnderTest, list[Device], dict[str, str]]:
    trucks = [Device("truck-1"), Device("truck-2")]
    cut = ChainUnderTest(folder / "ledger.sqlite", trucks)
    result = cut.apply(admin=business(cut))
    assert [a.status for a in result.admin] == ["accepted"] * 5, result.admin
    cut.apply([t.message(e) for t in trucks for e in t.temps(T0, [5.0, 6.0, 7.0])])
    tokens = {"operator": api_token(folder, "operator"),
              "acme": api_token(folder, "partner", "acme-pharma"),
              "carrier": api_token(folder, "partner", "fastfreight"),
              "nordic": api_token(folder, "partner", "nordic-foods")}
    return cut, trucks, tokens


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("node")
    cut, trucks, tokens = start(folder)
    with serve_api(create_app(cut.store.path)) as url:
        n = Node(url, cut, trucks, tokens)
        n.excursion()
        yield n
    cut.store.close()


def the_event(node: Node) -> dict[str, Any]:
    (event,) = node.get("/v1/shipments/SHP-1/history?kind=events").json()["items"]
    return dict(event)


def test_each_partner_sees_its_shipment_as_the_chain_made_it(node: Node) -> None:
    assert [s["id"] for s in node.get("/v1/shipments", "acme").json()["items"]] == ["SHP-1"]
    assert [s["id"] for s in node.get("/v1/shipments", "carrier").json()["items"]] == ["SHP-1"]
    assert [s["id"] for s in node.get("/v1/shipments", "nordic").json()["items"]] == ["SHP-2"]
    doc = node.get("/v1/shipments/SHP-1", "acme").json()
    assert doc["state"] == "out_of_compliance" and doc["custodian"] == "acme-pharma"
    assert [h["state"] for h in doc["history"]] == ["created", "out_of_compliance"]
    assert node.get("/v1/shipments/SHP-2", "acme").status_code == 404


def test_the_excursion_event_cites_readings_of_the_shipment(node: Node) -> None:
    event = the_event(node)
    assert (event["event"], event["contract"], event["state"]) == (
        "excursion", "cold-chain-2-8", "out_of_compliance")
    readings = node.get("/v1/shipments/SHP-1/history?limit=1000", "acme").json()["items"]
    assert [r["device"] for r in readings] == ["truck-1"] * 19
    assert set(event["cause"]) <= {r["entry"] for r in readings} and len(event["cause"]) == 16
    alerts = node.get("/v1/events", "acme").json()["items"]
    assert [a["entry"] for a in alerts] == [event["entry"]]
    assert node.get("/v1/events", "nordic").json()["items"] == []


def test_partners_read_their_shipments_entries_of_every_kind(node: Node) -> None:
    event = the_event(node)
    made_by = node.get("/v1/shipments/SHP-1", "acme").json()["entries"]
    kinds = {}
    for index in [event["entry"], *made_by, event["cause"][0]]:
        got = node.get(f"/v1/entries/{index}", "carrier")
        assert got.status_code == 200, (index, got.text)
        kinds[index] = got.json()["kind"]
        assert node.get(f"/v1/entries/{index}", "nordic").status_code == 404
    assert kinds[event["entry"]] == "contract_event"
    assert sorted(kinds[i] for i in made_by) == ["shipment_assigned", "shipment_created"]
    assert kinds[event["cause"][0]] == "reading"
    nordic_made_by = node.get("/v1/shipments/SHP-2", "nordic").json()["entries"]
    assert all(node.get(f"/v1/entries/{i}", "acme").status_code == 404 for i in nordic_made_by)


def test_the_shipments_readings_bundle_passes_verify_bundle(node: Node, tmp_path: Path) -> None:
    got = node.get("/v1/shipments/SHP-1/proof?parts=readings", "acme")
    assert got.status_code == 200, got.text
    report = verify_bundle(got.content, pinned_ca=node.cut.pki.ca_cert)
    assert report.ok, report.problems
    assert len(report.readings["truck-1"]) == 19 and "truck-2" not in report.readings
    (tmp_path / "b.json").write_bytes(got.content)
    (tmp_path / "ca.der").write_bytes(node.cut.pki.ca_cert)
    checked = subprocess.run(cli("verify-bundle", str(tmp_path / "b.json"), "--ca",
                                 str(tmp_path / "ca.der")),
                             capture_output=True, text=True, timeout=120, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_bundle_with_events_and_operator_entries_proves_their_inclusion(node: Node) -> None:
    event = the_event(node)
    made_by = node.get("/v1/shipments/SHP-1", "acme").json()["entries"]
    bundle = node.get("/v1/shipments/SHP-1/proof?parts=events,operator", "acme").json()
    indices = [e["index"] for e in bundle["entries"]]
    assert event["entry"] in indices and set(made_by) <= set(indices)
    report = verify_bundle(json.dumps(bundle).encode(), pinned_ca=node.cut.pki.ca_cert)
    assert report.ok, report.problems
    assert report.operator_entries >= 2 and report.node_entries == 1


def test_the_whole_shipment_bundle_verifies_offline(node: Node, tmp_path: Path) -> None:
    got = node.get("/v1/shipments/SHP-1/proof", "acme")  # readings, events, operator entries
    assert got.status_code == 200, got.text
    (tmp_path / "b.json").write_bytes(got.content)
    (tmp_path / "ca.der").write_bytes(node.cut.pki.ca_cert)
    checked = subprocess.run(cli("verify-bundle", str(tmp_path / "b.json"), "--ca",
                                 str(tmp_path / "ca.der")),
                             capture_output=True, text=True, timeout=120, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 contract event or audit entry" in checked.stdout
    forged = json.loads(got.content)
    event = next(e for e in forged["entries"] if b"contract_event" in base64.b64decode(e["data"]))
    event["data"] = base64.b64encode(base64.b64decode(event["data"]).replace(
        b"excursion", b"excursioN")).decode()
    report = verify_bundle(json.dumps(forged).encode(), pinned_ca=node.cut.pki.ca_cert)
    assert not report.ok  # a changed event no longer proves into the head


def test_epcis_export_of_the_real_shipment(node: Node) -> None:
    got = node.get("/v1/shipments/SHP-1/epcis", "carrier")
    assert got.status_code == 200, got.text
    doc = got.json()
    entries = {e["tf:entry"] for e in doc["epcisBody"]["eventList"]}
    assert the_event(node)["entry"] in entries and len(entries) == 20  # 19 readings + event
    assert node.get("/v1/shipments/SHP-1/epcis", "nordic").status_code == 404


def test_the_stream_brings_the_excursion_as_it_is_committed(tmp_path: Path) -> None:
    cut, trucks, tokens = start(tmp_path)
    try:
        with serve_api(create_app(cut.store.path, poll_s=0.1)) as url:
            n = Node(url, cut, trucks, tokens)
            seen: dict[str, list[dict[str, Any]]] = {}
            streams = {who: httpx.stream("GET", url + "/v1/events/stream", timeout=10,
                                         headers={"Authorization": f"Bearer {tokens[who]}"})
                       for who in ("acme", "nordic")}
            responses = {who: s.__enter__() for who, s in streams.items()}
            try:
                n.excursion()
                for who, resp in responses.items():
                    seen[who] = read_until_block(resp.iter_lines(), cut.chain.height)
            finally:
                for s in streams.values():
                    s.__exit__(None, None, None)
    finally:
        cut.store.close()
    acme = [e for e in seen["acme"] if e["event"] == "contract_event"]
    assert [(e["data"]["event"], e["data"]["shipment"]) for e in acme] == [("excursion", "SHP-1")]
    assert acme[0]["id"] == str(acme[0]["data"]["entry"])
    assert [e for e in seen["nordic"] if e["event"] == "contract_event"] == []


def read_until_block(lines: Iterator[str], height: int) -> list[dict[str, Any]]:
    """SSE events up to the notice of block `height`."""
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] = {"event": "message", "id": None}
    for line in lines:
        if line.startswith("event: "):
            cur["event"] = line[7:]
        elif line.startswith("id: "):
            cur["id"] = line[4:]
        elif line.startswith("data: "):
            cur["data"] = json.loads(line[6:])
        elif line == "" and "data" in cur:
            out.append(cur)
            if cur["event"] == "block" and cur["data"]["height"] == height:
                return out
            cur = {"event": "message", "id": None}
    raise AssertionError(f"the stream ended before block {height}: {out}")
