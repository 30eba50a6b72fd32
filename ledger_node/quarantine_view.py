"""Showing hostile bytes safely: a hex dump, and CBOR diagnostic notation (RFC 8949 §8).

Quarantined input is whatever an attacker sent, so the decoded view is bounded: the input is
at most `MAX_INPUT` bytes, nesting at most `MAX_DEPTH`, the output at most `MAX_OUTPUT`
characters. A byte string that itself holds one CBOR array, map or tag (a COSE protected
header, a reading payload) is shown decoded inside `<< >>` (RFC 8610 Appendix G.3).
Pure functions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import cbor2

from trustfleet import cbor
from trustfleet.errors import WireError

MAX_INPUT = 64 * 1024
MAX_DEPTH = 16
MAX_OUTPUT = 20_000
MAX_BYTES_SHOWN = 64


def hexdump(data: bytes, width: int = 16) -> str:
    """`xxd`-style: offset, hex bytes, printable ASCII."""
    lines = []
    for off in range(0, len(data), width):
        chunk = data[off:off + width]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{off:08x}  {hexes:<{width * 3 - 1}}  |{text}|")
    return "\n".join(lines)


def cbor_view(data: bytes) -> tuple[str | None, str | None]:
    """(diagnostic notation, None) if `data` is exactly one CBOR item, else (None, why not)."""
    try:
        value = cbor.loads_strict(data, max_size=MAX_INPUT)
    except WireError as exc:
        return None, exc.detail
    out = _Diag()
    out.value(value, 0)
    return out.text(), None


class _Diag:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0

    def text(self) -> str:
        text = "".join(self.parts)
        return text if self.size <= MAX_OUTPUT else text[:MAX_OUTPUT] + " …(cut)"

    def emit(self, s: str) -> None:
        if self.size <= MAX_OUTPUT:
            self.parts.append(s)
            self.size += len(s)

    def value(self, v: Any, depth: int) -> None:
        if self.size > MAX_OUTPUT:  # also ends a walk of shared (cyclic) values, tag 28/29
            return
        if depth > MAX_DEPTH:
            self.emit("…")
        elif isinstance(v, bool) or v is None:
            self.emit({True: "true", False: "false", None: "null"}[v])
        elif isinstance(v, int):
            self.emit(str(v))
        elif isinstance(v, float):
            self.emit(_float(v))
        elif isinstance(v, str):
            self.emit(json.dumps(v))
        elif isinstance(v, bytes):
            self.bytestring(v, depth)
        elif isinstance(v, list | tuple):  # cbor2 gives tuples inside tags
            self.sequence("[", "]", list(v), depth)
        elif isinstance(v, Mapping):  # dict, and cbor2's frozendict inside tags
            self.emit("{")
            for i, (k, item) in enumerate(v.items()):
                self.emit(", " if i else "")
                self.value(k, depth + 1)
                self.emit(": ")
                self.value(item, depth + 1)
            self.emit("}")
        elif isinstance(v, cbor2.CBORTag):
            self.emit(f"{v.tag}(")
            self.value(v.value, depth + 1)
            self.emit(")")
        elif isinstance(v, cbor2.CBORSimpleValue):
            self.emit(f"simple({v.value})")
        elif v is cbor2.undefined:
            self.emit("undefined")
        else:  # cbor2 semantic decodings (datetime, Decimal, ...): their text, quoted
            self.emit(json.dumps(f"{type(v).__name__}: {v}"))

    def sequence(self, open_: str, close: str, items: list[Any], depth: int) -> None:
        self.emit(open_)
        for i, item in enumerate(items):
            self.emit(", " if i else "")
            self.value(item, depth + 1)
        self.emit(close)

    def bytestring(self, b: bytes, depth: int) -> None:
        if len(b) >= 2 and depth < MAX_DEPTH:
            try:
                inner = cbor.loads_strict(b, max_size=MAX_INPUT)
            except WireError:
                inner = None
            if isinstance(inner, list | tuple | Mapping | cbor2.CBORTag):
                self.emit("<<")
                self.value(inner, depth + 1)
                self.emit(">>")
                return
        shown = b[:MAX_BYTES_SHOWN].hex()
        self.emit(f"h'{shown}'" if len(b) <= MAX_BYTES_SHOWN
                  else f"h'{shown}…' ({len(b)} bytes)")


def _float(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return repr(v)
