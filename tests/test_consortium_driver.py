"""The consortium driver's judgement, without processes: whose signatures count, when a block
is final and what receipts then say, disagreement, equivocation and divergence, and which
ledger times a node refuses to sign."""

from __future__ import annotations

import time
import types
from pathlib import Path
from typing import Any

import pytest

from ledger_node.block import block_hash
from ledger_node.chain import OrderedBatch
from ledger_node.config import NodeConfig
from ledger_node.consortium.codec import encode_batch
from ledger_node.consortium.cstore import evidence
from ledger_node.consortium.driver import Consortium, _Queued
from ledger_node.consortium.etcd import WatchEvent
from tests.chainkit import Device
from tests.test_consortium_quorum import ConsortiumChain
from trustfleet.receipt import decode_receipt


class FakeEtcd:
    def __init__(self) -> None:
        self.puts: list[tuple[bytes, bytes]] = []

    def put(self, key: bytes, value: bytes) -> int:
        self.puts.append((key, value))
        return len(self.puts)

    def close(self) -> None:
        pass


class FakeMqtt:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.published.append((topic, payload))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[ConsortiumChain, Consortium, FakeMqtt]:
    trucks = [Device("truck-1")]
    cc = ConsortiumChain(tmp_path / "ledger.sqlite", trucks)
    cc.start()
    cc.apply([trucks[0].message(trucks[0].reading())], sign_all=False)
    cfg = NodeConfig(data_dir=tmp_path, node_id="node-1", ordering="etcd",
                     etcd_endpoints="http://127.0.0.1:1", node_set_file=tmp_path / "ns.json",
                     max_clock_skew_ms=10_000)
    mqtt = FakeMqtt()
    node = types.SimpleNamespace(cfg=cfg, store=cc.store, chain=cc.chain, client=mqtt)
    return cc, Consortium(node, client=FakeEtcd()), mqtt  # type: ignore[arg-type]


def header_at(cc: ConsortiumChain, height: int) -> bytes:
    header = cc.store.header(height)
    assert header is not None
    return header


def kinds(cc: ConsortiumChain) -> list[tuple[str, str, int]]:
    return sorted((e.kind, e.node, e.height) for e in evidence(cc.store.conn))


def test_a_block_is_final_with_a_quorum_and_receipts_carry_the_certificate(
        setup: tuple[ConsortiumChain, Consortium, FakeMqtt]) -> None:
    cc, con, mqtt = setup
    h = cc.chain.height
    header = header_at(cc, h)
    assert con.final_height == h - 1  # the earlier blocks were signed by all four
    con._queue_receipts({"truck-1"})
    assert mqtt.published == []  # its block is not final yet: no receipt
    con._vote(h, "node-1")
    con._on_signature("node-2", h, header, cc.keys["node-2"].sign(header))
    assert con.final_height == h - 1  # two of four
    con._on_signature("node-9", h, header, cc.keys["node-3"].sign(header))  # not a member
    con._on_signature("node-3", h, header, cc.keys["node-4"].sign(header))  # bad signature
    assert con.final_height == h - 1
    con._on_signature("node-4", h, header, cc.keys["node-4"].sign(header))
    assert con.final_height == h
    topic, payload = mqtt.published[-1]
    receipt = decode_receipt(payload)
    assert topic == "tf/v1/test/truck-1/receipt"
    assert (receipt.final, receipt.seq, receipt.height) == (True, 1, h)
    assert receipt.block == block_hash(header)
    assert {s["node"] for s in receipt.sigs} == {"node-1", "node-2", "node-4"}


def test_another_header_signed_by_a_quorum_is_divergence(
        setup: tuple[ConsortiumChain, Consortium, FakeMqtt]) -> None:
    cc, con, _ = setup
    h = cc.chain.height
    ours = header_at(cc, h)
    theirs = header_at(cc, h - 1)  # any other valid header bytes
    con._on_signature("node-2", h, ours, cc.keys["node-2"].sign(ours))
    con._on_signature("node-2", h, theirs, cc.keys["node-2"].sign(theirs))
    assert kinds(cc) == [("disagreement", "node-2", h), ("equivocation", "node-2", h)]
    assert con.halted is None
    con._on_signature("node-3", h, theirs, cc.keys["node-3"].sign(theirs))
    assert con.halted is None  # two of four: who is wrong is not known yet
    con._on_signature("node-4", h, theirs, cc.keys["node-4"].sign(theirs))
    assert con.halted is not None and con.halted.height == h
    assert con.halted.ours == block_hash(ours) and con.halted.theirs == block_hash(theirs)
    assert ("divergence", "node-1", h) in kinds(cc)
    status = con.status()
    assert status["diverged"]["height"] == h
    # A diverged node posts no more signatures.
    con._to_post.append((h + 1, ours, b"\x00" * 64))
    con._post_sigs()
    assert con.etcd.puts == []  # type: ignore[attr-defined]


def _item(revision: int, header_revision: int, received_ms: int) -> _Queued:
    return _Queued(WatchEvent(b"k", b"v", revision), header_revision, received_ms)


@pytest.mark.parametrize(("stamped", "header_time", "live", "refused"), [
    (100_000, 100_000, True, ""),
    (95_000, 100_000, True, ""),  # within the skew
    (85_000, 100_000, True, "behind"),  # stamped 15 s before it arrived
    (85_000, 100_000, False, ""),  # catching up: old batches are old
    (115_000, 115_000, True, "ahead"),  # a time from the future
    (115_000, 115_000, False, "ahead"),  # the future stays the future
])
def test_a_node_does_not_sign_a_time_too_far_from_its_clock(
        setup: tuple[ConsortiumChain, Consortium, FakeMqtt], stamped: int, header_time: int,
        live: bool, refused: str) -> None:
    _, con, _ = setup
    item = _item(1000, 1001 if live else 5000, 100_000)
    problem = con._time_problem(stamped, header_time, item)
    assert (refused in problem) if refused else problem == ""


def test_a_batch_from_the_log_is_applied_with_its_revision_and_signed(
        setup: tuple[ConsortiumChain, Consortium, FakeMqtt]) -> None:
    cc, con, _ = setup
    accounted: list[Any] = []
    con.node._account = lambda result, started: accounted.append(result)  # type: ignore[attr-defined]
    con.node._last_block = 0.0  # type: ignore[attr-defined]
    truck = cc.devices[0]
    now = time.time_ns() // 1_000_000
    batch = OrderedBatch(now, "node-3", (), (truck.message(truck.reading()),))
    con._apply_batch(WatchEvent(con.keys.log, encode_batch(batch), 500), _item(500, 500, now))
    assert cc.store.applied_revision() == 500 and con.applied_revision == 500
    assert accounted[0].accepted == 1
    assert [h for h, _, _ in con._to_post] == [cc.chain.height]
    # Not a batch: skipped alike by every node, the revision advances.
    con._apply_batch(WatchEvent(con.keys.log, b"\xa0", 501), _item(501, 501, now))
    assert cc.store.applied_revision() == 501
    assert con.applied_revision == 501
