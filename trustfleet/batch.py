"""Batch envelopes (DESIGN.md §4) and one way to open any reading entry.

For slow secure elements: one COSE_Sign1 signs a batch header
    {"v": 1, "type": "batch", "dev": str, "seq_first": uint, "seq_last": uint,
     "root": RFC 9162 root over the leaves SHA-256(payload) of the readings, in seq order,
     "t": device time ms}
and each reading travels as a self-contained *batched reading*:
    #6.1952797233([ batch: bstr (the COSE_Sign1 bytes), index: uint, proof: [bstr],
                    payload: bstr (the reading's deterministic CBOR) ])
(tag 0x74665231, 'tfR1', in CBOR's first-come-first-served range). Leaf data is
SHA-256(payload), so the leaf hash is SHA-256(0x00 || SHA-256(payload)). A batched reading is
as verifiable on its own as a single envelope: check the batch signature, then the inclusion
of its payload at `index` (= seq - seq_first) in a tree of seq_last - seq_first + 1 leaves.

`prev` chains readings by their *chain hash*: SHA-256 of the envelope bytes for a single
envelope (DESIGN.md §4), SHA-256 of the payload for a batched reading (whose item bytes
include a signature made after the reading was written). A device mixing both modes follows
the rule of the reading it links to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

import cbor2

from ledger_node.errors import ProofError
from ledger_node.merkle import (
    RangeHasher,
    inclusion_proof,
    leaf_hash,
    root_from_inclusion_proof,
)
from trustfleet import cbor
from trustfleet.cose import SignFunction, decode_sign1, sign1, sign1_from_item
from trustfleet.errors import BAD_ENVELOPE, WireError
from trustfleet.payload import MAX_SEQ, Reading, decode_payload

TAG_BATCHED_READING: Final = 0x74665231
BAD_BATCH: Final = "bad_batch"
BATCH_PROOF: Final = "batch_proof"
MAX_BATCH: Final = 4096
_HEADER_KEYS: Final = frozenset({"v", "type", "dev", "seq_first", "seq_last", "root", "t"})


class OpenedReading(NamedTuple):
    """Any reading entry, opened: what was signed, by which kid, and the reading itself."""

    reading: Reading
    kid: bytes
    to_be_signed: bytes
    signature: bytes
    chain_hash: bytes
    batched: bool


def is_batched(data: bytes) -> bool:
    return data[:5] == b"\xda" + TAG_BATCHED_READING.to_bytes(4, "big")


def sign_batch(payloads: Sequence[bytes], dev: str, seq_first: int, t: int, kid: bytes,
               sign: SignFunction) -> list[bytes]:
    """One signature over `payloads` (readings seq_first.. in order); one item per reading."""
    if not 1 <= len(payloads) <= MAX_BATCH:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH} readings")
    leaves = [leaf_hash(hashlib.sha256(p).digest()) for p in payloads]
    hasher = RangeHasher(leaves)
    header = {"v": 1, "type": "batch", "dev": dev, "seq_first": seq_first,
              "seq_last": seq_first + len(payloads) - 1, "root": hasher(0, len(leaves)), "t": t}
    batch = sign1(cbor.dumps(header), kid, sign)
    return [cbor.dumps(cbor2.CBORTag(TAG_BATCHED_READING,
                                     [batch, i, inclusion_proof(i, len(leaves), hasher), p]))
            for i, p in enumerate(payloads)]


def open_reading(data: bytes, *, max_size: int = 64 * 1024) -> OpenedReading:
    """Open a single envelope or a batched reading. Raises WireError with a quarantine reason.

    For a batched reading this also checks the inclusion proof; the signature is left to
    the caller (hsm.verify_es256 over `to_be_signed`).
    """
    if not is_batched(data):
        msg = decode_sign1(data, max_size=max_size)
        return OpenedReading(decode_payload(msg.payload), msg.kid, msg.to_be_signed(),
                             msg.signature, hashlib.sha256(data).digest(), batched=False)
    item = cbor.loads_strict(data, max_size=max_size)
    parts = item.value if isinstance(item, cbor2.CBORTag) else None
    if not isinstance(parts, (list, tuple)) or len(parts) != 4:
        raise WireError(BAD_BATCH, "a batched reading is [batch, index, proof, payload]")
    batch_bytes, index, proof, payload = parts
    if not (isinstance(batch_bytes, bytes) and isinstance(payload, bytes)
            and isinstance(index, int) and not isinstance(index, bool)
            and isinstance(proof, (list, tuple)) and all(isinstance(h, bytes) for h in proof)
            and len(proof) <= 64):
        raise WireError(BAD_BATCH, "batched reading fields have the wrong types")
    try:
        msg = sign1_from_item(cbor.loads_strict(batch_bytes, max_size=4096))
    except WireError as exc:
        raise WireError(BAD_BATCH, f"batch envelope: {exc.detail}") from None
    header = _header(msg.payload)
    reading = decode_payload(payload)
    size = header["seq_last"] - header["seq_first"] + 1
    if reading.dev != header["dev"]:
        raise WireError(BAD_BATCH, "reading and batch name different devices")
    if reading.seq - header["seq_first"] != index or not 0 <= index < size:
        raise WireError(BAD_BATCH, f"seq {reading.seq} is not at index {index} of the batch")
    try:
        root = root_from_inclusion_proof(leaf_hash(hashlib.sha256(payload).digest()), index,
                                         size, list(proof))
    except ProofError as exc:
        raise WireError(BATCH_PROOF, f"inclusion proof: {exc}") from None
    if root != header["root"]:
        raise WireError(BATCH_PROOF, "the reading is not in the signed batch root")
    return OpenedReading(reading, msg.kid, msg.to_be_signed(), msg.signature,
                         hashlib.sha256(payload).digest(), batched=True)


def _header(payload: bytes) -> dict[str, Any]:
    try:
        header = cbor.loads_strict(payload, max_size=1024)
    except WireError as exc:
        raise WireError(BAD_BATCH, f"batch header: {exc.detail}") from None
    if not isinstance(header, dict) or set(header) != _HEADER_KEYS or header["type"] != "batch":
        raise WireError(BAD_BATCH, f"batch header needs exactly {sorted(_HEADER_KEYS)}")
    if cbor.dumps(header) != payload:
        raise WireError(BAD_BATCH, "batch header is not deterministic CBOR")
    first, last, root = header["seq_first"], header["seq_last"], header["root"]
    if not (isinstance(first, int) and isinstance(last, int) and 1 <= first <= last <= MAX_SEQ
            and last - first < MAX_BATCH):
        raise WireError(BAD_BATCH, f"seq_first..seq_last must span 1 to {MAX_BATCH} readings")
    if not isinstance(root, bytes) or len(root) != 32 or header["v"] != 1:
        raise WireError(BAD_ENVELOPE, "batch root must be 32 bytes, v must be 1")
    return header
