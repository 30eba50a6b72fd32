"""The consortium store and block sync, in-process: the applied revision goes with its
block; a node catches up from a peer's pages (over a real HTTP API too) and writes the very
same blocks; what a peer sends that does not check is refused before anything is written;
the cross-node comparison names a node whose store was changed."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ledger_node.api import create_app
from ledger_node.auth import TokenBook, tokens_path, wall_clock_ms
from ledger_node.block_sync import (
    SyncBlock,
    apply_block,
    batch_from_entries,
    catch_up,
    compare_blocks,
    fetch_page,
    parse_page,
)
from ledger_node.consortium.cstore import read_revision
from ledger_node.consortium.errors import DivergenceError, SyncError
from ledger_node.consortium.files import Peer, write_node_set
from ledger_node.consortium_api import create_router, sync_page
from ledger_node.store import BlockRecord
from tests.chainkit import Device
from tests.fleet import serve_api
from tests.test_consortium_quorum import ConsortiumChain


@pytest.fixture
def leader(tmp_path: Path) -> ConsortiumChain:
    trucks = [Device("truck-1"), Device("truck-2"), Device("truck-3")]
    c = ConsortiumChain(tmp_path / "leader" / "ledger.sqlite", trucks)
    c.start()
    for i in range(6):
        c.apply([d.message(d.reading()) for d in trucks[: 1 + i % 3]])
    return c


def follower(tmp_path: Path, leader: ConsortiumChain, me: str = "node-3") -> ConsortiumChain:
    return ConsortiumChain(tmp_path / me / "ledger.sqlite", [], pki=leader.pki,
                           keys=leader.keys, me=me)


def pages(c: ConsortiumChain, first: int = 0, limit: int = 100) -> Any:
    conn = sqlite3.connect(f"file:{c.store.path}?mode=ro", uri=True)
    try:
        return parse_page(sync_page(conn, first, limit))
    finally:
        conn.close()


def configured(c: ConsortiumChain) -> list[tuple[str, bytes]]:
    return sorted(c.certs.items())


def hashes(c: ConsortiumChain) -> list[bytes]:
    return [bytes(r[0]) for r in c.store.conn.execute("SELECT hash FROM blocks ORDER BY height")]


def test_the_applied_revision_is_written_with_its_block_or_not_at_all(tmp_path: Path) -> None:
    c = ConsortiumChain(tmp_path / "ledger.sqlite", [Device("truck-1")])
    c.start()
    assert c.store.applied_revision() == 3 and c.store.block_revision(0) == 3
    tip = c.store.tip()
    assert tip is not None
    c.store.pending_revision = 99
    clash = BlockRecord(height=0, hash=tip.hash, header=b"x", time=0, first=0, count=0,
                        size=0, frontier=b"", sigs=[], entries=[], readings=[], devices=[],
                        quarantine=[])
    with pytest.raises(sqlite3.IntegrityError):
        c.store.commit_block(clash)  # height 0 exists: the whole transaction is rolled back
    assert c.store.applied_revision() == 3
    c.store.mark_applied(7)  # a batch that wrote nothing
    assert c.store.applied_revision() == 7
    conn = sqlite3.connect(c.store.path)
    assert read_revision(conn) == 7


def test_a_node_catching_up_writes_the_same_blocks(tmp_path: Path,
                                                   leader: ConsortiumChain) -> None:
    f = follower(tmp_path, leader)
    page = pages(leader)
    assert page.tip == leader.chain.height and len(page.blocks) == leader.chain.height + 1
    for block in page.blocks:
        apply_block(f.chain, f.store, block, configured(leader))
    assert hashes(f) == hashes(leader)
    assert f.store.applied_revision() == leader.store.block_revision(leader.chain.height)
    # It keeps the quorum certificate with its own signature, and could serve it on.
    assert {n for n, _ in f.store.signatures(3)} == {"node-1", "node-2", "node-3", "node-4"}


def test_block_sync_refuses_a_block_without_a_quorum(tmp_path: Path,
                                                     leader: ConsortiumChain) -> None:
    f = follower(tmp_path, leader)
    page = pages(leader)
    apply_block(f.chain, f.store, page.blocks[0], configured(leader))
    b = page.blocks[1]
    weak = SyncBlock(b.height, b.revision, b.header, b.signatures[:2], b.entries)
    with pytest.raises(SyncError, match="no_quorum"):
        apply_block(f.chain, f.store, weak, configured(leader))
    assert f.chain.height == 0


def test_block_sync_refuses_another_consortium_s_chain(tmp_path: Path,
                                                       leader: ConsortiumChain) -> None:
    stranger = ConsortiumChain(tmp_path / "other" / "ledger.sqlite", [])
    with pytest.raises(SyncError, match="another node set"):
        apply_block(stranger.chain, stranger.store, pages(leader).blocks[0],
                    configured(stranger))


def test_a_block_whose_entries_were_changed_is_not_written(tmp_path: Path,
                                                           leader: ConsortiumChain) -> None:
    f = follower(tmp_path, leader)
    page = pages(leader)
    for block in page.blocks[:3]:
        apply_block(f.chain, f.store, block, configured(leader))
    b = page.blocks[3]
    bad_entry = bytearray(b.entries[-1])
    bad_entry[-1] ^= 1  # the device signature: the reading is refused, the block differs
    changed = SyncBlock(b.height, b.revision, b.header, b.signatures,
                        (*b.entries[:-1], bytes(bad_entry)))
    with pytest.raises(DivergenceError):
        apply_block(f.chain, f.store, changed, configured(leader))
    assert f.store.tip() is not None and f.store.tip().height == 2  # type: ignore[union-attr]


def test_entries_become_the_batch_that_made_them(leader: ConsortiumChain,
                                                 tmp_path: Path) -> None:
    page = pages(leader)
    f = follower(tmp_path, leader)
    first = page.blocks[0]
    batch = batch_from_entries(f.chain, 5, "node-2", first.entries)
    assert len(batch.admin) == 4 and not batch.messages and batch.heartbeat  # genesis + 3
    with pytest.raises(SyncError, match="does not decode"):
        batch_from_entries(f.chain, 5, "node-2", [b"\xa1"])


@pytest.mark.parametrize("doc", [
    None, [], {"tip": 1}, {"tip": "x", "applied_revision": 0, "blocks": []},
    {"tip": 1, "applied_revision": -5, "blocks": []},
    {"tip": 1, "applied_revision": 0, "blocks": [{"height": 0}]},
    {"tip": 1, "applied_revision": 0, "blocks": [
        {"height": 0, "revision": 1, "header": "!!", "signatures": [], "entries": []}]},
    {"tip": 1, "applied_revision": 0, "blocks": [
        {"height": 0, "revision": 1, "header": "AA==", "signatures": [{"node": "n",
                                                                        "sig": "AA=="}],
         "entries": []}]},
])
def test_a_malformed_page_is_a_sync_error(doc: Any) -> None:
    with pytest.raises(SyncError, match="malformed page"):
        parse_page(doc)


def test_catching_up_over_the_api_of_a_running_peer(tmp_path: Path,
                                                    leader: ConsortiumChain) -> None:
    book = TokenBook(tokens_path(leader.store.path))
    token = book.create("peer", "auditor", None, now_ms=wall_clock_ms())
    partner = book.create("acme", "partner", "acme", now_ms=wall_clock_ms())
    app = create_app(leader.store.path)
    app.include_router(create_router(leader.store.path))
    node_set = write_node_set(tmp_path / "node-set.json", dict(leader.certs))
    f = follower(tmp_path, leader)
    with serve_api(app) as url:
        with pytest.raises(SyncError, match="401"):
            fetch_page(Peer("node-1", url, None), 0)
        with pytest.raises(SyncError, match="403"):
            fetch_page(Peer("node-1", url, partner), 0)
        report = catch_up(f.chain, f.store, [Peer("down", "http://127.0.0.1:9", token),
                                             Peer("node-1", url, token)], node_set,
                          page_blocks=2)
    assert "from node-1" in report
    assert hashes(f) == hashes(leader)
    assert f.store.applied_revision() == leader.store.applied_revision()


def test_the_comparison_names_the_node_whose_store_was_changed(
        tmp_path: Path, leader: ConsortiumChain) -> None:
    page = pages(leader)
    held = {n: {b.height: b for b in page.blocks} for n in ("node-1", "node-2", "node-4")}
    assert compare_blocks(held) == []
    b = page.blocks[2]
    changed = bytearray(b.entries[0])
    changed[-1] ^= 1
    held["node-4"][2] = SyncBlock(b.height, b.revision, b.header, b.signatures,
                                  (bytes(changed), *b.entries[1:]))
    other = SyncBlock(3, 0, page.blocks[2].header, (), ())
    held["node-2"][3] = other
    found = [(d.node, d.height, d.what) for d in compare_blocks(held)]
    assert found == [("node-4", 2, "entries"), ("node-2", 3, "header")]

