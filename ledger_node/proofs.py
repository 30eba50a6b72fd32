"""Proofs served from a node's store: inclusion (RFC 9162 §2.1.3) and consistency (§2.1.4).

Functions over one read-only SQLite connection (``store.open_reader``); the Merkle math is
``ledger_node.merkle``, the node hashes come from ``ledger_node.subtrees``. Every head is a
block header, i.e. a signed tree head: a proof "at height h" is against the tree size and root
that block h's header carries.

Before a proof leaves this module it is checked against the header's root; a store whose data
no longer reproduces its own signed root raises TamperError (naming what), so that a damaged
node refuses to serve a proof instead of serving a wrong one.

Errors (all LedgerError):
    NotInLog         the entry, block or device asked for is not in the log (yet)   -> HTTP 404
    BadProofRequest  the request cannot be answered as asked (from > to, ...)       -> HTTP 422
    TamperError      the store contradicts its own signed headers                   -> HTTP 503
    StoreError       the store lacks data it should have                            -> HTTP 503
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from ledger_node import entries as entry_types
from ledger_node.block import BlockHeader, decode_header
from ledger_node.errors import LedgerError, ProofError, StoreError, TamperError
from ledger_node.merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from ledger_node.subtrees import SubtreeReader

__all__ = [
    "BadProofRequest", "ConsistencyProof", "InclusionProof", "NotInLog", "SignedHead",
    "StoredEntry", "consistency", "enrolment_entry", "entry", "inclusion", "latest_height",
    "node_keys", "signed_head",
]  # fmt: skip

MAX_INDEX = (1 << 63) - 1
"""Largest entry index or height SQLite can be asked about (a signed 64-bit integer)."""


class NotInLog(LedgerError):
    """The entry, block or device asked for is not in the log (or not yet)."""


class BadProofRequest(LedgerError):
    """The request is well-typed but cannot be answered as asked (e.g. from > to)."""


@dataclass(frozen=True)
class SignedHead:
    """One block header (a signed tree head), its bytes and the (node, signature) pairs."""

    header: BlockHeader
    header_bytes: bytes
    signatures: tuple[tuple[str, bytes], ...]

    @property
    def height(self) -> int:
        return self.header.height


@dataclass(frozen=True)
class StoredEntry:
    index: int
    height: int
    kind: str
    data: bytes


@dataclass(frozen=True)
class InclusionProof:
    """PATH(index, D[head.size]) for ``entry``, checked against ``head``'s root."""

    entry: StoredEntry
    head: SignedHead
    hashes: tuple[bytes, ...]


@dataclass(frozen=True)
class ConsistencyProof:
    """PROOF(old.size, D[new.size]), checked against both heads' roots."""

    old: SignedHead
    new: SignedHead
    hashes: tuple[bytes, ...]


def latest_height(conn: sqlite3.Connection) -> int:
    """Height of the newest block, -1 for an empty chain."""
    row = conn.execute("SELECT MAX(height) FROM blocks").fetchone()
    return -1 if row[0] is None else int(row[0])


def signed_head(conn: sqlite3.Connection, height: int | None = None) -> SignedHead:
    """The signed head of block ``height`` (the newest block when None)."""
    if height is None:
        height = latest_height(conn)
        if height < 0:
            raise NotInLog("the chain has no blocks yet")
    _check_int("height", height)
    row = conn.execute("SELECT header FROM blocks WHERE height = ?", (height,)).fetchone()
    if row is None:
        raise NotInLog(f"no block at height {height} (the chain is at height "
                       f"{latest_height(conn)})")
    header_bytes = bytes(row[0])
    try:
        header = decode_header(header_bytes)
    except LedgerError as exc:
        raise TamperError(f"block {height}", f"stored header does not decode: {exc}") from None
    if header.height != height:
        raise TamperError(f"block {height}", f"stored header says height {header.height}")
    sigs = conn.execute("SELECT node, sig FROM block_sigs WHERE height = ? ORDER BY node",
                        (height,)).fetchall()
    return SignedHead(header, header_bytes, tuple((str(n), bytes(s)) for n, s in sigs))


def entry(conn: sqlite3.Connection, index: int) -> StoredEntry:
    """The log entry at leaf ``index``."""
    _check_int("entry index", index)
    row = conn.execute("SELECT idx, height, kind, data FROM entries WHERE idx = ?",
                       (index,)).fetchone()
    if row is None:
        last = conn.execute("SELECT MAX(idx) FROM entries").fetchone()[0]
        raise NotInLog(f"no entry {index}: the log has {0 if last is None else last + 1} "
                       f"entries")
    return StoredEntry(int(row[0]), int(row[1]), str(row[2]), bytes(row[3]))


def inclusion(conn: sqlite3.Connection, index: int, head: SignedHead | int | None = None,
              reader: SubtreeReader | None = None) -> InclusionProof:
    """Inclusion proof of entry ``index`` against ``head`` (a SignedHead, a height, or None for
    the newest block). Requires the entry to be committed at or before that block."""
    if not isinstance(head, SignedHead):
        head = signed_head(conn, head)
    e = entry(conn, index)
    if e.height > head.height or index >= head.header.size:
        raise BadProofRequest(f"entry {index} was committed in block {e.height}; the head at "
                              f"height {head.height} (tree size {head.header.size}) cannot "
                              f"include it")
    reader = reader or SubtreeReader(conn)
    where = f"entry {index} against block {head.height}"
    try:
        hashes = inclusion_proof(index, head.header.size, reader)
        verify_inclusion(leaf_hash(e.data), index, head.header.size, hashes, head.header.root)
    except ProofError as exc:
        raise TamperError(where, f"the store does not reproduce the signed root ({exc}); "
                          f"refusing to serve this proof") from None
    except StoreError as exc:
        raise TamperError(where, f"{exc}; refusing to serve this proof") from None
    return InclusionProof(e, head, tuple(hashes))


def consistency(conn: sqlite3.Connection, from_height: int,
                to_height: int | None = None) -> ConsistencyProof:
    """Consistency proof from block ``from_height``'s tree to block ``to_height``'s (newest
    when None). Requires from_height <= to_height."""
    _check_int("from", from_height)
    if to_height is not None:
        _check_int("to", to_height)
        if from_height > to_height:
            raise BadProofRequest(f"from ({from_height}) must not be after to ({to_height})")
    new = signed_head(conn, to_height)
    if from_height > new.height:
        raise NotInLog(f"no block at height {from_height} (the chain is at height "
                       f"{new.height})")
    old = signed_head(conn, from_height)
    where = f"consistency of block {old.height} with block {new.height}"
    size1, size2 = old.header.size, new.header.size
    if size1 > size2 or size1 == 0:
        raise TamperError(where, f"stored tree sizes {size1} and {size2} cannot be consistent")
    try:
        hashes = consistency_proof(size1, size2, SubtreeReader(conn))
        verify_consistency(size1, size2, hashes, old.header.root, new.header.root)
    except ProofError as exc:
        raise TamperError(where, f"the store does not reproduce the signed roots ({exc}); "
                          f"refusing to serve this proof") from None
    except StoreError as exc:
        raise TamperError(where, f"{exc}; refusing to serve this proof") from None
    return ConsistencyProof(old, new, tuple(hashes))


def node_keys(conn: sqlite3.Connection) -> dict[str, bytes]:
    """Node id -> SPKI DER, from the genesis entry of block 0 (the only place node keys are
    logged yet)."""
    out: dict[str, bytes] = {}
    for e in _block_entries(conn, 0, entry_types.GENESIS):
        rec = _decode_admin(e.data, f"entry {e.index} (genesis)")
        out.setdefault(str(rec["node"]), bytes(rec["node_key"]))
    return out


def enrolment_entry(conn: sqlite3.Connection, dev: str) -> StoredEntry:
    """The ``device_enrolled`` entry that put ``dev``'s key on the log."""
    row = conn.execute("SELECT enrolled_height FROM devices WHERE dev = ?", (dev,)).fetchone()
    if row is None:
        raise NotInLog(f"no device {dev!r} is enrolled")
    for e in _block_entries(conn, int(row[0]), entry_types.DEVICE_ENROLLED):
        if _decode_admin(e.data, f"entry {e.index}").get("dev") == dev:
            return e
    raise TamperError(f"device {dev!r}", f"no enrolment entry in block {row[0]}, where the "
                      f"device table says it was enrolled")


def _block_entries(conn: sqlite3.Connection, height: int, kind: str) -> list[StoredEntry]:
    """The entries of one kind in block ``height`` (an index range scan, not a table scan)."""
    row = conn.execute("SELECT first, count FROM blocks WHERE height = ?", (height,)).fetchone()
    if row is None:
        return []
    rows = conn.execute("SELECT idx, height, kind, data FROM entries WHERE idx >= ? AND idx < ? "
                        "AND kind = ? ORDER BY idx", (row[0], row[0] + row[1], kind))
    return [StoredEntry(int(i), int(h), str(k), bytes(d)) for i, h, k, d in rows]


def _decode_admin(data: bytes, where: str) -> dict[str, Any]:
    try:
        return entry_types.decode_admin(data)
    except ValueError as exc:  # WireError is a ValueError
        raise TamperError(where, f"does not decode: {exc}") from None


def _check_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INDEX:
        raise BadProofRequest(f"{name} must be an integer in [0, 2**63), got {value!r}")
