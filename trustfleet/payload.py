"""The reading payload inside every envelope (DESIGN.md §4), as deterministic CBOR.

    {"v": 1, "dev": str, "seq": uint >= 1, "prev": bstr(32), "t": uint ms, "ts": "gps"|"rtc"|"ntp",
     "k": str, "d": {str: scalar | [scalar]}}

Unknown extra keys are refused in version 1, so that two encodings of one reading cannot
differ in what a verifier sees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from trustfleet import cbor
from trustfleet.errors import BAD_PAYLOAD, NON_DETERMINISTIC, WireError

FORMAT_VERSION: Final = 1
GENESIS_PREV: Final = bytes(32)
TIME_SOURCES: Final = frozenset({"gps", "rtc", "ntp"})
DEVICE_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KIND_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_SEQ: Final = (1 << 63) - 1
MAX_VALUES: Final = 32
_KEYS: Final = frozenset({"v", "dev", "seq", "prev", "t", "ts", "k", "d"})

Scalar = int | float | str | bool | None


@dataclass(frozen=True)
class Reading:
    """One sensor reading as the device signed it."""

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
    value = cbor.loads_strict(data, max_size=16 * 1024)
    check_reading_map(value)
    if not cbor.is_deterministic(data, value):
        raise WireError(NON_DETERMINISTIC, "payload is not deterministic CBOR (RFC 8949 §4.2)")
    return Reading(v=value["v"], dev=value["dev"], seq=value["seq"], prev=value["prev"],
                   t=value["t"], ts=value["ts"], k=value["k"], d=value["d"])


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
    if not isinstance(dev, str) or not DEVICE_ID_RE.match(dev):
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
    if not isinstance(kind, str) or not KIND_RE.match(kind):
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
