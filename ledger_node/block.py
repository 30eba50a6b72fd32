"""Block headers: one per ordering step, and each one a signed tree head (DESIGN.md §5).

    header = deterministic CBOR {"v": 1, "chain": str, "height": uint, "time": ms (ledger time),
                                 "prev": SHA-256 of the previous header (32 zero bytes at 0),
                                 "first": index of the block's first entry, "count": entries,
                                 "size": tree size after the block, "root": tree root after it,
                                 "proposer": node id}
    block hash = SHA-256(header bytes); each node signs the header bytes with ES256.

Pure functions only: no storage, no keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Final

from ledger_node.errors import LedgerError
from trustfleet import cbor
from trustfleet.errors import WireError

HEADER_VERSION: Final = 1
ZERO_HASH: Final = bytes(32)


@dataclass(frozen=True)
class BlockHeader:
    chain: str
    height: int
    time: int
    prev: bytes
    first: int
    count: int
    size: int
    root: bytes
    proposer: str
    v: int = HEADER_VERSION

    def encode(self) -> bytes:
        return cbor.dumps(asdict(self))

    def hash(self) -> bytes:
        return block_hash(self.encode())


def block_hash(header_bytes: bytes) -> bytes:
    return hashlib.sha256(header_bytes).digest()


def decode_header(data: bytes) -> BlockHeader:
    """Decode header bytes; raises LedgerError if they are not a deterministic v1 header."""
    try:
        value = cbor.loads_strict(data, max_size=4096)
    except WireError as exc:
        raise LedgerError(f"block header is not CBOR: {exc.detail}") from None
    fields = {"v", "chain", "height", "time", "prev", "first", "count", "size", "root", "proposer"}
    if not isinstance(value, dict) or set(value) != fields:
        raise LedgerError("block header does not have exactly the v1 fields")
    try:
        header = BlockHeader(**value)
    except TypeError as exc:
        raise LedgerError(f"block header fields: {exc}") from None
    if header.encode() != data:
        raise LedgerError("block header is not in deterministic encoding")
    return header
