"""Proof bundles: log entries with everything needed to check them offline (docs/proof-bundle.md).

    {"format": "trustfleet-proof-bundle", "version": 1,
     "subject":   {"device": id | null, "from": ms | null, "to": ms | null},
     "head":      {"header": base64, "signatures": [{"node": id, "sig": base64 r||s}]},
     "node_keys": [{"node": id, "spki": base64 DER}],
     "devices":   [{"dev": id, "spki": base64 DER, "enrolment": leaf index}],
     "entries":   [{"index": leaf index, "data": base64 entry bytes,
                    "proof": [base64 hash, ...]}]}          (increasing index)

This module builds bundles from a node's store (read-only connection); ledger_node.bundle_verify
checks them with no store and no network. Every reading's device comes with the enrolment
entry that put its key on the log, itself in ``entries`` with its own proof.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from ledger_node import entries as entry_types
from ledger_node import proofs
from ledger_node.errors import TamperError
from ledger_node.heads import b64, head_json, node_keys_json
from ledger_node.proofs import BadProofRequest, NotInLog, SignedHead, StoredEntry
from ledger_node.subtrees import SubtreeReader
from trustfleet.cose import decode_sign1
from trustfleet.errors import WireError
from trustfleet.payload import decode_payload

__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION", "MAX_BUNDLE_ENTRIES", "Subject", "build_bundle",
           "bundle_for_device", "bundle_for_entry"]

BUNDLE_FORMAT: Final = "trustfleet-proof-bundle"
BUNDLE_VERSION: Final = 1
MAX_BUNDLE_ENTRIES: Final = 100_000


@dataclass(frozen=True)
class Subject:
    """What a bundle claims to prove: a device's readings with device time in [t_from, t_to)."""

    device: str | None = None
    t_from: int | None = None
    t_to: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "from": self.t_from, "to": self.t_to}


def build_bundle(conn: sqlite3.Connection, indices: Iterable[int], *,
                 head: SignedHead | int | None = None, subject: Subject = Subject(),
                 limit: int = MAX_BUNDLE_ENTRIES) -> dict[str, Any]:
    """A bundle proving the entries at ``indices`` against ``head`` (a SignedHead, a height, or
    the newest block), plus the enrolment entries of every device whose reading is included."""
    if not isinstance(head, SignedHead):
        head = proofs.signed_head(conn, head)
    wanted: dict[int, StoredEntry] = {}
    enrolments: dict[str, StoredEntry] = {}
    for index in sorted(set(indices)):
        if len(wanted) >= limit:
            raise BadProofRequest(f"more than {limit} entries; ask for a shorter time range")
        e = proofs.entry(conn, index)
        wanted[index] = e
        if e.kind == entry_types.DEVICE_ENROLLED:
            enrolments.setdefault(_admin(e)["dev"], e)
        elif e.kind == entry_types.KIND_READING:
            dev = _reading_device(e)
            if dev not in enrolments:
                enrolments[dev] = proofs.enrolment_entry(conn, dev)
    for e in enrolments.values():
        wanted.setdefault(e.index, e)
    reader = SubtreeReader(conn)
    items = []
    for index in sorted(wanted):
        proof = proofs.inclusion(conn, index, head, reader)
        items.append({"index": index, "data": b64(proof.entry.data),
                      "proof": [b64(h) for h in proof.hashes]})
    devices = []
    for dev, e in sorted(enrolments.items()):
        devices.append({"dev": dev, "spki": b64(bytes(_admin(e)["key"])), "enrolment": e.index})
    return {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "subject": subject.to_json(),
            "head": head_json(head.header_bytes, head.signatures, convenience=False),
            "node_keys": node_keys_json(proofs.node_keys(conn)), "devices": devices,
            "entries": items}


def bundle_for_device(conn: sqlite3.Connection, device: str, t_from: int | None = None,
                      t_to: int | None = None, *, height: int | None = None,
                      limit: int = MAX_BUNDLE_ENTRIES) -> dict[str, Any]:
    """A bundle of ``device``'s readings with device time in [t_from, t_to) (either bound
    open when None), committed in blocks up to ``height`` (the newest when None)."""
    head = proofs.signed_head(conn, height)
    proofs.enrolment_entry(conn, device)  # NotInLog for a device never enrolled
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


def _bound(t: int | None) -> str:
    return "open" if t is None else str(t)


def _admin(e: StoredEntry) -> dict[str, Any]:
    try:
        return entry_types.decode_admin(e.data)
    except ValueError as exc:  # WireError is a ValueError
        raise TamperError(f"entry {e.index}", f"administrative entry does not decode: {exc}"
                          ) from None


def _reading_device(e: StoredEntry) -> str:
    try:
        return decode_payload(decode_sign1(e.data).payload).dev
    except WireError as exc:
        raise TamperError(f"entry {e.index}", f"reading does not decode: {exc}") from None


def bundle_for_entry(conn: sqlite3.Connection, index: int,
                     height: int | None = None) -> dict[str, Any]:
    """A bundle proving one entry against block ``height`` (the newest when None); for a
    reading, its subject is the reading's device."""
    e = proofs.entry(conn, index)
    device = _reading_device(e) if e.kind == entry_types.KIND_READING else None
    return build_bundle(conn, [index], head=height, subject=Subject(device))
