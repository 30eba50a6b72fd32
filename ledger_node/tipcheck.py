"""The start-up check of a node's tip: is the last block the node committed intact?

`check_tip(conn, node_id, node_key)` reads only the last block and what it needs around it,
so it costs the same on a chain of any length (`trustfleet verify` checks everything). It
raises TamperError naming the first thing that is wrong:

* the tip header decodes, its height is the row's, and the stored hash is its hash;
* `prev` is the stored hash of block height-1, which is that block's header hash;
* the node signature on the tip verifies: with `node_key` (the node's own HSM key) when the
  tip is this node's, else with the proposer's key from the genesis entry;
* the stored frontier (compact range) has the header's tree size and root, and the header's
  first/count agree with the row and with the tree size;
* the tip's entries, appended to block height-1's frontier, give the tip's frontier again (a
  changed, missing or extra entry in the last block is caught here);
* `merkle_nodes` holds, unchanged, every stored subtree (level >= subtrees.MIN_STORED_LEVEL)
  the tip block completed and every stored subtree of the tip's frontier (the nodes the next
  block and every new proof will build on; smaller ones are hashed from entries when read);
* nothing is stored past the tip: no entry at or after the tree size.

A genesis entry naming this node with another key raises ConfigError: the node was started
with the wrong HSM token, which is not tampering, and is just as fatal.
"""

from __future__ import annotations

import sqlite3

from hsm import verify_es256
from ledger_node import entries as entry_types
from ledger_node.block import ZERO_HASH, BlockHeader, block_hash, decode_header
from ledger_node.consortium.errors import QuorumError
from ledger_node.errors import ConfigError, LedgerError, ProofError, TamperError
from ledger_node.merkle import CompactRange, leaf_hash, perfect_subtrees
from ledger_node.quorum import GENESIS_NODES, block_signatures_problem, genesis_keys
from ledger_node.subtrees import MIN_STORED_LEVEL, append_leaves
from trustfleet.errors import WireError

__all__ = ["check_tip"]


def check_tip(conn: sqlite3.Connection, node_id: str, node_key: bytes) -> None:
    """Raise TamperError (or ConfigError, see the module doc) unless the tip is intact."""
    row = conn.execute("SELECT height, hash, header, first, count, size, frontier FROM blocks "
                       "ORDER BY height DESC LIMIT 1").fetchone()
    if row is None:
        return
    height, stored_hash, header_bytes = int(row[0]), bytes(row[1]), bytes(row[2])
    where = f"block {height} (the tip)"
    try:
        header = decode_header(header_bytes)
    except LedgerError as exc:
        raise TamperError(where, f"header does not decode: {exc}") from None
    if header.height != height:
        raise TamperError(where, f"stored at height {height}, header says {header.height}")
    if block_hash(header_bytes) != stored_hash:
        raise TamperError(where, "stored block hash is not the hash of the header")
    _check_prev(conn, header, where)
    _check_signature(conn, header, header_bytes, node_id, node_key, where)
    prev_range = _frontier_before(conn, header, where)
    tip_range = _frontier(bytes(row[6]), where)
    if (row[3], row[4], row[5]) != (header.first, header.count, header.size) or \
            header.first + header.count != header.size:
        raise TamperError(where, f"row says first {row[3]}, count {row[4]}, size {row[5]}; "
                          f"header says {header.first}, {header.count}, {header.size}")
    if tip_range.size != header.size or tip_range.root() != header.root:
        raise TamperError(where, "stored frontier does not give the header's tree size and root")
    if prev_range.size != header.first:
        raise TamperError(where, f"block {height - 1} ends at {prev_range.size} entries, "
                          f"the tip starts at {header.first}")
    rows = conn.execute("SELECT idx, height, data FROM entries WHERE idx >= ? ORDER BY idx",
                        (header.first,)).fetchall()
    leaves = [leaf_hash(bytes(r[2])) for r in rows if r[0] < header.size]
    if len(rows) > header.count:
        raise TamperError(f"entry {rows[header.count][0]}", "stored past the tip's tree size "
                          f"{header.size}")
    if len(leaves) != header.count or any(r[1] != height for r in rows):
        raise TamperError(where, f"{header.count} entries in header, {len(leaves)} in store "
                          "under this block")
    recomputed, completed = append_leaves(prev_range, leaves)
    if recomputed.root() != header.root:
        raise TamperError(where, "Merkle root recomputed from the stored entries does not match "
                          "the header (an entry of the tip was changed)")
    _check_nodes(conn, completed, tip_range)


def _check_prev(conn: sqlite3.Connection, header: BlockHeader, where: str) -> None:
    if header.height == 0:
        if header.prev != ZERO_HASH:
            raise TamperError(where, "block 0 must have an all-zero prev")
        return
    prev = conn.execute("SELECT hash, header FROM blocks WHERE height = ?",
                        (header.height - 1,)).fetchone()
    if prev is None:
        raise TamperError(f"block {header.height - 1}", "missing below the tip")
    if bytes(prev[0]) != header.prev:
        raise TamperError(where, f"prev does not match block {header.height - 1}'s stored hash")
    if block_hash(bytes(prev[1])) != header.prev:
        raise TamperError(f"block {header.height - 1}", "its header no longer hashes to the "
                          "tip's prev")


def _check_signature(conn: sqlite3.Connection, header: BlockHeader, header_bytes: bytes,
                     node_id: str, node_key: bytes, where: str) -> None:
    genesis = conn.execute("SELECT data FROM entries WHERE idx = 0").fetchone()
    time0 = conn.execute("SELECT time FROM blocks WHERE height = 0").fetchone()
    keys: dict[str, bytes] = {}
    nodes = False
    consortium: bool | None = None  # one key and never changed: checked as a solo chain
    if genesis is not None:
        try:
            rec = entry_types.decode_admin(bytes(genesis[0]))
            keys = genesis_keys(rec, int(time0[0]) if time0 else header.time)
            nodes = rec.get(GENESIS_NODES) is not None
        except (ValueError, KeyError, TypeError):
            raise TamperError("entry 0", "genesis entry does not decode") from None
        except QuorumError as exc:
            raise TamperError("entry 0", f"genesis entry's node set: {exc}") from None
    if nodes:  # the set in force at the tip (node_set_changed entries: ledger_node.quorum)
        from ledger_node.consortium.cstore import node_set_history_of

        try:
            history = node_set_history_of(conn)
            keys = dict(history.at(header.height).keys)
            consortium = True if history.changes else None
        except (ValueError, WireError) as exc:
            raise TamperError("node_set_changed entries", f"do not decode: {exc}") from None
        except QuorumError as exc:
            raise TamperError("node_set_changed entries", f"node set: {exc}") from None
    if keys.get(node_id, node_key) != node_key:
        raise ConfigError(f"this node's HSM key is not the key the genesis entry gives node "
                          f"{node_id!r}: wrong token for this store?")
    if (len(keys) > 1 or consortium) and node_id in keys and header.proposer != node_id:
        # A consortium chain: this node signed every block it applied; the proposer's own
        # signature may not have reached it yet. Every signature stored must verify.
        own = conn.execute("SELECT sig FROM block_sigs WHERE height = ? AND node = ?",
                           (header.height, node_id)).fetchone()
        if own is None or not verify_es256(node_key, header_bytes, bytes(own[0])):
            raise TamperError(where, f"signature of node {node_id!r} (this node) does not "
                              "verify")
    sigs = [(r[0], bytes(r[1])) for r in conn.execute(
        "SELECT node, sig FROM block_sigs WHERE height = ?", (header.height,))]
    problem = block_signatures_problem(header_bytes, header.proposer, sigs, keys,
                                       node_key if header.proposer == node_id else None,
                                       consortium=consortium)
    if problem is not None:
        raise TamperError(where, problem)


def _frontier(data: bytes, where: str) -> CompactRange:
    try:
        return CompactRange.from_bytes(data)
    except ProofError as exc:
        raise TamperError(where, f"stored frontier is malformed: {exc}") from None


def _frontier_before(conn: sqlite3.Connection, header: BlockHeader, where: str) -> CompactRange:
    if header.height == 0:
        return CompactRange()
    row = conn.execute("SELECT frontier FROM blocks WHERE height = ?",
                       (header.height - 1,)).fetchone()
    return _frontier(bytes(row[0]), f"block {header.height - 1}")


def _check_nodes(conn: sqlite3.Connection, completed: list[tuple[int, int, bytes]],
                 tip: CompactRange) -> None:
    edge = [(n.level, n.index, h) for n, h in zip(perfect_subtrees(0, tip.size), tip.hashes,
                                                  strict=True) if n.level >= MIN_STORED_LEVEL]
    for level, index, want in [*completed, *edge]:
        got = conn.execute("SELECT hash FROM merkle_nodes WHERE level = ? AND idx = ?",
                           (level, index)).fetchone()
        if got is None:
            raise TamperError(f"merkle_nodes row (level {level}, index {index})", "missing")
        if bytes(got[0]) != want:
            raise TamperError(f"merkle_nodes row (level {level}, index {index})",
                              "hash differs from the recomputed subtree")
