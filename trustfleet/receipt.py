"""Receipts: what a ledger node tells a device about its committed readings (DESIGN.md §4).

    {"v": 1, "dev": str, "seq": highest contiguous committed seq, "last": highest committed seq,
     "height": block height, "block": SHA-256 of the block header, "header": header bytes,
     "sigs": [{"node": node id, "sig": raw r||s over header}]}

A consortium node (ordering = "etcd", docs/consortium.md) sends a receipt only when the block
is final, and then adds "final": true; its `sigs` are the block's quorum certificate (more
than two thirds of the chain's node set). A solo node's receipt is unchanged (its one
signature is the whole node set's).

The device drops a reading from its outbox only when a receipt's `seq` covers it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trustfleet import cbor


@dataclass(frozen=True)
class Receipt:
    dev: str
    seq: int
    last: int
    height: int
    block: bytes
    header: bytes
    sigs: list[dict[str, Any]] = field(default_factory=list)
    final: bool = False
    """Sent by a consortium node: `sigs` is the block's quorum certificate."""

    def encode(self) -> bytes:
        doc: dict[str, Any] = {"v": 1, "dev": self.dev, "seq": self.seq, "last": self.last,
                               "height": self.height, "block": self.block,
                               "header": self.header, "sigs": self.sigs}
        if self.final:
            doc["final"] = True
        return cbor.dumps(doc)


def decode_receipt(data: bytes) -> Receipt:
    """Decode a receipt; raises WireError or ValueError on anything malformed."""
    value = cbor.loads_strict(data, max_size=64 * 1024)
    if not isinstance(value, dict) or value.get("v") != 1:
        raise ValueError("not a version-1 receipt")
    try:
        receipt = Receipt(dev=str(value["dev"]), seq=int(value["seq"]), last=int(value["last"]),
                          height=int(value["height"]), block=bytes(value["block"]),
                          header=bytes(value["header"]), sigs=list(value["sigs"]),
                          final=value.get("final") is True)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed receipt: {exc}") from None
    return receipt
