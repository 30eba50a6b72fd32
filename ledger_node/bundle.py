"""Proof bundles: log entries with everything needed to check them offline (docs/proof-bundle.md).

Version 2 (certificates):

    {"format": "trustfleet-proof-bundle", "version": 2,
     "subject":      {"device": id | null, "from": ms | null, "to": ms | null},
     "head":         {"header": base64, "signatures": [{"node": id, "sig": base64 r||s}]},
     "certificates": {"ca": base64 DER of the fleet CA certificate,
                      "nodes": [{"node": id, "cert": base64 DER}]},      (none logged yet)
     "blocks":       [{"header": base64, "signatures": [...],
                       "consistency": [base64 hash, ...]}],  (blocks holding operator entries)
     "entries":      [{"index": leaf index, "data": base64 entry bytes,
                       "proof": [base64 hash, ...]}]}          (increasing index)

On a consortium chain (docs/consortium.md) the head is, by default, the newest **final** block,
and its ``signatures`` are its quorum certificate (more than two thirds of the node set, each
checked here); ``certificates.nodes`` holds the node set's certificates from the genesis
entry, so that a verifier that pins the fleet CA knows every node key.

``entries`` holds the genesis entry (index 0: it names the fleet CA and the node key), the
operator entries of every device whose readings are included (enrolment, rotations,
revocation: its whole history up to the head) and the entries asked for, each with its
inclusion proof against ``head``. ``blocks`` holds the signed header of every other block that
committed one of those operator entries, with a consistency proof from its tree to the head's,
so that a verifier knows the ledger time at which the certificates were checked. On a
consortium chain ``entries`` also holds every ``node_set_changed`` entry up to the head, and
``blocks`` their blocks' headers: the verifier applies them in log order to know the node set
in force at the head (and at each block), whose quorum certificate it then requires.

This module builds bundles from a node's store (read-only connection); ledger_node.bundle_verify
checks them with no store and no network.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ledger_node import entries as entry_types
from ledger_node import proofs
from ledger_node.admin import NODE_SET_CHANGED
from ledger_node.errors import TamperError
from ledger_node.heads import b64, head_json
from ledger_node.proofs import BadProofRequest, NotInLog, SignedHead, StoredEntry
from ledger_node.subtrees import SubtreeReader
from trustfleet.batch import open_reading
from trustfleet.errors import WireError

__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION", "MAX_BUNDLE_ENTRIES", "BlockProof", "Subject",
           "build_bundle", "bundle_document", "bundle_for_device", "bundle_for_entry",
           "default_head"]

BUNDLE_FORMAT: Final = "trustfleet-proof-bundle"
BUNDLE_VERSION: Final = 2
MAX_BUNDLE_ENTRIES: Final = 100_000


@dataclass(frozen=True)
class Subject:
    """What a bundle claims to prove: a device's readings with device time in [t_from, t_to)."""

    device: str | None = None
    t_from: int | None = None
    t_to: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "from": self.t_from, "to": self.t_to}


@dataclass(frozen=True)
class BlockProof:
    """A block's signed header and the consistency proof from its tree to the head's tree."""

    header: bytes
    signatures: Sequence[tuple[str, bytes]]
    consistency: Sequence[bytes]


def bundle_document(subject: Subject, head: tuple[bytes, Sequence[tuple[str, bytes]]],
                    ca_cert: bytes, entries: Iterable[tuple[int, bytes, Sequence[bytes]]], *,
                    blocks: Iterable[BlockProof] = (),
                    node_certs: Iterable[tuple[str, bytes]] = ()) -> dict[str, Any]:
    """The bundle JSON from its parts: (header bytes, signatures) of the head, the fleet CA
    certificate, (index, entry bytes, inclusion proof) in increasing index order."""
    return {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "subject": subject.to_json(),
        "head": head_json(head[0], head[1], convenience=False),
        "certificates": {"ca": b64(ca_cert),
                         "nodes": [{"node": n, "cert": b64(c)} for n, c in node_certs]},
        "blocks": [{**head_json(b.header, b.signatures, convenience=False),
                    "consistency": [b64(h) for h in b.consistency]} for b in blocks],
        "entries": [{"index": i, "data": b64(data), "proof": [b64(h) for h in proof]}
                    for i, data, proof in entries],
    }


def build_bundle(conn: sqlite3.Connection, indices: Iterable[int], *,
                 head: SignedHead | int | None = None, subject: Subject = Subject(),
                 limit: int = MAX_BUNDLE_ENTRIES) -> dict[str, Any]:
    """A bundle proving the entries at ``indices`` against ``head`` (a SignedHead, a height, or
    the newest block), plus the genesis entry and the operator history of every device whose
    reading or operator entry is included."""
    if not isinstance(head, SignedHead):
        head = proofs.signed_head(conn, head if head is not None else default_head(conn))
    genesis = proofs.genesis(conn)
    if genesis.ca is None:
        raise BadProofRequest("this chain's genesis entry names no fleet CA: there are no "
                              "certificates to prove its devices' keys with")
    wanted: dict[int, StoredEntry] = {0: genesis.entry}
    devices: set[str] = set()
    for n, index in enumerate(sorted(set(indices))):
        if n >= limit:
            raise BadProofRequest(f"more than {limit} entries; ask for a shorter time range")
        e = proofs.entry(conn, index)
        wanted[index] = e
        if e.kind == entry_types.KIND_READING:
            devices.add(_reading_device(e))
        elif e.kind in proofs.OPERATOR_KINDS:
            dev = proofs.operator_device(e.data)
            if dev is None:
                raise TamperError(f"entry {e.index}", "operator entry does not decode")
            devices.add(dev)
    operator_blocks: set[int] = set()
    for index, height in conn.execute(  # the node set in force at the head (ledger_node.quorum)
            "SELECT idx, height FROM entries WHERE kind <> 'reading' AND kind = ? AND idx < ? "
            "ORDER BY idx",
            (NODE_SET_CHANGED, head.header.size)):
        wanted.setdefault(int(index), proofs.entry(conn, int(index)))
        operator_blocks.add(int(height))
    for dev in sorted(devices):
        history = proofs.device_history(conn, dev, size=head.header.size)
        if not history:
            raise TamperError(f"device {dev!r}", f"readings of {dev!r} are in the log, but no "
                              f"operator entry about it is")
        for rec in history:
            wanted.setdefault(rec.entry.index, rec.entry)
            operator_blocks.add(rec.entry.height)
    reader = SubtreeReader(conn)
    items = []
    for index in sorted(wanted):
        proof = proofs.inclusion(conn, index, head, reader)
        items.append((index, proof.entry.data, proof.hashes))
    blocks = []
    for height in sorted(operator_blocks - {head.height}):
        p = proofs.consistency(conn, height, head.height)
        blocks.append(BlockProof(p.old.header_bytes, p.old.signatures, p.hashes))
    return bundle_document(subject, (head.header_bytes, head.signatures), genesis.ca, items,
                           blocks=blocks, node_certs=_node_certs(genesis.entry.data))


def bundle_for_device(conn: sqlite3.Connection, device: str, t_from: int | None = None,
                      t_to: int | None = None, *, height: int | None = None,
                      limit: int = MAX_BUNDLE_ENTRIES) -> dict[str, Any]:
    """A bundle of ``device``'s readings with device time in [t_from, t_to) (either bound
    open when None), committed in blocks up to ``height`` (the newest when None)."""
    head = proofs.signed_head(conn, height if height is not None else default_head(conn))
    if not proofs.device_history(conn, device, size=head.header.size):
        raise NotInLog(f"no device {device!r} is enrolled (as of block {head.height})")
    sql = "SELECT idx FROM readings WHERE dev = ? AND height <= ?"
    args: list[Any] = [device, head.height]
    if t_from is not None:
        sql += " AND t >= ?"
        args.append(t_from)
    if t_to is not None:
        sql += " AND t < ?"
        args.append(t_to)
    sql += " ORDER BY idx LIMIT ?"
    args.append(limit + 1)
    indices = [int(r[0]) for r in conn.execute(sql, args)]
    if not indices:
        raise NotInLog(f"no readings of device {device!r} with device time in "
                       f"[{_bound(t_from)}, {_bound(t_to)}) in blocks 0..{head.height}")
    if len(indices) > limit:
        raise BadProofRequest(f"more than {limit} readings of {device!r} in that range; ask "
                              f"for a shorter time range")
    return build_bundle(conn, indices, head=head, subject=Subject(device, t_from, t_to),
                        limit=limit + 1)


def bundle_for_entry(conn: sqlite3.Connection, index: int,
                     height: int | None = None) -> dict[str, Any]:
    """A bundle proving one entry against block ``height`` (the newest when None); for a
    reading, its subject is the reading's device."""
    e = proofs.entry(conn, index)
    device = _reading_device(e) if e.kind == entry_types.KIND_READING else None
    return build_bundle(conn, [index], head=height, subject=Subject(device))


def default_head(conn: sqlite3.Connection) -> int | None:
    """The height a bundle is proven against by default: the newest block on a solo chain
    (None), the newest final block on a consortium chain (BadProofRequest if none is)."""
    from ledger_node.consortium.cstore import final_height, node_set_history_of
    from ledger_node.consortium.errors import QuorumError

    try:
        history = node_set_history_of(conn)
    except (QuorumError, ValueError):  # WireError is a ValueError
        return None
    if not history.changes and history.latest.size == 1:
        return None
    height = final_height(conn, history)
    if height is None:
        raise BadProofRequest("no block of this consortium chain holds a quorum certificate "
                              "yet: there is no final head to prove against")
    return height


def _node_certs(genesis_data: bytes) -> list[tuple[str, bytes]]:
    """The node set's certificates a consortium genesis entry names (none on a solo chain)."""
    from ledger_node.quorum import GENESIS_NODES

    try:
        listed = entry_types.decode_admin(genesis_data).get(GENESIS_NODES)
    except (ValueError, WireError):
        return []
    if not isinstance(listed, list):
        return []
    return [(str(n["node"]), bytes(n["cert"])) for n in listed
            if isinstance(n, dict) and isinstance(n.get("cert"), bytes)]


def _bound(t: int | None) -> str:
    return "open" if t is None else str(t)


def _reading_device(e: StoredEntry) -> str:
    try:
        return open_reading(e.data).reading.dev
    except WireError as exc:
        raise TamperError(f"entry {e.index}", f"reading does not decode: {exc}") from None
