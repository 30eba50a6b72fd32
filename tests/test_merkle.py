"""Unit tests for ledger_node.merkle: known answers, proof shapes, preconditions, CompactRange."""

from __future__ import annotations

import hashlib

import pytest

from ledger_node.errors import ProofError, RootMismatchError
from ledger_node.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    CompactRange,
    NodeId,
    RangeHasher,
    consistency_proof,
    consistency_proof_ranges,
    hash_from_subtrees,
    inclusion_proof,
    inclusion_proof_ranges,
    leaf_hash,
    node_hash,
    perfect_subtrees,
    root_from_inclusion_proof,
    root_from_leaf_hashes,
    roots_from_consistency_proof,
    verify_consistency,
    verify_inclusion,
)

# The 8-entry tree of transparency-dev/merkle's (and Certificate Transparency's) tests: entry
# bytes and the root at every size 1..8.
ENTRIES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
)]  # fmt: skip
ROOTS = [bytes.fromhex(h) for h in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]  # fmt: skip
LEAVES = [leaf_hash(e) for e in ENTRIES]
H = [hashlib.sha256(bytes([i])).digest() for i in range(4)]


def test_hashes_are_the_rfc_9162_ones() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"") == ROOTS[0] == hashlib.sha256(b"\x00").digest()
    assert node_hash(H[0], H[1]) == hashlib.sha256(b"\x01" + H[0] + H[1]).digest()
    assert leaf_hash(bytearray(b"ab")) == leaf_hash(memoryview(b"ab")) == leaf_hash(b"ab")


@pytest.mark.parametrize("size", range(9))
def test_root_of_known_tree_at_every_size(size: int) -> None:
    want = ROOTS[size - 1] if size else EMPTY_ROOT
    assert root_from_leaf_hashes(LEAVES[:size]) == want
    cr = CompactRange()
    cr.extend(LEAVES[:size])
    assert cr.root() == want
    assert RangeHasher(LEAVES)(0, size) == want


def test_hashing_rejects_values_that_are_not_32_byte_hashes() -> None:
    with pytest.raises(ProofError, match="right must be a 32-byte hash, got 31 bytes"):
        node_hash(H[0], H[1][:31])
    with pytest.raises(ProofError, match=r"hashes\[1\]"):
        root_from_leaf_hashes([H[0], "not bytes"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        leaf_hash("text")  # type: ignore[arg-type]


def test_perfect_subtrees_is_the_compact_range_decomposition() -> None:
    assert perfect_subtrees(0, 0) == []
    assert perfect_subtrees(0, 5) == [NodeId(2, 0), NodeId(0, 4)]
    assert perfect_subtrees(3, 13) == [NodeId(0, 3), NodeId(2, 1), NodeId(2, 2), NodeId(0, 12)]
    assert perfect_subtrees(0, 2**64 - 1)[0] == NodeId(63, 0)
    assert (NodeId(2, 3).begin, NodeId(2, 3).end) == (12, 16)
    with pytest.raises(ProofError):
        perfect_subtrees(5, 4)
    with pytest.raises(ProofError):
        perfect_subtrees(0, 2**64)


def test_hash_from_subtrees_folds_right_to_left() -> None:
    assert hash_from_subtrees([]) == EMPTY_ROOT
    assert hash_from_subtrees([H[0]]) == H[0]
    assert hash_from_subtrees(H[:3]) == node_hash(H[0], node_hash(H[1], H[2]))


def test_proof_ranges_follow_path_and_subproof() -> None:
    assert inclusion_proof_ranges(0, 1) == []
    assert inclusion_proof_ranges(2, 5) == [(3, 4), (0, 2), (4, 5)]
    assert inclusion_proof_ranges(6, 7) == [(4, 6), (0, 4)]
    assert consistency_proof_ranges(3, 3) == []
    assert consistency_proof_ranges(4, 7) == [(4, 7)]
    assert consistency_proof_ranges(1, 2) == [(1, 2)]
    assert consistency_proof_ranges(6, 8) == [(4, 6), (6, 8), (0, 4)]
    assert consistency_proof_ranges(3, 7) == [(2, 3), (3, 4), (0, 2), (4, 7)]


def test_proof_ranges_work_up_to_2_to_the_64_leaves() -> None:
    top = 2**64 - 1
    assert len(inclusion_proof_ranges(0, top)) == 64
    path = inclusion_proof_ranges(top - 1, top)
    assert (len(path), path[0], path[-1]) == (63, (top - 3, top - 1), (0, 2**63))
    assert consistency_proof_ranges(2**63, top)[-1] == (2**63, top)
    fake = [H[0]] * 64
    assert len(root_from_inclusion_proof(H[1], 0, top, fake)) == HASH_SIZE


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 1), (5, 3), (-1, 4), (0, 2**64)])
def test_inclusion_needs_index_below_size(index: int, size: int) -> None:
    with pytest.raises(ProofError):
        inclusion_proof_ranges(index, size)
    with pytest.raises(ProofError):
        verify_inclusion(LEAVES[0], index, size, [], ROOTS[0])


@pytest.mark.parametrize(("size1", "size2"), [(0, 0), (0, 5), (2, 1), (1, 2**64)])
def test_consistency_needs_0_lt_size1_le_size2(size1: int, size2: int) -> None:
    with pytest.raises(ProofError):
        consistency_proof_ranges(size1, size2)
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, [], EMPTY_ROOT, EMPTY_ROOT)


def test_consistency_from_the_empty_tree_is_refused_even_with_an_empty_proof() -> None:
    # transparency-dev/merkle today (and its vectors): "consistency proof from empty tree is
    # meaningless". Callers handle a size-0 head themselves: anything extends it.
    with pytest.raises(ProofError, match="empty tree"):
        verify_consistency(0, 3, [], EMPTY_ROOT, ROOTS[2])


def test_equal_sizes_need_an_empty_proof_and_equal_roots() -> None:
    verify_consistency(4, 4, [], ROOTS[3], ROOTS[3])
    assert roots_from_consistency_proof(4, 4, [], ROOTS[3]) == (ROOTS[3], ROOTS[3])
    with pytest.raises(ProofError, match="proof has 1 hashes, want 0"):
        verify_consistency(4, 4, [ROOTS[3]], ROOTS[3], ROOTS[3])
    with pytest.raises(RootMismatchError) as info:
        verify_consistency(4, 4, [], ROOTS[3], ROOTS[2])
    assert (info.value.expected_root, info.value.calculated_root) == (ROOTS[2], ROOTS[3])


def test_proofs_of_the_known_tree_verify_and_name_the_bad_root() -> None:
    get = RangeHasher(LEAVES)
    proof = inclusion_proof(2, 5, get)
    assert proof == [LEAVES[3], node_hash(LEAVES[0], LEAVES[1]), LEAVES[4]]
    verify_inclusion(LEAVES[2], 2, 5, proof, ROOTS[4])
    with pytest.raises(RootMismatchError) as info:
        verify_inclusion(LEAVES[2], 2, 5, proof, ROOTS[5])
    assert info.value.calculated_root == ROOTS[4]
    cproof = consistency_proof(3, 7, get)
    verify_consistency(3, 7, cproof, ROOTS[2], ROOTS[6])
    with pytest.raises(RootMismatchError) as info:
        verify_consistency(3, 7, cproof, ROOTS[3], ROOTS[6])
    assert (info.value.expected_root, info.value.calculated_root) == (ROOTS[3], ROOTS[2])


def test_malformed_proofs_fail_before_hashing() -> None:
    get = RangeHasher(LEAVES)
    proof = inclusion_proof(2, 5, get)
    with pytest.raises(ProofError, match="proof has 2 hashes, want 3"):
        root_from_inclusion_proof(LEAVES[2], 2, 5, proof[:2])
    with pytest.raises(ProofError, match=r"proof\[1\] must be a 32-byte hash"):
        root_from_inclusion_proof(LEAVES[2], 2, 5, [proof[0], proof[1][:-1], proof[2]])
    with pytest.raises(ProofError, match="leaf_hash"):
        root_from_inclusion_proof(ENTRIES[2], 2, 5, proof)
    with pytest.raises(ProofError, match="root must be"):
        verify_inclusion(LEAVES[2], 2, 5, proof, ROOTS[4][:16])
    with pytest.raises(ProofError, match="root1"):
        verify_consistency(3, 7, consistency_proof(3, 7, get), b"", ROOTS[6])


def test_get_range_hash_must_return_32_byte_hashes() -> None:
    with pytest.raises(ProofError, match="get_range_hash"):
        inclusion_proof(0, 4, lambda begin, end: b"short")


def test_range_hasher_bounds_and_empty_range() -> None:
    get = RangeHasher(LEAVES[:3])
    assert get(1, 1) == EMPTY_ROOT
    assert get(2, 3) == LEAVES[2]
    with pytest.raises(ProofError):
        get(0, 4)
    with pytest.raises(ProofError):
        get(2, 1)
    with pytest.raises(ProofError):
        RangeHasher([b"x" * 31])


def test_compact_range_serialises_size_then_subtree_hashes() -> None:
    cr = CompactRange()
    assert cr.to_bytes() == bytes(8) and cr.root() == EMPTY_ROOT and cr.size == 0
    cr.extend(LEAVES[:5])
    get = RangeHasher(LEAVES)
    assert cr.hashes == (get(0, 4), get(4, 5))
    assert cr.to_bytes() == (5).to_bytes(8, "big") + get(0, 4) + get(4, 5)
    assert CompactRange.from_bytes(cr.to_bytes()) == cr


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        bytes(7),
        bytes(8) + H[0],
        (3).to_bytes(8, "big") + H[0],
        (1).to_bytes(8, "big") + H[0] + b"\x00",
    ],
)
def test_compact_range_rejects_malformed_bytes(blob: bytes) -> None:
    with pytest.raises(ProofError):
        CompactRange.from_bytes(blob)


def test_compact_range_append_is_all_or_nothing_and_copies_are_independent() -> None:
    cr = CompactRange()
    cr.extend(LEAVES[:3])
    before = cr.to_bytes()
    with pytest.raises(ProofError):
        cr.extend([LEAVES[3], b"bad"])
    with pytest.raises(ProofError):
        cr.append(ENTRIES[3])
    assert cr.to_bytes() == before
    other = cr.copy()
    other.append(LEAVES[3])
    assert (cr.size, cr.root()) == (3, ROOTS[2])
    assert (other.size, other.root()) == (4, ROOTS[3])
    assert cr != other and cr != "CompactRange"


def test_compact_range_refuses_to_grow_past_2_to_the_64_minus_1() -> None:
    full = CompactRange.from_bytes((2**64 - 1).to_bytes(8, "big") + H[0] * 64)
    assert full.size == 2**64 - 1
    with pytest.raises(ProofError):
        full.append(H[1])
    assert full.size == 2**64 - 1
