"""The reading payload inside every envelope (DESIGN.md §4), as deterministic CBOR.

    {"v": 1, "dev": str, "seq": uint >= 1, "prev": bstr(32), "t": uint ms, "ts": "gps"|"rtc"|"ntp",
     "k": str, "d": {str: scalar | [scalar]}}

Unknown extra keys are refused in version 1, so that two encodings of one reading cannot
differ in what a verifier sees.
"""

from __future__ import annotations

import io
import math
import re
import struct
from typing import Any, Final, NamedTuple

import cbor2

from trustfleet import cbor
from trustfleet.errors import BAD_PAYLOAD, NON_DETERMINISTIC, WireError

FORMAT_VERSION: Final = 1
GENESIS_PREV: Final = bytes(32)
TIME_SOURCES: Final = frozenset({"gps", "rtc", "ntp"})
_DEVICE_ID: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"  # also in _decode_fast's _TAIL
_KIND: Final = r"[a-z][a-z0-9_]{0,31}"
DEVICE_ID_RE: Final = re.compile(f"^{_DEVICE_ID}$")
KIND_RE: Final = re.compile(f"^{_KIND}$")
MAX_SEQ: Final = (1 << 63) - 1
MAX_VALUES: Final = 32
_KEYS: Final = frozenset({"v", "dev", "seq", "prev", "t", "ts", "k", "d"})

Scalar = int | float | str | bool | None


class Reading(NamedTuple):
    """One sensor reading as the device signed it (a NamedTuple: the node makes one per
    reading, and a tuple is built several times faster than a frozen dataclass)."""

    dev: str
    seq: int
    prev: bytes
    t: int
    ts: str
    k: str
    d: dict[str, Any]
    v: int = FORMAT_VERSION

    def to_map(self) -> dict[str, Any]:
        return {"v": self.v, "dev": self.dev, "seq": self.seq, "prev": self.prev,
                "t": self.t, "ts": self.ts, "k": self.k, "d": self.d}


def encode_payload(reading: Reading) -> bytes:
    """Deterministic CBOR of a reading; checks it first, so we never sign what we would refuse."""
    check_reading_map(reading.to_map())
    return cbor.dumps(reading.to_map())


def decode_payload(data: bytes) -> Reading:
    """Decode and check a payload. Raises WireError(bad_payload | non_deterministic_cbor | ...)."""
    fast = _decode_fast(data)
    return fast if fast is not None else _decode_generic(data)


def _decode_generic(data: bytes) -> Reading:
    value = cbor.loads_strict(data, max_size=_MAX_PAYLOAD)
    check_reading_map(value)
    if not cbor.is_deterministic(data, value):
        raise WireError(NON_DETERMINISTIC, "payload is not deterministic CBOR (RFC 8949 §4.2)")
    return Reading(v=value["v"], dev=value["dev"], seq=value["seq"], prev=value["prev"],
                   t=value["t"], ts=value["ts"], k=value["k"], d=value["d"])


# A valid payload in deterministic CBOR is a map of 8 pairs whose keys come in this order
# (shortest encoding first, then bytewise): d, k, t, v, ts, dev, seq, prev.
_MAX_PAYLOAD: Final = 16 * 1024
_HEAD_D: Final = b"\xa8\x61d"

# Everything after `d`, matched in one go rather than field by field (that made up most of
# the fast path's time): each key with its value's head; k, ts and dev in their formats; v 1;
# t and seq as unsigned integers in their shortest encodings (`_UINT`: an argument of 1, 2,
# 4 or 8 bytes must not fit in the next shorter form); prev 32 bytes and then the end. A
# regular expression cannot tie a length to a head, so _decode_fast checks that the text
# heads of k and dev are the shortest heads of the lengths matched (`_TEXT_HEADS`).
_TEXT_HEAD: Final = rb"([\x61-\x77]|\x78.)"
_TEXT_HEADS: Final = tuple(bytes([0x60 + n]) if n < 24 else bytes([0x78, n]) for n in range(256))
_UINT: Final = (rb"([\x00-\x17]|\x18[\x18-\xff]|\x19(?!\x00).{2}|\x1a(?!\x00{2}).{4}"
                rb"|\x1b(?!\x00{4}).{8})")
_TAIL: Final = re.compile(
    rb"\x61k" + _TEXT_HEAD + b"(" + _KIND.encode() + b")"
    + rb"\x61t" + _UINT
    + rb"\x61v\x01"
    + rb"\x62ts(" + b"|".join(bytes([0x60 + len(name)]) + re.escape(name.encode())
                             for name in sorted(TIME_SOURCES)) + b")"  # with its head
    + rb"\x63dev" + _TEXT_HEAD + b"(" + _DEVICE_ID.encode() + b")"
    + rb"\x63seq" + _UINT
    + rb"\x64prev\x58\x20.{32}", re.DOTALL)


def _decode_fast(data: bytes) -> Reading | None:
    """A valid payload in the layout above, read without the generic decoder (except for
    `d`) and without re-encoding all of it; None for anything else, which then takes the
    generic path. When this returns a Reading, the generic path returns an equal one: every
    check of check_reading_map is made, and every part is checked to be in its shortest
    encoding, `d` by re-encoding it unless _scan_d reads it."""
    if type(data) is not bytes or len(data) > _MAX_PAYLOAD or data[:3] != _HEAD_D:
        return None
    try:
        scanned = _scan_d(data)
        if scanned is not None:
            d, i = scanned
        else:  # a `d` of another shape: the generic decoder, and its encoding checked
            fp = io.BytesIO(data)
            fp.seek(3)
            d = cbor2.CBORDecoder(fp).decode()
            i = fp.tell()
            if type(d) is not dict or cbor.dumps(d) != data[3:i]:
                return None
            _check_values(d)
    except (WireError, cbor2.CBORError, ValueError, TypeError, IndexError, OverflowError,
            RecursionError, struct.error):  # CBORError: also a `d` that cannot be re-encoded
        return None
    tail = _TAIL.fullmatch(data, i)
    if tail is None:
        return None
    k_head, k, t_raw, ts, dev_head, dev, seq_raw = tail.groups()
    if k_head != _TEXT_HEADS[len(k)] or dev_head != _TEXT_HEADS[len(dev)]:
        return None
    # an integer is its argument, or its head alone if it has no argument (below 24)
    t = int.from_bytes(t_raw[1:] or t_raw, "big")
    seq = int.from_bytes(seq_raw[1:] or seq_raw, "big")
    if not (t < 1 << 53 and 1 <= seq <= MAX_SEQ):
        return None
    # positional (dev, seq, prev, t, ts, k, d): keywords cost 0.25 us more, a tenth of the call
    return Reading(dev.decode("ascii"), seq, data[-32:], t, ts[1:].decode("ascii"),
                   k.decode("ascii"), d)


_F16: Final = struct.Struct(">e")
_F32: Final = struct.Struct(">f")
_F64: Final = struct.Struct(">d")


def _scan_d(data: bytes) -> tuple[dict[str, Any], int] | None:
    """`d` at offset 3 in its common shape, read without the generic decoder: at most 23
    pairs, keys of 1 to 23 UTF-8 bytes in strictly increasing order of their encodings,
    values null, booleans, integers, text of at most 255 bytes and finite floats, each in
    its deterministic (shortest) encoding. Returns `d` and where it ends, or None for
    anything else (then the generic decoder and re-encoding decide). What it returns is
    what `cbor2` decodes, and passes `_check_values`: the counts and sizes accepted here are
    within its limits and NaN is not accepted."""
    count = data[3] - 0xA0
    if not 0 <= count <= 23:
        return None
    d: dict[str, Any] = {}
    i, last = 4, b""
    for _ in range(count):
        size = data[i] - 0x60
        if not 1 <= size <= 23:
            return None
        end = i + 1 + size
        key = data[i:end]  # if cut short, data[end] below raises IndexError
        if key <= last:  # sorted, no duplicates (RFC 8949 4.2.1)
            return None
        last = key
        head, i = data[end], end + 1
        value: Any
        # the commonest heads first: doubles, then small integers, then halves
        if head == 0xFB:  # double: shortest if a single cannot hold it exactly
            value, i = _F64.unpack_from(data, i)[0], i + 8
            if not math.isfinite(value) or _fits(_F32, value):
                return None
        elif head <= 0x17:  # an unsigned integer in the head itself
            value = head
        elif head == 0xF9:  # half: always the shortest form of its value (NaN: generic path)
            value, i = _F16.unpack_from(data, i)[0], i + 2
            if value != value:
                return None
        elif head <= 0x1B or 0x20 <= head <= 0x3B:  # unsigned or negative integer
            value, i = _uint(data, end) if head <= 0x1B else _uint(data, end, 0x20)
            if head >= 0x20:
                value = -1 - value
        elif 0x60 <= head <= 0x78:  # text
            value, i = _text(data, end)
        elif head == 0xFA:  # single: shortest if a half cannot hold it exactly
            value, i = _F32.unpack_from(data, i)[0], i + 4
            if not math.isfinite(value) or _fits(_F16, value):
                return None
        elif 0xF4 <= head <= 0xF6:
            value = (False, True, None)[head - 0xF4]
        else:
            return None
        d[key[1:].decode("utf-8")] = value
    if i > len(data):
        return None
    return d, i


def _fits(fmt: struct.Struct, value: float) -> bool:
    """True if `value` is exactly representable in the narrower float format `fmt`."""
    try:
        return bool(fmt.unpack(fmt.pack(value))[0] == value)
    except OverflowError:
        return False


def _text(data: bytes, i: int) -> tuple[str, int]:
    """A text string (shortest head, at most 255 bytes) at i, and where it ends."""
    head = data[i]
    if 0x60 <= head <= 0x77:
        start, end = i + 1, i + 1 + head - 0x60
    elif head == 0x78 and data[i + 1] >= 24:
        start, end = i + 2, i + 2 + data[i + 1]
    else:
        raise ValueError("not a short text string")
    if end > len(data):
        raise ValueError("truncated")
    return data[start:end].decode("utf-8"), end


def _uint(data: bytes, i: int, major: int = 0) -> tuple[int, int]:
    """An unsigned integer in its shortest encoding at i, and where it ends (`major` 0x20:
    the argument of a negative integer, in the same encoding)."""
    head = data[i] - major
    if head < 24:
        return head, i + 1
    if 24 <= head <= 27:
        size = 1 << (head - 24)
        if i + 1 + size > len(data):
            raise ValueError("truncated")
        value = int.from_bytes(data[i + 1:i + 1 + size], "big")
        if value < (24 if size == 1 else 1 << (4 * size)):
            raise ValueError("not the shortest encoding")
        return value, i + 1 + size
    raise ValueError("not an unsigned integer")


def _fail(detail: str) -> WireError:
    return WireError(BAD_PAYLOAD, detail)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_reading_map(value: object) -> None:
    """Raise WireError(bad_payload) unless `value` is a valid version-1 reading map."""
    if not isinstance(value, dict):
        raise _fail("payload is not a map")
    missing = _KEYS - value.keys()
    if missing:
        raise _fail(f"missing keys: {', '.join(sorted(missing))}")
    extra = [k for k in value if k not in _KEYS]
    if extra:
        raise _fail(f"unknown keys: {', '.join(sorted(map(repr, extra)))}")
    if value["v"] != FORMAT_VERSION or not _is_int(value["v"]):
        raise _fail(f"format version {value['v']!r}, expected 1")
    dev = value["dev"]
    if not isinstance(dev, str) or not DEVICE_ID_RE.fullmatch(dev):
        raise _fail("dev must be 1-64 characters of [A-Za-z0-9._-]")
    seq = value["seq"]
    if not _is_int(seq) or not 1 <= seq <= MAX_SEQ:
        raise _fail("seq must be an integer >= 1")
    prev = value["prev"]
    if not isinstance(prev, bytes) or len(prev) != 32:
        raise _fail("prev must be 32 bytes")
    t = value["t"]
    if not _is_int(t) or not 0 <= t < 1 << 53:
        raise _fail("t must be ms since the Unix epoch")
    if value["ts"] not in TIME_SOURCES:
        raise _fail(f"ts must be one of {sorted(TIME_SOURCES)}")
    kind = value["k"]
    if not isinstance(kind, str) or not KIND_RE.fullmatch(kind):
        raise _fail("k must be a lower-case kind name")
    _check_values(value["d"])


def _check_values(d: object) -> None:
    if not isinstance(d, dict) or len(d) > MAX_VALUES:
        raise _fail(f"d must be a map of at most {MAX_VALUES} values")
    for key, item in d.items():
        if not isinstance(key, str) or not 0 < len(key) <= 32:
            raise _fail("d keys must be short strings")
        items = item if isinstance(item, list) else [item]
        if len(items) > 64:
            raise _fail(f"d[{key!r}] list too long")
        for x in items:
            if x is not None and not isinstance(x, (int, float, str, bool)):
                raise _fail(f"d[{key!r}] holds a {type(x).__name__}; only scalars are allowed")
            if isinstance(x, str) and len(x) > 256:
                raise _fail(f"d[{key!r}] string too long")
            if isinstance(x, float) and x != x:
                raise _fail(f"d[{key!r}] is NaN")
