"""Cross-check ledger_node.merkle against a slow reference written straight from RFC 9162.

The reference below transcribes MTH (§2.1.1), PATH (§2.1.3.1) and SUBPROOF (§2.1.4.1) as the
RFC states them: recursive, over lists of entries, with its own hashing. Hypothesis feeds both
implementations the same random trees; the fast one must give the same roots and proofs, and its
verifiers must accept exactly those proofs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_node.errors import ProofError
from ledger_node.merkle import (
    CompactRange,
    RangeHasher,
    consistency_proof,
    hash_from_subtrees,
    inclusion_proof,
    leaf_hash,
    perfect_subtrees,
    root_from_inclusion_proof,
    root_from_leaf_hashes,
    roots_from_consistency_proof,
    verify_consistency,
    verify_inclusion,
)

# --- the reference, from the RFC text ------------------------------------------------------------


def ref_hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def ref_k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: Sequence[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return ref_hash(b"")
    if n == 1:
        return ref_hash(b"\x00" + d[0])
    k = ref_k(n)
    return ref_hash(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = ref_k(n)
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = ref_k(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    return ref_subproof(m, d, True)


# --- strategies ----------------------------------------------------------------------------------

FAST = settings(max_examples=200, deadline=None, database=None)
SLOW = settings(max_examples=50, deadline=None, database=None)


@st.composite
def entry_lists(draw: st.DrawFn, max_size: int) -> list[bytes]:
    """Entries of a random tree: arbitrary bytes for small trees, salted counters (with repeats)
    for big ones, so every size up to max_size is about equally likely and generation is cheap."""
    n = draw(st.integers(0, max_size))
    if n <= 24 and draw(st.booleans()):
        return draw(st.lists(st.binary(max_size=40), min_size=n, max_size=n))
    salt = draw(st.binary(max_size=8))
    period = draw(st.integers(1, n + 1))
    return [salt + (i % period).to_bytes(2, "big") for i in range(n)]


def _leaf_hashes(entries: Sequence[bytes]) -> list[bytes]:
    return [leaf_hash(e) for e in entries]


# --- roots ---------------------------------------------------------------------------------------


@FAST
@given(entry_lists(300))
def test_root_of_random_tree_matches_reference_mth(entries: list[bytes]) -> None:
    want = ref_mth(entries)
    hashes = _leaf_hashes(entries)
    assert root_from_leaf_hashes(hashes) == want
    assert RangeHasher(hashes)(0, len(hashes)) == want
    cr = CompactRange()
    cr.extend(hashes)
    assert cr.root() == want


@SLOW
@given(entry_lists(200), st.data())
def test_compact_range_matches_reference_after_every_append_and_round_trip(
    entries: list[bytes], data: st.DataObject
) -> None:
    resume_at = data.draw(st.integers(0, len(entries)), label="resume_at")
    cr = CompactRange()
    assert cr.root() == ref_mth([])
    for i, h in enumerate(_leaf_hashes(entries)):
        if i == resume_at:  # persist, forget, resume from the bytes alone
            blob = cr.to_bytes()
            assert len(blob) == 8 + 32 * bin(i).count("1")
            cr = CompactRange.from_bytes(blob)
            assert cr.size == i and cr.to_bytes() == blob
        cr.append(h)
        assert cr.size == i + 1
        assert cr.root() == ref_mth(entries[: i + 1])
        restored = CompactRange.from_bytes(cr.to_bytes())
        assert restored == cr and restored.root() == cr.root()


# --- proofs --------------------------------------------------------------------------------------


@SLOW
@given(entry_lists(100))
def test_inclusion_proofs_for_every_index_match_reference_path_and_verify(
    entries: list[bytes],
) -> None:
    hashes = _leaf_hashes(entries)
    root = ref_mth(entries)
    get = RangeHasher(hashes)
    for index, h in enumerate(hashes):
        proof = inclusion_proof(index, len(hashes), get)
        assert proof == ref_path(index, entries)
        verify_inclusion(h, index, len(hashes), proof, root)
        assert root_from_inclusion_proof(h, index, len(hashes), proof) == root


@FAST
@given(entry_lists(300), st.data())
def test_consistency_proofs_for_random_size_pairs_match_reference_subproof_and_verify(
    entries: list[bytes], data: st.DataObject
) -> None:
    size2 = len(entries)
    if size2 == 0:
        return
    get = RangeHasher(_leaf_hashes(entries))
    root2 = ref_mth(entries)
    for _ in range(3):
        size1 = data.draw(st.integers(1, size2), label="size1")
        root1 = ref_mth(entries[:size1])
        proof = consistency_proof(size1, size2, get)
        assert proof == ref_proof(size1, entries)
        verify_consistency(size1, size2, proof, root1, root2)
        assert roots_from_consistency_proof(size1, size2, proof, root1) == (root1, root2)


@FAST
@given(entry_lists(300), st.data())
def test_tampered_proofs_of_random_trees_fail(entries: list[bytes], data: st.DataObject) -> None:
    size = len(entries)
    if size < 2:
        return
    hashes = _leaf_hashes(entries)
    get = RangeHasher(hashes)
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = inclusion_proof(index, size, get)
    at = data.draw(st.integers(0, len(proof) - 1), label="at")
    bit = data.draw(st.integers(0, 255), label="bit")
    bad = bytearray(proof[at])
    bad[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ProofError):
        verify_inclusion(
            hashes[index], index, size, [*proof[:at], bytes(bad), *proof[at + 1 :]], get(0, size)
        )
    size1 = data.draw(st.integers(1, size - 1), label="size1")
    cproof = consistency_proof(size1, size, get)
    with pytest.raises(ProofError):
        verify_consistency(size1, size, cproof[:-1], get(0, size1), get(0, size))
    with pytest.raises(ProofError):
        verify_consistency(size1, size, cproof, get(0, size), get(0, size1))


@FAST
@given(entry_lists(300), st.data())
def test_store_style_range_hash_from_perfect_subtrees_matches_reference(
    entries: list[bytes], data: st.DataObject
) -> None:
    """A store that keeps only perfect-subtree hashes can answer every proof range."""
    size = len(entries)
    if size == 0:
        return
    get = RangeHasher(_leaf_hashes(entries))
    index = data.draw(st.integers(0, size - 1), label="index")
    size1 = data.draw(st.integers(1, size), label="size1")

    def from_store(begin: int, end: int) -> bytes:
        nodes = perfect_subtrees(begin, end)
        assert [n.begin for n in nodes[1:]] == [n.end for n in nodes[:-1]]
        return hash_from_subtrees([get(n.begin, n.end) for n in nodes])

    assert inclusion_proof(index, size, from_store) == ref_path(index, entries)
    assert consistency_proof(size1, size, from_store) == ref_proof(size1, entries)
    assert from_store(0, size) == ref_mth(entries)


def test_every_proof_of_every_tree_up_to_20_leaves_matches_the_reference() -> None:
    entries = [i.to_bytes(1, "big") * i for i in range(20)]
    for size in range(1, len(entries) + 1):
        tree = entries[:size]
        get = RangeHasher(_leaf_hashes(tree))
        root = ref_mth(tree)
        for index in range(size):
            proof = inclusion_proof(index, size, get)
            assert proof == ref_path(index, tree)
            verify_inclusion(leaf_hash(tree[index]), index, size, proof, root)
        for size1 in range(1, size + 1):
            proof = consistency_proof(size1, size, get)
            assert proof == ref_proof(size1, tree)
            verify_consistency(size1, size, proof, ref_mth(tree[:size1]), root)
