"""`trustfleet verify`: re-check a node's store from disk, trusting nothing in it.

For every block in height order: the header decodes and is deterministic, heights are
consecutive, `prev` is the previous header's hash, the stored hash is the header's hash,
entry indexes are contiguous, the Merkle root and size recomputed from the stored entries
match the header, and the node signature verifies with the node key from the genesis entry
(or one given by the caller). Every reading entry's device signature is checked against the
key its enrolment entry put on the log. The first failure is reported by name.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hsm import verify_es256
from ledger_node import entries as entry_types
from ledger_node.block import ZERO_HASH, block_hash, decode_header
from ledger_node.errors import LedgerError, TamperError
from ledger_node.merkle import CompactRange, leaf_hash
from ledger_node.store import open_reader
from trustfleet.cose import decode_sign1
from trustfleet.errors import WireError
from trustfleet.payload import decode_payload

Progress = Callable[[int, int], None]


@dataclass
class VerifyReport:
    blocks: int = 0
    entries: int = 0
    readings: int = 0
    devices: int = 0
    height: int = -1
    root: bytes = b""
    node_key_source: str = ""
    problems: list[TamperError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(db_path: Path, *, node_key: bytes | None = None,
                 progress: Progress | None = None) -> VerifyReport:
    """Check everything; stops at the first damaged block (later ones cannot be trusted)."""
    conn = open_reader(db_path)
    try:
        return _verify(conn, node_key, progress)
    finally:
        conn.close()


def _verify(conn: sqlite3.Connection, node_key: bytes | None,
            progress: Progress | None) -> VerifyReport:
    report = VerifyReport(node_key_source="given" if node_key else "genesis entry")
    total = conn.execute("SELECT COUNT(*) FROM blocks").fetchone()[0]
    tree = CompactRange()
    prev_hash, expected_height = ZERO_HASH, 0
    device_keys: dict[str, bytes] = {}
    proposer_keys: dict[str, bytes] = {}
    rows = conn.execute("SELECT height, hash, header FROM blocks ORDER BY height")
    for row in rows:
        height, stored_hash, header_bytes = row[0], bytes(row[1]), bytes(row[2])
        where = f"block {height}"
        try:
            header = decode_header(header_bytes)
        except LedgerError as exc:
            return _fail(report, where, f"header does not decode: {exc}")
        if height != expected_height or header.height != height:
            return _fail(report, where, f"expected height {expected_height}, header says "
                         f"{header.height}")
        if block_hash(header_bytes) != stored_hash:
            return _fail(report, where, "stored block hash is not the hash of the header")
        if header.prev != prev_hash:
            return _fail(report, where, "prev does not match the previous block's hash")
        if header.first != tree.size:
            return _fail(report, where, f"first entry {header.first}, expected {tree.size}")
        entries = conn.execute("SELECT idx, height, data FROM entries WHERE idx >= ? AND idx < ? "
                               "ORDER BY idx", (header.first, header.first + header.count)
                               ).fetchall()
        if len(entries) != header.count:
            return _fail(report, where, f"{header.count} entries in header, "
                         f"{len(entries)} in store")
        for idx, entry_height, data in entries:
            data = bytes(data)
            if entry_height != height:
                return _fail(report, f"entry {idx}", f"indexed under block {entry_height}")
            problem = _check_entry(data, height, device_keys, proposer_keys, node_key)
            if problem:
                return _fail(report, f"entry {idx} (block {height})", problem)
            tree.append(leaf_hash(data))
            report.entries += 1
            if entry_types.admin_kind(data) == entry_types.KIND_READING:
                report.readings += 1
        if tree.size != header.size or tree.root() != header.root:
            return _fail(report, where, "Merkle root recomputed from the stored entries does "
                         "not match the header (an entry was changed, added or removed)")
        key = node_key or proposer_keys.get(header.proposer)
        sig = conn.execute("SELECT sig FROM block_sigs WHERE height = ? AND node = ?",
                           (height, header.proposer)).fetchone()
        if key is None:
            return _fail(report, where, f"no key known for proposer {header.proposer!r}")
        if sig is None or not verify_es256(key, header_bytes, bytes(sig[0])):
            return _fail(report, where, f"signature of node {header.proposer!r} does not verify")
        prev_hash, expected_height = stored_hash, height + 1
        report.blocks += 1
        report.height, report.root = height, header.root
        if progress:
            progress(report.blocks, total)
    report.devices = len(device_keys)
    return report


def _check_entry(data: bytes, height: int, device_keys: dict[str, bytes],
                 proposer_keys: dict[str, bytes], node_key: bytes | None) -> str | None:
    """None if the entry is sound, else what is wrong with it."""
    try:
        kind = entry_types.admin_kind(data)
    except (ValueError, WireError) as exc:
        return f"administrative entry does not decode: {exc}"
    if kind == entry_types.GENESIS:
        rec = entry_types.decode_admin(data)
        if height != 0:
            return "genesis entry outside block 0"
        proposer_keys[rec["node"]] = node_key or rec["node_key"]
    elif kind == entry_types.DEVICE_ENROLLED:
        rec = entry_types.decode_admin(data)
        device_keys.setdefault(rec["dev"], rec["key"])
    elif kind == entry_types.KIND_READING:
        try:
            msg = decode_sign1(data)
            reading = decode_payload(msg.payload)
        except WireError as exc:
            return f"reading does not decode: {exc}"
        key = device_keys.get(reading.dev)
        if key is None:
            return f"reading from {reading.dev!r}, which is not enrolled before it"
        if not verify_es256(key, msg.to_be_signed(), msg.signature):
            return f"device signature of {reading.dev!r} seq {reading.seq} does not verify"
    return None


def _fail(report: VerifyReport, where: str, detail: str) -> VerifyReport:
    report.problems.append(TamperError(where, detail))
    return report
