"""Proofs from a real store: stored subtree hashes, inclusion and consistency proofs.

Every proof the store serves is cross-checked against merkle.RangeHasher recomputing the tree
from all leaf hashes, for every head and every entry of chains with many block sizes, and
against the RFC 9162 reference (tests/test_merkle_reference) for every tree size up to 70, so
that both the stored subtrees (16 leaves or more) and those hashed from entries are used.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_node import proofs
from ledger_node.errors import StoreError, TamperError
from ledger_node.merkle import (
    CompactRange,
    RangeHasher,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from ledger_node.proofs import BadProofRequest, NotInLog
from ledger_node.store import Store, open_reader
from ledger_node.subtrees import (
    MIN_STORED_LEVEL,
    SubtreeReader,
    append_leaves,
    stored_node_count,
)
from tests.chainkit import ChainUnderTest, Device
from tests.fleet import damage
from tests.test_merkle_reference import ref_path, ref_proof

# Block sizes chosen to cross every power-of-two boundary up to 128 entries, in odd steps.
BLOCK_SIZES = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 1, 1, 31, 2, 6]


def build(path: Path, sizes: list[int]) -> ChainUnderTest:
    """A chain with genesis + two enrolments in block 0, then one block per size given."""
    a, b = Device("truck-1"), Device("truck-2")
    tc = ChainUnderTest(path, [a, b])
    for n in sizes:
        msgs = [(a if i % 3 else b) for i in range(n)]
        tc.apply([d.message(d.reading()) for d in msgs])
    return tc


def leaf_hashes(conn: sqlite3.Connection) -> list[bytes]:
    return [leaf_hash(bytes(r[0])) for r in conn.execute("SELECT data FROM entries ORDER BY idx")]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("proofs") / "ledger.sqlite"
    build(path, BLOCK_SIZES).store.close()
    return path


def test_append_leaves_matches_compact_range_and_stores_every_subtree_of_16_or_more() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(100)]
    reference = RangeHasher(leaves)
    frontier, stored = CompactRange(), {}
    for chunk in ([0], [1, 2], list(range(3, 10)), list(range(10, 37)), list(range(37, 100))):
        frontier, nodes = append_leaves(frontier, [leaves[i] for i in chunk])
        stored.update({(lvl, idx): h for lvl, idx, h in nodes})
    expect = CompactRange()
    expect.extend(leaves)
    assert frontier == expect and frontier.root() == reference(0, 100)
    want = {(lvl, i) for lvl in range(MIN_STORED_LEVEL, 7) for i in range(100 >> lvl)}
    assert set(stored) == want and len(want) == stored_node_count(100) == 6 + 3 + 1
    for (lvl, i), h in stored.items():
        assert h == reference(i << lvl, (i + 1) << lvl)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 20), max_size=12))
def test_append_leaves_in_any_chunks_gives_the_compact_range(chunks: list[int]) -> None:
    leaves = [leaf_hash(i.to_bytes(2, "big")) for i in range(sum(chunks))]
    frontier, pos, seen = CompactRange(), 0, 0
    for n in chunks:
        frontier, nodes = append_leaves(frontier, leaves[pos:pos + n])
        pos += n
        seen += len(nodes)
    assert frontier.size == len(leaves)
    assert frontier.root() == RangeHasher(leaves)(0, len(leaves))
    assert seen == stored_node_count(len(leaves))


def test_every_inclusion_proof_at_every_head_matches_the_recomputed_tree(store: Path) -> None:
    conn = open_reader(store)
    hasher = RangeHasher(leaf_hashes(conn))
    reader = SubtreeReader(conn)
    checked, want = 0, 0
    for height in range(proofs.latest_height(conn) + 1):
        head = proofs.signed_head(conn, height)
        size = head.header.size
        assert hasher(0, size) == head.header.root
        want += size
        for index in range(size):
            p = proofs.inclusion(conn, index, head, reader)
            assert list(p.hashes) == inclusion_proof(index, size, hasher)
            verify_inclusion(leaf_hash(p.entry.data), index, size, p.hashes, head.header.root)
            checked += 1
    conn.close()
    assert checked == want == sum(3 + sum(BLOCK_SIZES[:h]) for h in range(len(BLOCK_SIZES) + 1))


def test_every_consistency_proof_between_heads_matches_the_recomputed_tree(store: Path) -> None:
    conn = open_reader(store)
    hasher = RangeHasher(leaf_hashes(conn))
    top = proofs.latest_height(conn)
    for h1 in range(top + 1):
        for h2 in range(h1, top + 1):
            p = proofs.consistency(conn, h1, h2)
            s1, s2 = p.old.header.size, p.new.header.size
            assert list(p.hashes) == (consistency_proof(s1, s2, hasher) if s1 < s2 else [])
            verify_consistency(s1, s2, p.hashes, p.old.header.root, p.new.header.root)
    assert proofs.consistency(conn, 3).new.height == top
    conn.close()


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=6))
def test_store_proofs_for_random_block_sizes_match_the_reference(sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp) / "l.sqlite", sizes).store.close()
        conn = open_reader(Path(tmp) / "l.sqlite")
        leaves = leaf_hashes(conn)
        hasher, total = RangeHasher(leaves), len(leaves)
        top = proofs.latest_height(conn)
        for h in range(top + 1):
            size = proofs.signed_head(conn, h).header.size
            for i in range(size):
                got = proofs.inclusion(conn, i, h).hashes
                assert list(got) == inclusion_proof(i, size, hasher)
            want = consistency_proof(size, total, hasher) if size < total else []
            assert list(proofs.consistency(conn, h, top).hashes) == want
        conn.close()


def test_requests_outside_the_log_are_named(store: Path) -> None:
    conn = open_reader(store)
    top = proofs.latest_height(conn)
    size = proofs.signed_head(conn).header.size
    with pytest.raises(NotInLog, match=f"no entry {size}: the log has {size} entries"):
        proofs.inclusion(conn, size)
    with pytest.raises(NotInLog, match=f"no block at height {top + 1}"):
        proofs.inclusion(conn, 0, top + 1)
    with pytest.raises(BadProofRequest, match="committed in block 16; the head at height 2"):
        proofs.inclusion(conn, size - 1, 2)
    with pytest.raises(BadProofRequest, match=r"from \(5\) must not be after to \(4\)"):
        proofs.consistency(conn, 5, 4)
    with pytest.raises(NotInLog, match=f"no block at height {top + 1}"):
        proofs.consistency(conn, top + 1)
    with pytest.raises(BadProofRequest, match=r"must be an integer in \[0, 2\*\*63\)"):
        proofs.entry(conn, 1 << 63)
    conn.close()


def test_every_proof_of_every_tree_size_to_70_matches_the_rfc_reference(tmp_path: Path) -> None:
    db = tmp_path / "l.sqlite"
    build(db, [1] * 67).store.close()  # one entry a block: a head at every size from 3 to 70
    conn = open_reader(db)
    data = [bytes(r[0]) for r in conn.execute("SELECT data FROM entries ORDER BY idx")]
    heads = [proofs.signed_head(conn, h) for h in range(proofs.latest_height(conn) + 1)]
    assert [h.header.size for h in heads] == list(range(3, 71))
    for head in heads:
        size, reader = head.header.size, SubtreeReader(conn)
        for index in range(size):
            got = proofs.inclusion(conn, index, head, reader).hashes
            assert list(got) == ref_path(index, data[:size]), (index, size)
    for old in heads:
        for new in heads[old.height + 1:]:
            got = proofs.consistency(conn, old.height, new.height).hashes
            assert list(got) == ref_proof(old.header.size, data[:new.header.size])
    # Sizes 1 and 2 (a chain starts at 3): the reader on its own, with the leaves as entries.
    for size in range(1, 71):
        reader = SubtreeReader(conn)
        assert all(inclusion_proof(i, size, reader) == ref_path(i, data[:size])
                   for i in range(size))
        assert all(consistency_proof(m, size, reader) == ref_proof(m, data[:size])
                   for m in range(1, size))
    conn.close()


def test_the_reader_stores_no_small_subtree_and_memoises_what_it_hashes(tmp_path: Path) -> None:
    db = tmp_path / "l.sqlite"
    build(db, [40]).store.close()
    conn = open_reader(db)
    assert conn.execute("SELECT COUNT(*) FROM merkle_nodes WHERE level < ?",
                        (MIN_STORED_LEVEL,)).fetchone()[0] == 0
    hasher = RangeHasher(leaf_hashes(conn))
    reader = SubtreeReader(conn)
    assert reader.node(3, 2) == hasher(16, 24)  # one query for entries 16 to 23
    with sqlite3.connect(db) as writer:
        writer.execute("DELETE FROM entries WHERE idx BETWEEN 16 AND 23")
    writer.close()
    assert reader.node(2, 5) == hasher(20, 24) and reader.node(0, 17) == hasher(17, 18)
    with pytest.raises(StoreError, match="entry 16 is not in the store"):
        SubtreeReader(conn).node(1, 8)
    conn.close()


def test_a_tampered_subtree_hash_makes_the_node_refuse_to_serve_the_proof(tmp_path: Path) -> None:
    db = tmp_path / "l.sqlite"
    build(db, [20, 4]).store.close()  # sizes 3, 23, 27
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE merkle_nodes SET hash = ? WHERE level = 4 AND idx = 0", (bytes(32),))
    conn = open_reader(db)
    with pytest.raises(TamperError, match="entry 20 against block 2: the store does not "
                                          "reproduce the signed root"):
        proofs.inclusion(conn, 20)
    with pytest.raises(TamperError, match="refusing to serve this proof"):
        proofs.consistency(conn, 1, 2)
    conn.close()


def _reader_after(tmp_path: Path, sql: str) -> sqlite3.Connection:
    """A reader of a 20-entry log after `sql` damaged its store."""
    db = tmp_path / "l.sqlite"
    build(db, [20]).store.close()
    damage(db, lambda conn: conn.execute(sql))
    return open_reader(db)


def test_a_missing_subtree_hash_is_named(tmp_path: Path) -> None:
    conn = _reader_after(tmp_path, "DELETE FROM merkle_nodes WHERE level = 4 AND idx = 0")
    with pytest.raises(TamperError, match=r"merkle node \(level 4, index 0\) is not in the store"):
        proofs.inclusion(conn, 20)
    conn.close()


def test_an_entry_missing_under_a_small_subtree_is_named(tmp_path: Path) -> None:
    conn = _reader_after(tmp_path, "DELETE FROM entries WHERE idx IN (5, 6)")
    with pytest.raises(TamperError, match=r"entry 0 against block 1: entry 5 is not in the "
                                          r"store; refusing to serve this proof"):
        proofs.inclusion(conn, 0)  # its sibling at level 2 covers entries 4 to 7
    with pytest.raises(TamperError, match=r"consistency of block 0 with block 1: entry 5 is "
                                          r"not in the store"):
        proofs.consistency(conn, 0, 1)
    conn.close()


def test_a_version_1_store_gets_its_subtree_hashes_rebuilt_on_open(tmp_path: Path) -> None:
    db = tmp_path / "l.sqlite"
    build(db, [3, 5, 8, 20]).store.close()
    with sqlite3.connect(db) as conn:
        before = conn.execute("SELECT * FROM merkle_nodes ORDER BY level, idx").fetchall()
        conn.execute("DELETE FROM merkle_nodes")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (b"1",))
    Store(db).close()
    with sqlite3.connect(db) as conn:
        after = conn.execute("SELECT * FROM merkle_nodes ORDER BY level, idx").fetchall()
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
    assert after == before and len(before) == stored_node_count(39) and bytes(version) == b"3"


def test_a_version_2_store_loses_its_small_subtree_rows_once_and_still_proves(
        tmp_path: Path) -> None:
    db = tmp_path / "l.sqlite"
    build(db, BLOCK_SIZES).store.close()
    with sqlite3.connect(db) as conn:  # as schema 2 wrote it: every subtree of 2+ leaves
        before = conn.execute("SELECT * FROM merkle_nodes ORDER BY level, idx").fetchall()
        hasher = RangeHasher(leaf_hashes(conn))
        size = len(leaf_hashes(conn))
        old = [(lvl, i, hasher(i << lvl, (i + 1) << lvl))
               for lvl in range(1, MIN_STORED_LEVEL) for i in range(size >> lvl)]
        conn.executemany("INSERT INTO merkle_nodes VALUES (?, ?, ?)", old)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (b"2",))
        assert conn.execute("SELECT COUNT(*) FROM merkle_nodes").fetchone()[0] == \
            size - size.bit_count()
    Store(db).close()
    with sqlite3.connect(db) as conn:
        after = conn.execute("SELECT * FROM merkle_nodes ORDER BY level, idx").fetchall()
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
        conn.execute("INSERT INTO merkle_nodes VALUES (1, 0, ?)", (old[0][2],))
    assert after == before and len(after) == stored_node_count(size) and bytes(version) == b"3"
    test_every_inclusion_proof_at_every_head_matches_the_recomputed_tree(db)
    test_every_consistency_proof_between_heads_matches_the_recomputed_tree(db)
    Store(db).close()  # done once: a version-3 store is not migrated again at every open
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM merkle_nodes WHERE level < ?",
                            (MIN_STORED_LEVEL,)).fetchone()[0] == 1


def test_a_store_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "l.sqlite"
    Store(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (b"9",))
    with pytest.raises(StoreError, match="has schema 9; this node knows only up to 3"):
        Store(db)


def test_block_commit_writes_the_subtree_hashes_in_the_same_transaction(tmp_path: Path) -> None:
    db = tmp_path / "l.sqlite"
    tc = build(db, [5, 30, 40])
    conn = open_reader(db)
    rows = [tuple(r) for r in conn.execute("SELECT level, idx FROM merkle_nodes "
                                           "ORDER BY level, idx")]
    size = tc.chain.size
    assert size == 78 and rows == [(4, 0), (4, 1), (4, 2), (4, 3), (5, 0), (5, 1), (6, 0)]
    assert len(rows) == stored_node_count(size)
    conn.close()
    tc.store.close()


def test_device_history_is_read_from_the_operator_entries(tmp_path: Path) -> None:
    from hsm import SoftwareSigner

    a, b = Device("truck-1"), Device("truck-10")  # one id a prefix of the other
    tc = ChainUnderTest(tmp_path / "l.sqlite", [a, b])  # genesis 0, enrolments 1, 2
    tc.apply([a.message(a.reading())])  # 3
    new = SoftwareSigner.generate()
    tc.apply(admin=[tc.pki.rotate("truck-1", new, a.signer.kid)])  # 4
    tc.apply(admin=[tc.pki.revoke("truck-10")])  # 5
    tc.apply(admin=[tc.pki.revoke("truck-1", "retired")])  # 6
    tc.store.close()
    conn = open_reader(tmp_path / "l.sqlite")
    history = proofs.device_history(conn, "truck-1")
    assert [(r.entry.index, r.type) for r in history] == [
        (1, "device_enrolled"), (4, "device_rotated"), (6, "device_revoked")]
    assert [r.entry.height for r in history] == [0, 2, 4]
    assert all(r.op.operator == "operator-1" for r in history)
    assert [r.entry.index for r in proofs.device_history(conn, "truck-1", size=6)] == [1, 4]
    assert [r.type for r in proofs.device_history(conn, "truck-10")] == [
        "device_enrolled", "device_revoked"]
    assert proofs.enrolment_entry(conn, "truck-10").index == 2
    with pytest.raises(NotInLog, match="no device 'truck-2' is enrolled"):
        proofs.enrolment_entry(conn, "truck-2")
    g = proofs.genesis(conn)
    assert g.entry.index == 0 and g.ca == tc.pki.ca_cert and g.node == "node-1"
    assert proofs.node_keys(conn) == {"node-1": tc.node.public_key_der()}
    conn.close()


def test_an_operator_entry_that_no_longer_checks_is_not_served(tmp_path: Path) -> None:
    from ledger_node.bundle import bundle_for_device

    a = Device("truck-1")
    tc = ChainUnderTest(tmp_path / "l.sqlite", [a])
    tc.apply([a.message(a.reading())])
    tc.store.close()
    with sqlite3.connect(tmp_path / "l.sqlite") as conn:
        data = bytearray(conn.execute("SELECT data FROM entries WHERE idx = 1").fetchone()[0])
        data[-1] ^= 1  # the operator's signature
        conn.execute("UPDATE entries SET data = ? WHERE idx = 1", (bytes(data),))
    conn = open_reader(tmp_path / "l.sqlite")
    with pytest.raises(TamperError, match=r"entry 1 \(device_enrolled of 'truck-1'\): "
                                          r"committed operator entry no longer checks: "
                                          r"bad_signature"):
        bundle_for_device(conn, "truck-1")
    conn.close()
