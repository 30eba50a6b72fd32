"""Deterministic CBOR (RFC 8949 §4.2.1) encoding and strict decoding.

`dumps` uses cbor2's canonical mode: preferred (shortest) integer and float encodings,
definite lengths, and map keys sorted bytewise by their encodings (for the short text keys
our formats use, that is the same as RFC 8949's core deterministic order).

`loads_strict` refuses trailing bytes (cbor2.loads ignores them) and bounds the input size,
so that one envelope is always exactly one CBOR item.
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

from trustfleet.errors import BAD_CBOR, TOO_LARGE, WireError


def dumps(value: Any) -> bytes:
    """Encode `value` as deterministic CBOR."""
    return cbor2.dumps(value, canonical=True)


def loads_strict(data: bytes, *, max_size: int = 1 << 20) -> Any:
    """Decode exactly one CBOR item from `data`.

    Raises WireError(too_large) above `max_size` bytes and WireError(bad_cbor) for anything
    that is not one well-formed item with nothing after it.
    """
    if len(data) > max_size:
        raise WireError(TOO_LARGE, f"{len(data)} bytes, limit {max_size}")
    if not data:
        raise WireError(BAD_CBOR, "empty message")
    fp = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(fp).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise WireError(BAD_CBOR, f"not well-formed CBOR: {exc}") from None
    if fp.tell() != len(data):
        raise WireError(BAD_CBOR, f"{len(data) - fp.tell()} trailing bytes after the CBOR item")
    return value


def is_deterministic(data: bytes, value: Any) -> bool:
    """True if `data` is the deterministic encoding of the already-decoded `value`."""
    try:
        return dumps(value) == data
    except (cbor2.CBOREncodeError, TypeError, ValueError):
        return False
