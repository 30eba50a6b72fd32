"""`GET /v1/events/stream`: contract events and block notices as Server-Sent Events, filtered
per principal, resumable with Last-Event-ID; the real app under uvicorn on a loopback port,
fed by real blocks committed to the store while the stream is open."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger_node.api import create_app
from ledger_node.auth import TokenBook, wall_clock_ms
from tests.fleet import ShipmentStore, api_token, serve_api, shipment_store


@dataclass
class Node:
    url: str
    store: ShipmentStore
    tokens: dict[str, str] = field(default_factory=dict)

    def block_with_events(self, events: list[tuple[str, str]]) -> int:
        """Commit a block of readings and, for it, one event per (shipment, event) naming its
        entries in turn; returns the block's height. The events rows go first, as the node
        writes them in the block's own transaction: a poll never sees the block without them."""
        tc = self.store.tc
        first = tc.chain.size
        height = tc.chain.height + 1
        for n, (shipment, event) in enumerate(events):
            self.store.insert_event(first + n, shipment, event, height=height)
        tc.apply([d.message(d.reading()) for d in self.store.trucks])
        assert tc.chain.height == height
        return height


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    store = shipment_store(tmp_path)
    tokens = {"operator": api_token(tmp_path, "operator", name="ops"),
              "acme": api_token(tmp_path, "partner", "acme", name="alice@acme"),
              "globex": api_token(tmp_path, "partner", "globex", name="gus@globex")}
    try:
        with serve_api(create_app(store.db, poll_s=0.1)) as url:
            yield Node(url, store, tokens)
    finally:
        store.tc.store.close()


class Stream:
    """An SSE client: `next()` returns the next event {event, id, data}; a read that waits
    longer than 10 s fails the test instead of hanging it."""

    def __init__(self, url: str, headers: dict[str, str] | None = None,
                 params: dict[str, str] | None = None) -> None:
        self._cm = httpx.stream("GET", url + "/v1/events/stream", headers=headers,
                                params=params, timeout=httpx.Timeout(10.0))
        self.response = self._cm.__enter__()
        self._lines = self.response.iter_lines()

    def next(self) -> dict[str, Any]:
        event: dict[str, Any] = {"event": "message", "id": None, "data": []}
        for line in self._lines:
            if line == "":
                if event["data"]:
                    return {**event, "data": json.loads("\n".join(event["data"]))}
                event = {"event": "message", "id": None, "data": []}
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                event["data"].append(value)
            elif name in ("event", "id"):
                event[name] = value
        raise EOFError("the stream ended")

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_new_events_come_before_their_blocks_notice(node: Node) -> None:
    s = Stream(node.url, bearer(node.tokens["operator"]))
    try:
        assert s.response.status_code == 200
        assert s.response.headers["content-type"].startswith("text/event-stream")
        height = node.block_with_events([("SHP-ACME", "temperature_excursion"),
                                         ("SHP-GLOBEX", "door_opened")])
        first, second, block = s.next(), s.next(), s.next()
    finally:
        s.close()
    assert (first["event"], first["id"], first["data"]["entry"]) == ("contract_event", "16", 16)
    assert first["data"]["shipment"] == "SHP-ACME" and first["data"]["block"] == height
    assert first["data"]["event"] == "temperature_excursion"
    assert (second["id"], second["data"]["shipment"]) == ("17", "SHP-GLOBEX")
    assert block["event"] == "block" and block["id"] is None
    assert block["data"] == {"height": height, "size": 19, "time": block["data"]["time"],
                             "count": 3}


def test_a_partner_streams_only_its_shipments_events(node: Node) -> None:
    acme = Stream(node.url, bearer(node.tokens["acme"]))
    globex = Stream(node.url, params={"access_token": node.tokens["globex"]})
    try:
        h1 = node.block_with_events([("SHP-GLOBEX", "door_opened"),
                                     ("SHP-ACME", "custody_transfer")])
        h2 = node.block_with_events([("SHP-GLOBEX", "door_opened")])
        got_acme = [acme.next() for _ in range(3)]
        got_globex = [globex.next() for _ in range(4)]
    finally:
        acme.close()
        globex.close()
    assert [(e["event"], e["data"].get("entry", e["data"].get("height"))) for e in got_acme] \
        == [("contract_event", 17), ("block", h1), ("block", h2)]
    assert [(e["event"], e["data"].get("entry", e["data"].get("height"))) for e in got_globex] \
        == [("contract_event", 16), ("block", h1), ("contract_event", 19), ("block", h2)]


def test_last_event_id_replays_what_the_caller_missed(node: Node) -> None:
    s = Stream(node.url, {**bearer(node.tokens["acme"]), "Last-Event-ID": "0"})
    try:
        replayed = [s.next(), s.next()]
        height = node.block_with_events([("SHP-ACME", "delivered")])
        new, block = s.next(), s.next()
    finally:
        s.close()
    assert [e["id"] for e in replayed] == ["2", "3"]  # SHP-ACME's; event 5 is SHP-GLOBEX's
    assert (new["id"], block["data"]["height"]) == ("16", height)
    op = Stream(node.url, {**bearer(node.tokens["operator"]), "Last-Event-ID": "3"})
    try:
        assert [op.next()["id"], op.next()["id"]] == ["5", "16"]
    finally:
        op.close()


def test_a_revoked_token_ends_its_stream(node: Node) -> None:
    s = Stream(node.url, bearer(node.tokens["acme"]))
    try:
        TokenBook(node.store.folder / "tokens.db").revoke("alice@acme", now_ms=wall_clock_ms())
        ended = s.next()
        with pytest.raises(EOFError):
            s.next()
    finally:
        s.close()
    assert ended["event"] == "revoked"


@pytest.mark.parametrize("headers, params, status", [
    ({}, {}, 401),
    ({"Authorization": "Bearer tf_" + "A" * 43}, {}, 401),
    ({}, {"access_token": "tf_" + "A" * 43}, 401),
    ({"Last-Event-ID": "abc"}, None, 400),
    ({"Last-Event-ID": "-1"}, None, 400),
    ({"Last-Event-ID": "1" * 25}, None, 422),
    ({"Last-Event-ID": "99999999999999999999"}, None, 400),
    ({}, {"since": "5"}, 422),  # the stream takes no other query parameter
])
def test_stream_refusals(node: Node, headers: dict[str, str], params: dict[str, str] | None,
                         status: int) -> None:
    if params is None:
        headers = {**bearer(node.tokens["operator"]), **headers}
    got = httpx.get(node.url + "/v1/events/stream", headers=headers, params=params or {},
                    timeout=10)
    assert got.status_code == status, got.text
