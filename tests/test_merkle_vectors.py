"""RFC 9162 proof vectors from transparency-dev/merkle, plus broken twins of our own.

The vectors in tests/data/rfc9162/ (inclusion/, consistency/; Apache-2.0, see LICENSE there) are
transparency-dev/merkle's testdata: base64 hashes, ``wantErr`` says whether verification must
fail. Its subtreeinclusion/ and subtreeconsistency/ folders are not copied: they test proofs for
an arbitrary subtree ``[start, end)`` (draft-ietf-plants-merkle-tree-certs), a scheme RFC 9162
does not define and this module does not implement.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from ledger_node.errors import ProofError, RootMismatchError
from ledger_node.merkle import (
    root_from_inclusion_proof,
    roots_from_consistency_proof,
    verify_consistency,
    verify_inclusion,
)

DATA = Path(__file__).parent / "data" / "rfc9162"
FILES = sorted(DATA.rglob("*.json"))
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


@dataclass(frozen=True)
class Inclusion:
    leaf_hash: bytes
    index: int
    size: int
    proof: tuple[bytes, ...]
    root: bytes

    def verify(self) -> None:
        verify_inclusion(self.leaf_hash, self.index, self.size, list(self.proof), self.root)


@dataclass(frozen=True)
class Consistency:
    size1: int
    size2: int
    proof: tuple[bytes, ...]
    root1: bytes
    root2: bytes

    def verify(self) -> None:
        verify_consistency(self.size1, self.size2, list(self.proof), self.root1, self.root2)


Case = Inclusion | Consistency


def _b64(text: str | None) -> bytes:
    return base64.b64decode(text or "", validate=True)


def load(path: Path) -> tuple[Case, bool]:
    """Return the vector in ``path`` and its wantErr flag."""
    raw = json.loads(path.read_text())
    proof = tuple(_b64(h) for h in raw["proof"] or [])
    case: Case
    if "leafIdx" in raw:
        case = Inclusion(
            _b64(raw["leafHash"]), raw["leafIdx"], raw["treeSize"], proof, _b64(raw["root"])
        )
    else:
        case = Consistency(
            raw["size1"], raw["size2"], proof, _b64(raw["root1"]), _b64(raw["root2"])
        )
    return case, bool(raw["wantErr"])


def _name(path: Path) -> str:
    return path.relative_to(DATA).as_posix()


VECTORS = {_name(p): load(p) for p in FILES}
VALID = {name: case for name, (case, want_err) in VECTORS.items() if not want_err}


def test_every_vector_file_is_collected_from_both_folders() -> None:
    assert len(FILES) == 196
    assert {name.split("/")[0] for name in VECTORS} == {"inclusion", "consistency"}
    assert len(VALID) == 12


@pytest.mark.parametrize("path", FILES, ids=_name)
def test_vector_verifies_exactly_when_it_should(path: Path) -> None:
    case, want_err = load(path)
    if want_err:
        with pytest.raises(ProofError):
            case.verify()
    else:
        case.verify()


@pytest.mark.parametrize("name", sorted(n for n, c in VALID.items() if isinstance(c, Inclusion)))
def test_valid_inclusion_vector_recomputes_its_root(name: str) -> None:
    case = VALID[name]
    assert isinstance(case, Inclusion)
    assert root_from_inclusion_proof(case.leaf_hash, case.index, case.size, case.proof) == case.root


@pytest.mark.parametrize("name", sorted(n for n, c in VALID.items() if isinstance(c, Consistency)))
def test_valid_consistency_vector_recomputes_both_roots(name: str) -> None:
    case = VALID[name]
    assert isinstance(case, Consistency)
    got = roots_from_consistency_proof(case.size1, case.size2, case.proof, case.root1)
    assert got == (case.root1, case.root2)


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8 % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


def _proof_twins(case: Case) -> dict[str, Case]:
    proof, extra = case.proof, SOME_HASH
    twins: dict[str, Case] = {
        "trailing-hash": replace(case, proof=(*proof, extra)),
        "preceding-hash": replace(case, proof=(extra, *proof)),
    }
    if proof:
        twins["truncated-proof"] = replace(case, proof=proof[:-1])
        twins["dropped-first-hash"] = replace(case, proof=proof[1:])
        twins["first-and-last-hash-swapped"] = replace(
            case, proof=(proof[-1], *proof[1:-1], proof[0])
        )
    for i, h in enumerate(proof):
        for bit in (0, 131, 255):
            flipped = (*proof[:i], _flip(h, bit), *proof[i + 1 :])
            twins[f"proof[{i}]-bit-{bit}-flipped"] = replace(case, proof=flipped)
    return twins


def broken_twins(case: Case) -> dict[str, Case]:
    """Deliberately broken variants of a valid vector; every one must fail verification.

    Size changes are limited to ones that change the proof's shape: a change that keeps it (see
    test_size_change_that_keeps_the_proof_shape_is_caught_by_the_signed_head) cannot be detected
    from the proof alone.
    """
    twins = _proof_twins(case)
    if isinstance(case, Inclusion):
        twins |= {
            "index-plus-1": replace(case, index=case.index + 1),
            "index-minus-1": replace(case, index=case.index - 1),
            "index-xor-1": replace(case, index=case.index ^ 1),
            "size-times-2": replace(case, size=case.size * 2),
            "size-div-2": replace(case, size=case.size // 2),
            "size-zero": replace(case, size=0),
            "leaf-bit-flipped": replace(case, leaf_hash=_flip(case.leaf_hash, 7)),
            "root-bit-flipped": replace(case, root=_flip(case.root, 200)),
            "leaf-and-root-swapped": replace(case, leaf_hash=case.root, root=case.leaf_hash),
        }
    else:
        twins |= {
            "swapped-roots": replace(case, root1=case.root2, root2=case.root1),
            "size1-plus-1": replace(case, size1=case.size1 + 1),
            "size1-minus-1": replace(case, size1=case.size1 - 1),
            "size1-zero": replace(case, size1=0),
            "size2-times-2": replace(case, size2=case.size2 * 2),
            "size2-div-2": replace(case, size2=case.size2 // 2),
            "root1-bit-flipped": replace(case, root1=_flip(case.root1, 9)),
            "root2-bit-flipped": replace(case, root2=_flip(case.root2, 250)),
        }
    return {name: twin for name, twin in twins.items() if twin != case}


TWINS = {
    f"{name}~{twin_name}": twin
    for name, case in sorted(VALID.items())
    for twin_name, twin in broken_twins(case).items()
}


@pytest.mark.parametrize("name", sorted(TWINS))
def test_broken_twin_of_a_valid_vector_fails(name: str) -> None:
    with pytest.raises(ProofError):
        TWINS[name].verify()


def test_twins_cover_every_kind_of_damage() -> None:
    kinds = {name.split("~")[1] for name in TWINS}
    for kind in (
        "truncated-proof",
        "trailing-hash",
        "swapped-roots",
        "index-plus-1",
        "size-times-2",
        "size1-plus-1",
        "proof[0]-bit-0-flipped",
    ):
        assert kind in kinds


def test_wrong_root_reports_both_roots() -> None:
    case = VALID["inclusion/1/happy-path.json"]
    assert isinstance(case, Inclusion)
    wrong = _flip(case.root, 0)
    with pytest.raises(RootMismatchError) as info:
        replace(case, root=wrong).verify()
    assert (info.value.expected_root, info.value.calculated_root) == (wrong, case.root)


def test_size_change_that_keeps_the_proof_shape_is_caught_by_the_signed_head() -> None:
    # PROOF(1, D[8]) = [h1, MTH(2:4), MTH(4:8)] and PROOF(1, D[7]) = [h1, MTH(2:4), MTH(4:7)] have
    # the same shape, so the (1, 8) proof also "proves" (1, 7) against the size-8 root, in
    # transparency-dev/merkle too. Only the signed tree head binds a size to its root: callers
    # must take (size, root) pairs from verified heads, never from the proof's sender.
    case = VALID["consistency/1/happy-path.json"]
    assert isinstance(case, Consistency) and (case.size1, case.size2) == (1, 8)
    replace(case, size2=7).verify()
