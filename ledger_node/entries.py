"""The kinds of ledger entries (DESIGN.md §5) and the node's own entries.

    reading          a device's COSE_Sign1 envelope, byte for byte as the device signed it
    device_enrolled, device_revoked, device_rotated
                     operator entries: COSE_Sign1 carrying the operator certificate
                     (see ledger_node.admin)
    genesis          written by the node that starts a chain: a deterministic CBOR map
                     {"type": "genesis", "chain": str, "node": node id, "node_key": SPKI DER,
                      "ca": fleet CA certificate DER, "time": ms}

A CBOR map can never be a COSE_Sign1 (a tag or an array), and an operator entry is told from
a reading by the x5chain in its protected header.
"""

from __future__ import annotations

from typing import Any, Final

from trustfleet import cbor

GENESIS: Final = "genesis"
KIND_READING: Final = "reading"
DEVICE_ENROLLED: Final = "device_enrolled"
DEVICE_REVOKED: Final = "device_revoked"
DEVICE_ROTATED: Final = "device_rotated"


def genesis(chain: str, node_id: str, node_key: bytes, time_ms: int,
            ca_cert: bytes | None = None) -> bytes:
    return cbor.dumps({"type": GENESIS, "chain": chain, "node": node_id, "node_key": node_key,
                       "ca": ca_cert, "time": time_ms})


def admin_kind(entry: bytes) -> str:
    """The kind of an entry: "reading", "genesis", or an operator entry's type."""
    if entry[:1] and 0xA0 <= entry[0] <= 0xBF:
        return str(decode_admin(entry)["type"])
    from ledger_node.admin import is_operator_entry, operator_entry_type

    if is_operator_entry(entry):
        return operator_entry_type(entry)
    return KIND_READING


def decode_admin(entry: bytes) -> dict[str, Any]:
    """A node-made entry (a CBOR map with a type)."""
    value = cbor.loads_strict(entry, max_size=64 * 1024)
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise ValueError("administrative entry must be a map with a type")
    return value
