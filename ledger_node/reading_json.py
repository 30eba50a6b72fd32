"""The `d` of a reading as the readings table stores it: `json.dumps(d, sort_keys=True)`.

The verification workers make it beside everything else they open (ledger_node.validate), so
that the node's busy thread does not.

JSONEncoder.encode builds the C encoder again at every call; this builds it once, with the
arguments json.dumps gives it (`markers` None: no cycle check, as a decoded CBOR map has no
cycles). Without the C accelerator: JSONEncoder.encode itself, the same text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json.encoder import (  # type: ignore[attr-defined]  # the C accelerator, not in stubs
    c_make_encoder,
    encode_basestring_ascii,
)
from typing import Any


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _encoder() -> Callable[[Any], str]:
    if c_make_encoder is None:
        return json.JSONEncoder(sort_keys=True).encode
    encoder = c_make_encoder(None, _not_json, encode_basestring_ascii, None, ": ", ", ",
                             True, False, True)

    def encode(value: Any) -> str:
        return "".join(encoder(value, 0))

    return encode


reading_json: Callable[[Any], str] = _encoder()
"""`json.dumps(value, sort_keys=True)` for the `d` of a reading (a map of scalars and lists
of scalars: ledger_node's payload checks)."""
