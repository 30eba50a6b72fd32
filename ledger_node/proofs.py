"""Proofs served from a node's store: inclusion (RFC 9162 §2.1.3) and consistency (§2.1.4).

Functions over one read-only SQLite connection (``store.open_reader``); the Merkle math is
``ledger_node.merkle``, the node hashes come from ``ledger_node.subtrees``. Every head is a
block header, i.e. a signed tree head: a proof "at height h" is against the tree size and root
that block h's header carries.

Before a proof leaves this module it is checked against the header's root; a store whose data
no longer reproduces its own signed root raises TamperError (naming what), so that a damaged
node refuses to serve a proof instead of serving a wrong one.

What bundles need besides proofs: ``genesis`` (entry 0: the node key and the fleet CA) and
``device_history`` (a device's operator entries, kinds device_enrolled / device_rotated /
device_revoked in the entries.kind column, each re-checked through ledger_node.admin).

Errors (all LedgerError):
    NotInLog         the entry, block or device asked for is not in the log (yet)   -> HTTP 404
    BadProofRequest  the request cannot be answered as asked (from > to, ...)       -> HTTP 422
    TamperError      the store contradicts its own signed headers                   -> HTTP 503
    StoreError       the store lacks data it should have                            -> HTTP 503
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Final

from hsm.errors import CaCertificateInvalid
from ledger_node import entries as entry_types
from ledger_node.admin import AdminRejected, OperatorEntry, decode_operator_entry
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
from trustfleet import cbor
from trustfleet.cose import decode_sign1
from trustfleet.errors import WireError

__all__ = [
    "BadProofRequest", "ConsistencyProof", "Genesis", "InclusionProof", "NotInLog",
    "OperatorRecord", "SignedHead", "StoredEntry", "consistency", "device_history",
    "enrolment_entry", "entry", "genesis", "inclusion", "latest_height", "node_keys",
    "operator_device", "signed_head",
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
    """Node id -> SPKI DER, from the genesis entry (the only place node keys are logged yet);
    empty for an empty chain."""
    if conn.execute("SELECT 1 FROM entries WHERE idx = 0").fetchone() is None:
        return {}
    g = genesis(conn)
    return {g.node: g.node_key}


@dataclass(frozen=True)
class Genesis:
    """The genesis entry (always entry 0): the chain, the node that started it, its key and the
    fleet CA certificate (None on a chain started without one)."""

    entry: StoredEntry
    chain: str
    node: str
    node_key: bytes
    ca: bytes | None


def genesis(conn: sqlite3.Connection) -> Genesis:
    """The chain's genesis entry, entry 0."""
    e = entry(conn, 0)
    where = "entry 0 (genesis)"
    if e.kind != entry_types.GENESIS:
        raise TamperError(where, f"entry 0 is a {e.kind!r} entry; a chain starts with its "
                          f"genesis entry")
    rec = _decode_admin(e.data, where)
    chain, node, key, ca = rec.get("chain"), rec.get("node"), rec.get("node_key"), rec.get("ca")
    if rec.get("type") != entry_types.GENESIS or not isinstance(chain, str) \
            or not isinstance(node, str) or not isinstance(key, bytes) \
            or not isinstance(ca, bytes | None):
        raise TamperError(where, "not a genesis map with chain, node, node_key and ca")
    return Genesis(e, chain, node, key, ca)


OPERATOR_KINDS: Final = (entry_types.DEVICE_ENROLLED, entry_types.DEVICE_ROTATED,
                         entry_types.DEVICE_REVOKED)


@dataclass(frozen=True)
class OperatorRecord:
    """An operator entry about one device, checked (ledger_node.admin) at ``time``, the ledger
    time of the block that committed it."""

    entry: StoredEntry
    time: int
    op: OperatorEntry

    @property
    def type(self) -> str:
        return self.op.type


def device_history(conn: sqlite3.Connection, dev: str, *,
                   size: int | None = None) -> list[OperatorRecord]:
    """The operator entries about ``dev`` (enrolment, rotations, revocation) among the first
    ``size`` entries of the log (all when None), in log order.

    Each one is checked again as the node checked it when it committed it: against the fleet
    CA of the genesis entry at its block's ledger time (``ledger_node.admin``). One that no
    longer checks raises TamperError: the node will not put into a bundle what it cannot stand
    behind.
    """
    # The payload is deterministic CBOR, so the map key "dev" is immediately followed by the
    # device id: a byte search (in SQLite) skips the other devices' entries without decoding.
    needle = cbor.dumps("dev") + cbor.dumps(dev)
    rows = conn.execute(
        "SELECT e.idx, e.height, e.kind, e.data, b.time FROM entries e "
        "JOIN blocks b ON b.height = e.height "
        "WHERE e.kind <> 'reading' AND e.kind IN (?, ?, ?) AND e.idx < ? "
        "AND instr(e.data, ?) > 0 ORDER BY e.idx",
        (*OPERATOR_KINDS, MAX_INDEX if size is None else size, needle)).fetchall()
    found = [(StoredEntry(int(i), int(h), str(k), bytes(d)), int(t)) for i, h, k, d, t in rows]
    found = [(e, t) for e, t in found if operator_device(e.data) == dev]
    if not found:
        return []
    ca = genesis(conn).ca
    out: list[OperatorRecord] = []
    for e, time in found:
        where = f"entry {e.index} ({e.kind} of {dev!r})"
        try:
            op = decode_operator_entry(e.data, ca, time)
        except AdminRejected as exc:
            raise TamperError(where, f"committed operator entry no longer checks: {exc}; "
                              f"refusing to serve it") from None
        except CaCertificateInvalid as exc:
            raise TamperError("entry 0 (genesis)", f"{exc}; refusing to serve proofs that "
                              f"rest on it") from None
        if op.type != e.kind or op.body.get("dev") != dev:
            raise TamperError(where, f"the entry says it is a {op.type} of "
                              f"{op.body.get('dev')!r}")
        out.append(OperatorRecord(e, time, op))
    return out


def enrolment_entry(conn: sqlite3.Connection, dev: str) -> StoredEntry:
    """The operator entry (``device_enrolled``) that enrolled ``dev``."""
    for rec in device_history(conn, dev):
        if rec.type == entry_types.DEVICE_ENROLLED:
            return rec.entry
    raise NotInLog(f"no device {dev!r} is enrolled")


def operator_device(data: bytes) -> str | None:
    """The ``dev`` an operator entry's payload names, unchecked (for filtering only)."""
    try:
        body = cbor.loads_strict(decode_sign1(data).payload, max_size=16 * 1024)
    except WireError:
        return None
    dev = body.get("dev") if isinstance(body, dict) else None
    return dev if isinstance(dev, str) else None


def _decode_admin(data: bytes, where: str) -> dict[str, Any]:
    try:
        return entry_types.decode_admin(data)
    except ValueError as exc:  # WireError is a ValueError
        raise TamperError(where, f"does not decode: {exc}") from None


def _check_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INDEX:
        raise BadProofRequest(f"{name} must be an integer in [0, 2**63), got {value!r}")
