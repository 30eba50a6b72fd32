"""Administrative ledger entries (DESIGN.md §5): deterministic CBOR maps with a "type".

Reading entries are the device's COSE_Sign1 bytes, unchanged, so a partner can check a
reading's inclusion proof with nothing but the bytes the device signed. Administrative
entries are CBOR maps, which a COSE_Sign1 (a tag or an array) can never be.

    {"type": "genesis", "chain": str, "node": node id, "node_key": SPKI DER, "time": ms}
    {"type": "device_enrolled", "dev": str, "fleet": str, "key": SPKI DER, "kid": SHA-256(key)}
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from trustfleet import cbor

GENESIS: Final = "genesis"
DEVICE_ENROLLED: Final = "device_enrolled"
KIND_READING: Final = "reading"


def genesis(chain: str, node_id: str, node_key: bytes, time_ms: int) -> bytes:
    return cbor.dumps({"type": GENESIS, "chain": chain, "node": node_id, "node_key": node_key,
                       "time": time_ms})


def device_enrolled(dev: str, fleet: str, key: bytes) -> bytes:
    return cbor.dumps({"type": DEVICE_ENROLLED, "dev": dev, "fleet": fleet, "key": key,
                       "kid": hashlib.sha256(key).digest()})


def admin_kind(entry: bytes) -> str:
    """"reading" for an envelope, else the admin entry's type (first byte tells a CBOR map)."""
    if entry[:1] and 0xA0 <= entry[0] <= 0xBF:
        return str(decode_admin(entry)["type"])
    return KIND_READING


def decode_admin(entry: bytes) -> dict[str, Any]:
    value = cbor.loads_strict(entry, max_size=64 * 1024)
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise ValueError("administrative entry must be a map with a type")
    return value
