"""RFC 9162 (Certificate Transparency v2) Merkle tree math with SHA-256: pure functions, no I/O.

leaf = SHA-256(0x00 || entry), node = SHA-256(0x01 || left || right), empty root = SHA-256("").

As in transparency-dev/merkle, nothing here fetches data. ``inclusion_proof_ranges`` and
``consistency_proof_ranges`` say WHICH leaf ranges ``[begin, end)`` a proof needs (a perfect
subtree, or an "ephemeral" subtree at the right edge); ``inclusion_proof`` / ``consistency_proof``
ask the caller's ``get_range_hash(begin, end)`` for each. A store keeping perfect-subtree hashes
answers with ``perfect_subtrees`` + ``hash_from_subtrees``; ``RangeHasher`` recomputes (tests).

Proofs are ordered leaf-up as PATH / SUBPROOF (RFC 9162 §2.1.3.1, §2.1.4.1); verification follows
§2.1.3.2 / §2.1.4.2 with transparency-dev/merkle's edge cases: index >= size fails; a proof of the
wrong length fails before any hashing; size1 == size2 needs an empty proof and byte-equal roots;
size1 == 0 fails (a consistency proof from the empty tree is meaningless). A proof binds leaves
to a root, not a size to a root: take (size, root) pairs from verified signed tree heads.

Errors: precondition violations raise ``ProofError``; a well-formed proof that recomputes another
root raises ``RootMismatchError`` (a ``ProofError``) with both roots. Sizes and indices are ints in
[0, 2**64); hashes are 32-byte ``bytes``. Functions are thread-safe; ``CompactRange`` and
``RangeHasher`` are mutable and are not (give each thread its own, e.g. ``CompactRange.copy()``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ledger_node.errors import ProofError, RootMismatchError

__all__ = [
    "EMPTY_ROOT", "HASH_SIZE", "BytesLike", "CompactRange", "GetRangeHash", "NodeId", "RangeHasher",
    "consistency_proof", "consistency_proof_ranges", "hash_from_subtrees", "inclusion_proof",
    "inclusion_proof_ranges", "leaf_hash", "node_hash", "perfect_subtrees",
    "root_from_inclusion_proof", "root_from_leaf_hashes", "roots_from_consistency_proof",
    "verify_consistency", "verify_inclusion"
]  # fmt: skip

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_MAX_SIZE = 1 << 64

BytesLike = bytes | bytearray | memoryview
GetRangeHash = Callable[[int, int], bytes]
"""``get_range_hash(begin, end)`` returns MTH(D[begin:end]), the hash of leaves ``[begin, end)``."""


def leaf_hash(data: BytesLike) -> bytes:
    """Return the RFC 9162 leaf hash SHA-256(0x00 || data). Requires a bytes-like ``data``."""
    h = hashlib.sha256(_LEAF_PREFIX)
    h.update(data)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return SHA-256(0x01 || left || right). Requires two 32-byte hashes."""
    _check_hash("left", left)
    _check_hash("right", right)
    return _hash_children(left, right)


def _hash_children(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH (RFC 9162 §2.1.1) of 32-byte leaf hashes, EMPTY_ROOT for none. Iterative: an odd last
    node is carried up a level unchanged, which is the RFC's "largest power of two < n" split."""
    _check_hashes("hashes", hashes)
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    while len(level) > 1:
        nxt = [_hash_children(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


@dataclass(frozen=True, order=True, slots=True)
class NodeId:
    """A perfect aligned subtree: ``2**level`` leaves starting at ``index * 2**level``."""

    level: int
    index: int

    @property
    def begin(self) -> int:
        return self.index << self.level

    @property
    def end(self) -> int:
        return (self.index + 1) << self.level


def perfect_subtrees(begin: int, end: int) -> list[NodeId]:
    """The fewest perfect aligned subtrees covering ``[begin, end)``, left to right (a compact
    range). Requires 0 <= begin <= end < 2**64."""
    _check_range(begin, end)
    out: list[NodeId] = []
    while begin < end:
        align = (begin & -begin).bit_length() - 1 if begin else 64
        level = min(align, (end - begin).bit_length() - 1)
        out.append(NodeId(level, begin >> level))
        begin += 1 << level
    return out


def hash_from_subtrees(hashes: Sequence[bytes]) -> bytes:
    """Fold the 32-byte hashes of ``perfect_subtrees(begin, end)`` right to left; EMPTY_ROOT for
    none. That is MTH(D[begin:end]) whenever ``begin`` is a multiple of the smallest power of two
    >= ``end - begin``: true for ``[0, size)`` and for every range a proof asks for."""
    _check_hashes("hashes", hashes)
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = _hash_children(h, acc)
    return acc


class CompactRange:
    """The frontier of a Merkle tree: hashes of ``perfect_subtrees(0, size)``, left to right.

    Appending costs O(log n) hashes at worst (amortised O(1)); ``root()`` costs O(log n).
    ``to_bytes()`` is the 8-byte big-endian size, then the 32-byte subtree hashes left to right.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """Hashes of ``perfect_subtrees(0, size)``, left to right."""
        return tuple(self._hashes)

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf hash. Requires a 32-byte hash; the size stays below 2**64."""
        self.extend((leaf_hash,))

    def extend(self, hashes: Iterable[bytes]) -> None:
        """Append leaf hashes in order; all are checked first, so a bad one changes nothing."""
        batch = list(hashes)
        _check_hashes("hashes", batch)
        if self._size + len(batch) >= _MAX_SIZE:
            raise ProofError("compact range would overflow 2**64 - 1 leaves")
        for h in batch:
            self._push(h)

    def _push(self, h: bytes) -> None:
        n = self._size
        while n & 1:  # merge equal-sized perfect subtrees, smallest first
            h = _hash_children(self._hashes.pop(), h)
            n >>= 1
        self._hashes.append(h)
        self._size += 1

    def root(self) -> bytes:
        """Return MTH of the ``size`` leaves appended so far (EMPTY_ROOT when empty)."""
        return hash_from_subtrees(self._hashes)

    def copy(self) -> CompactRange:
        """Return an independent copy."""
        other = CompactRange()
        other._size = self._size
        other._hashes = list(self._hashes)
        return other

    def to_bytes(self) -> bytes:
        """Serialise: 8-byte big-endian size, then the subtree hashes left to right."""
        return self._size.to_bytes(8, "big") + b"".join(self._hashes)

    @classmethod
    def from_bytes(cls, data: bytes) -> CompactRange:
        """Parse ``to_bytes()`` output. Requires exactly one 32-byte hash per set size bit."""
        if len(data) < 8:
            raise ProofError(f"compact range needs at least 8 bytes, got {len(data)}")
        size = int.from_bytes(data[:8], "big")
        want = 8 + HASH_SIZE * size.bit_count()
        if len(data) != want:
            raise ProofError(f"compact range of size {size} needs {want} bytes, got {len(data)}")
        out = cls()
        out._size = size
        out._hashes = [bytes(data[i : i + HASH_SIZE]) for i in range(8, want, HASH_SIZE)]
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactRange):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes


class RangeHasher:
    """``get_range_hash`` recomputed from all leaf hashes (tests, small trees).

    Hashes of perfect aligned subtrees are memoised: once computed, a proof costs O(log n) hashes.
    """

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        _check_hashes("leaf_hashes", leaf_hashes)
        self._leaves = list(leaf_hashes)
        self._memo: dict[tuple[int, int], bytes] = {}

    def __call__(self, begin: int, end: int) -> bytes:
        """Return MTH(D[begin:end]). Requires 0 <= begin <= end <= number of leaves."""
        _check_range(begin, end)
        if end > len(self._leaves):
            raise ProofError(f"range [{begin}, {end}) beyond {len(self._leaves)} leaves")
        if begin == end:
            return EMPTY_ROOT
        return self._mth(begin, end)

    def _mth(self, begin: int, end: int) -> bytes:
        n = end - begin
        if n == 1:
            return self._leaves[begin]
        perfect = n & (n - 1) == 0 and begin % n == 0
        if perfect and (begin, end) in self._memo:
            return self._memo[begin, end]
        mid = begin + _split(n)
        h = _hash_children(self._mth(begin, mid), self._mth(mid, end))
        if perfect:
            self._memo[begin, end] = h
        return h


def inclusion_proof_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose hashes form PATH(index, D[size]) (RFC 9162 §2.1.3.1), leaf up.
    Requires 0 <= index < size < 2**64."""
    _check_u64("index", index)
    _check_u64("size", size)
    if index >= size:
        raise ProofError(f"index {index} out of range for tree size {size}")
    out: list[tuple[int, int]] = []
    begin, end = 0, size
    while end - begin > 1:
        mid = begin + _split(end - begin)
        if index < mid:
            out.append((mid, end))
            end = mid
        else:
            out.append((begin, mid))
            begin = mid
    out.reverse()
    return out


def consistency_proof_ranges(size1: int, size2: int) -> list[tuple[int, int]]:
    """Leaf ranges whose hashes form PROOF(size1, D[size2]) (RFC 9162 §2.1.4.1), in SUBPROOF
    order. Requires 0 < size1 <= size2 < 2**64; size1 == size2 needs no ranges."""
    _check_u64("size1", size1)
    _check_u64("size2", size2)
    if size1 > size2:
        raise ProofError(f"size1 {size1} > size2 {size2}")
    if size1 == 0:
        raise ProofError("consistency proof from the empty tree is meaningless")
    out: list[tuple[int, int]] = []
    begin, end, known = 0, size2, True  # `known` is SUBPROOF's b: the subtree's MTH is known
    while size1 != end:
        mid = begin + _split(end - begin)
        if size1 <= mid:
            out.append((mid, end))
            end = mid
        else:
            out.append((begin, mid))
            begin, known = mid, False
    if not known:
        out.append((begin, end))
    out.reverse()
    return out


def inclusion_proof(index: int, size: int, get_range_hash: GetRangeHash) -> list[bytes]:
    """PATH(index, D[size]). Requires 0 <= index < size < 2**64 and 32-byte fetched hashes."""
    return _fetch(inclusion_proof_ranges(index, size), get_range_hash)


def consistency_proof(size1: int, size2: int, get_range_hash: GetRangeHash) -> list[bytes]:
    """PROOF(size1, D[size2]). Requires 0 < size1 <= size2 < 2**64 and 32-byte fetched hashes."""
    return _fetch(consistency_proof_ranges(size1, size2), get_range_hash)


def _fetch(ranges: list[tuple[int, int]], get_range_hash: GetRangeHash) -> list[bytes]:
    hashes = [get_range_hash(begin, end) for begin, end in ranges]
    _check_hashes("get_range_hash results", hashes)
    return hashes


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes:
    """Return the root that ``proof`` gives for ``leaf_hash`` at ``index`` (RFC 9162 §2.1.3.2).

    Requires 0 <= index < size < 2**64, a 32-byte leaf hash, and exactly the proof length that
    PATH(index, D[size]) has, every element a 32-byte hash.
    """
    want = len(inclusion_proof_ranges(index, size))
    _check_hash("leaf_hash", leaf_hash)
    _check_proof(proof, want)
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = _hash_children(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = _hash_children(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    return r


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` leaves with ``root``.

    Requires what ``root_from_inclusion_proof`` requires and a 32-byte root (else ProofError).
    Raises RootMismatchError if the proof leads to another root.
    """
    _check_hash("root", root)
    calculated = root_from_inclusion_proof(leaf_hash, index, size, proof)
    if calculated != root:
        raise RootMismatchError(root, calculated)


def roots_from_consistency_proof(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes
) -> tuple[bytes, bytes]:
    """Return (root at size1, root at size2) recomputed from ``proof`` (RFC 9162 §2.1.4.2).

    ``root1`` seeds the computation when size1 is a power of two (then the first value returned
    is ``root1`` itself). Requires 0 < size1 <= size2 < 2**64, a 32-byte root1 when
    size1 < size2, and exactly the proof length that PROOF(size1, D[size2]) has (empty when
    size1 == size2), every element a 32-byte hash. The caller compares both roots.
    """
    want = len(consistency_proof_ranges(size1, size2))
    _check_proof(proof, want)
    if size1 == size2:
        return root1, root1
    _check_hash("root1", root1)
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = _hash_children(c, fr)
            sr = _hash_children(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = _hash_children(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    return fr, sr


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree (size2, root2) is an append-only extension of the tree (size1, root1).

    Requires 0 < size1 <= size2 < 2**64 and the proof ``roots_from_consistency_proof`` requires.
    When size1 == size2 the proof must be empty and the roots equal, compared byte for byte (as
    transparency-dev/merkle does); otherwise both roots must be 32-byte hashes. Raises
    RootMismatchError for the first root the proof does not reproduce.
    """
    want = len(consistency_proof_ranges(size1, size2))
    if size1 == size2:
        _check_proof(proof, want)
        if root1 != root2:
            raise RootMismatchError(root2, root1)
        return
    _check_hash("root1", root1)
    _check_hash("root2", root2)
    calc1, calc2 = roots_from_consistency_proof(size1, size2, proof, root1)
    if calc1 != root1:
        raise RootMismatchError(root1, calc1)
    if calc2 != root2:
        raise RootMismatchError(root2, calc2)


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_u64(name: str, value: int) -> None:
    if not isinstance(value, int) or not 0 <= value < _MAX_SIZE:
        raise ProofError(f"{name} must be an integer in [0, 2**64), got {value!r}")


def _check_range(begin: int, end: int) -> None:
    _check_u64("begin", begin)
    _check_u64("end", end)
    if begin > end:
        raise ProofError(f"range begin {begin} > end {end}")


def _check_hash(name: str, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        got = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise ProofError(f"{name} must be a {HASH_SIZE}-byte hash, got {got}")


def _check_hashes(name: str, hashes: Sequence[bytes]) -> None:
    for i, h in enumerate(hashes):
        _check_hash(f"{name}[{i}]", h)


def _check_proof(proof: Sequence[bytes], want: int) -> None:
    if len(proof) != want:
        raise ProofError(f"proof has {len(proof)} hashes, want {want}")
    _check_hashes("proof", proof)
