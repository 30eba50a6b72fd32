"""`trustfleet verify`: re-check a node's store from disk, trusting nothing in it.

The log, for every block in height order: the header decodes and is deterministic, heights
are consecutive, `prev` is the previous header's hash, the stored hash is the header's hash,
entry indexes are contiguous, the Merkle root and size recomputed from the stored entries
match the header, and the node signature verifies with the node key from the genesis entry
(or one given by the caller). Operator entries (enrol, revoke, rotate: ledger_node.admin) are
checked against the fleet CA of the genesis entry at their block's ledger time, as the chain
checks them. Every reading entry's device signature is checked against the key the log gives
that device at that point (enrolment, then rotations), and no reading may follow the device's
revocation. The first failure stops the walk (what follows a damaged block cannot be trusted)
and is reported by name.

Shipment and contract entries are checked the same way, and the contract events in the log
must be exactly those a replay of the log derives (ledger_node.world_replay).

The derived rows (blocks columns, entry kinds, readings, merkle_nodes, devices) are compared
with a replay of the verified log (ledger_node.verify_index, ledger_node.replay); each damaged
row is named. The report also counts, per device, the gaps and broken `prev` links the log
replay finds (DESIGN.md §6: accepted but flagged; not damage).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsm import verify_es256
from ledger_node import entries as entry_types
from ledger_node.admin import (
    ADMIN_TYPES,
    NODE_SET_CHANGED,
    AdminRejected,
    apply_operator_entry,
    check_node_set_change,
    decode_operator_entry,
)
from ledger_node.block import ZERO_HASH, BlockHeader, block_hash, decode_header
from ledger_node.consortium.errors import QuorumError
from ledger_node.contracts import ContractEvent
from ledger_node.errors import LedgerError, TamperError
from ledger_node.merkle import CompactRange, leaf_hash
from ledger_node.quorum import block_signatures_problem, genesis_keys
from ledger_node.replay import LogReplay, ReplayedDevice, ReplayError
from ledger_node.store import open_reader
from ledger_node.subtrees import append_leaves
from ledger_node.validate import DeviceState
from ledger_node.verify_index import IndexCheck
from ledger_node.world import AUDIT, NODE_ENTRY_TYPES, check_audit_entry
from ledger_node.world_replay import check_world_tables, replay_world_conn
from trustfleet.batch import open_reading
from trustfleet.cose import is_low_s
from trustfleet.errors import WireError

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
    """Damage to the log (at most one: the walk stops) then to derived rows."""
    unnamed_problems: int = 0
    index_rows: dict[str, int] = field(default_factory=dict)
    device_stats: list[ReplayedDevice] = field(default_factory=list)

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


@dataclass
class _Walk:
    node_key: bytes | None
    ca_cert: bytes | None = None
    admin: dict[str, DeviceState] = field(default_factory=dict)
    """Device states as the operator entries so far leave them (keys, revocation)."""
    proposer_keys: dict[str, bytes] = field(default_factory=dict)
    """The keys of the node set in force at the block being checked (ledger_node.quorum)."""
    genesis: dict[str, Any] | None = None
    next_keys: dict[str, bytes] | None = None
    """The node set a `node_set_changed` entry of this block puts in force from the next."""
    changed: bool = False
    replay: LogReplay = field(default_factory=LogReplay)

    def admitted(self, state: DeviceState) -> None:
        self.admin[state.dev] = state
        self.replay.admin(state.dev, state.fleet, state.key, state.kid, state.enrolled_height,
                          state.revoked_height)


def _verify(conn: sqlite3.Connection, node_key: bytes | None,
            progress: Progress | None) -> VerifyReport:
    report = VerifyReport(node_key_source="given" if node_key else "genesis entry")
    index = IndexCheck(conn)
    walk = _Walk(node_key)
    total = conn.execute("SELECT COUNT(*) FROM blocks").fetchone()[0]
    tree = CompactRange()
    prev_hash, expected_height = ZERO_HASH, 0
    log_ok = True
    for row in conn.execute("SELECT * FROM blocks ORDER BY height"):
        height, header_bytes = row["height"], bytes(row["header"])
        where = f"block {height}"
        try:
            header = decode_header(header_bytes)
        except LedgerError as exc:
            log_ok = _fail(report, where, f"header does not decode: {exc}")
            break
        if height != expected_height or header.height != height:
            log_ok = _fail(report, where, f"expected height {expected_height}, header says "
                           f"{header.height}")
            break
        if block_hash(header_bytes) != bytes(row["hash"]):
            log_ok = _fail(report, where, "stored block hash is not the hash of the header")
            break
        if header.prev != prev_hash:
            log_ok = _fail(report, where, "prev does not match the previous block's hash")
            break
        if header.first != tree.size:
            log_ok = _fail(report, where, f"first entry {header.first}, expected {tree.size}")
            break
        failure = _block(conn, header, header_bytes, tree, walk, report, index)
        if isinstance(failure, tuple):
            log_ok = _fail(report, *failure)
            break
        tree = failure
        index.block_row(row, header, tree)
        prev_hash, expected_height = bytes(row["hash"]), height + 1
        report.blocks += 1
        report.height, report.root = height, header.root
        if progress:
            progress(report.blocks, total)
    if log_ok:
        _check_world(conn, walk.ca_cert, report)
        index.readings_beyond(tree.size)
        index.merkle_extras(tree.size)
        index.devices(walk.replay.devices)
    report.problems.extend(index.problems)
    report.unnamed_problems = index.unnamed
    report.index_rows = dict(index.checked)
    report.devices = len(walk.admin)
    report.device_stats = [walk.replay.devices[d] for d in sorted(walk.replay.devices)]
    return report


def _block(conn: sqlite3.Connection, header: BlockHeader, header_bytes: bytes,
           tree: CompactRange, walk: _Walk, report: VerifyReport,
           index: IndexCheck) -> CompactRange | tuple[str, str]:
    """Check one block's entries, root and signature: the tree after it, or (where, what)."""
    height, where = header.height, f"block {header.height}"
    entries = conn.execute("SELECT idx, height, kind, data FROM entries WHERE idx >= ? AND "
                           "idx < ? ORDER BY idx", (header.first, header.first + header.count)
                           ).fetchall()
    if len(entries) != header.count:
        return where, f"{header.count} entries in header, {len(entries)} in store"
    leaves: list[bytes] = []
    expected_rows: list[dict[str, Any]] = []
    for idx, entry_height, kind, data in entries:
        data = bytes(data)
        if entry_height != height:
            return f"entry {idx}", f"indexed under block {entry_height}"
        checked = _check_entry(idx, data, header, walk)
        if isinstance(checked, str):
            return f"entry {idx} (block {height})", checked
        actual_kind, row = checked
        index.entry_kind(idx, kind, actual_kind)
        if row is not None:
            expected_rows.append(row)
            report.readings += 1
        leaves.append(leaf_hash(data))
        report.entries += 1
    after, nodes = append_leaves(tree, leaves)
    if after.size != header.size or after.root() != header.root:
        return where, ("Merkle root recomputed from the stored entries does not match the "
                       "header (an entry was changed, added or removed)")
    sigs = [(r[0], bytes(r[1])) for r in conn.execute(
        "SELECT node, sig FROM block_sigs WHERE height = ?", (height,))]
    problem = block_signatures_problem(
        header_bytes, header.proposer, sigs, walk.proposer_keys, walk.node_key,
        consortium=True if walk.changed else None)
    if problem is not None:  # a consortium chain: every node of its set (ledger_node.quorum)
        return where, problem
    if walk.next_keys is not None:  # in force from the next block
        walk.proposer_keys, walk.next_keys, walk.changed = walk.next_keys, None, True
    index.readings(header.first, header.count, expected_rows)
    index.merkle_nodes(nodes)
    return after


def _check_entry(idx: int, data: bytes, header: BlockHeader,
                 walk: _Walk) -> str | tuple[str, dict[str, Any] | None]:
    """What is wrong with the entry, or (its kind, the readings row it must have)."""
    try:
        kind = entry_types.admin_kind(data)
    except (ValueError, WireError) as exc:
        return f"administrative entry does not decode: {exc}"
    if kind == entry_types.GENESIS:
        rec = entry_types.decode_admin(data)
        if header.height != 0 or idx != 0:
            return "genesis entry other than entry 0 of block 0"
        try:
            walk.proposer_keys.update(genesis_keys(rec, header.time, walk.node_key))
        except QuorumError as exc:
            return f"genesis entry: {exc}"
        walk.ca_cert = rec.get("ca")
        walk.genesis = rec
    elif kind == entry_types.KIND_READING:
        try:
            msg = open_reading(data)  # a single envelope, or a batched reading and its proof
        except WireError as exc:
            return f"reading does not decode: {exc}"
        reading = msg.reading
        state = walk.admin.get(reading.dev)
        if state is None:
            return f"reading from {reading.dev!r}, which is not enrolled before it"
        if state.revoked_height is not None:
            return f"reading from {reading.dev!r} after its revocation in block " \
                   f"{state.revoked_height}"
        if state.cert_not_after is not None and header.time > state.cert_not_after:
            return f"reading from {reading.dev!r} after its certificate expired"
        if msg.kid != state.kid or not is_low_s(msg.signature) or \
                not verify_es256(state.key, msg.to_be_signed, msg.signature):
            return f"device signature of {reading.dev!r} seq {reading.seq} does not verify " \
                   "with its key at this point of the log"
        try:
            return kind, walk.replay.reading(idx, msg.chain_hash, reading, header.height,
                                             header.time)
        except ReplayError as exc:
            return str(exc)
    elif data[:1] and 0xA0 <= data[0] <= 0xBF:
        if kind not in NODE_ENTRY_TYPES:
            return f"node-made entry of type {kind!r}: a node writes only genesis, contract " \
                   "events and audit entries"
        # Contract events are checked as a whole by replaying the world (_check_world).
        if kind == AUDIT:
            try:
                check_audit_entry(entry_types.decode_admin(data))
            except ValueError as exc:
                return f"audit entry: {exc}"
    else:
        try:
            op = decode_operator_entry(data, walk.ca_cert, header.time)
            if op.type == NODE_SET_CHANGED:
                walk.next_keys = dict(check_node_set_change(op, walk.genesis, header.time).keys)
                return kind, None
            if op.type not in ADMIN_TYPES:
                return kind, None  # shipments and contracts: checked by _check_world
            applied = apply_operator_entry(op, walk.admin, walk.ca_cert or b"", header.height,
                                           header.time)
        except AdminRejected as exc:
            return f"operator entry does not check at block time: {exc}"
        walk.admitted(applied.state)
    return kind, None


def _check_world(conn: sqlite3.Connection, ca_cert: bytes | None, report: VerifyReport) -> None:
    """Replay shipments and contracts from the log: every contract event must follow."""
    derived: list[tuple[int, ContractEvent]] = []
    try:
        world = replay_world_conn(conn, ca_cert, derived=derived)
    except TamperError as exc:
        report.problems.append(exc)
        return
    report.problems.extend(check_world_tables(conn, world, derived))


def _fail(report: VerifyReport, where: str, detail: str) -> bool:
    report.problems.append(TamperError(where, detail))
    return False


def describe(report: VerifyReport, *, all_devices_up_to: int = 50) -> str:
    """The chain report `trustfleet verify` prints."""
    lines: list[str] = []
    if not report.ok:
        lines += [f"FAILED: {p.where}: {p.detail}" for p in report.problems]
        if report.unnamed_problems:
            lines.append(f"... and {report.unnamed_problems} more damaged rows")
        lines.append(f"checked {report.blocks} good blocks"
                     + (" before the failure" if _log_failed(report) else ""))
    else:
        lines.append(
            f"OK: {report.blocks} blocks (height {report.height}), {report.entries} entries, "
            f"{report.readings} readings from {report.devices} devices; every block link, "
            f"Merkle root, node signature ({report.node_key_source}) and device signature "
            f"verified; tree root {report.root.hex()}")
    if report.index_rows:
        lines.append("index rows checked against the log: " + ", ".join(
            f"{n} {name}" for name, n in report.index_rows.items()))
    lines += _device_table(report.device_stats, all_devices_up_to)
    return "\n".join(lines)


def _log_failed(report: VerifyReport) -> bool:
    return any(p.where.startswith(("block ", "entry ")) for p in report.problems[:1])


def _device_table(devices: list[ReplayedDevice], all_up_to: int) -> list[str]:
    gaps = [d for d in devices if d.gaps or d.missing]
    broken = [d for d in devices if d.prev_mismatches]
    lines = [f"devices (log replay): {len(devices)}; {len(gaps)} with gaps "
             f"({sum(d.gaps for d in devices)} gap(s), {sum(d.missing for d in devices)} "
             f"missing seq), {len(broken)} with broken prev links "
             f"({sum(d.prev_mismatches for d in devices)})"]
    shown = devices if len(devices) <= all_up_to else [d for d in devices if d in gaps
                                                       or d in broken]
    if not shown:
        return lines
    width = max(8, *(len(d.dev) for d in shown))
    lines.append(f"  {'DEVICE':<{width}}  READINGS  LAST SEQ  CONTIGUOUS  GAPS  MISSING  "
                 "PREV MISMATCHES")
    lines += [f"  {d.dev:<{width}}  {d.readings:>8}  {d.last_seq:>8}  {d.contiguous_seq:>10}  "
              f"{d.gaps:>4}  {d.missing:>7}  {d.prev_mismatches:>15}" for d in shown]
    if len(shown) < len(devices):
        lines.append(f"  ({len(devices) - len(shown)} devices without gaps or broken links "
                     "not shown)")
    return lines
