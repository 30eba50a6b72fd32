"""A small etcd v3 client over etcd's JSON gateway (HTTP/1.1), for the consortium's ordering.

Why the gateway and not gRPC: the node is built of threads (paho's, the apply thread,
uvicorn's); the maintained Python gRPC client for etcd (aetcd) is asyncio-only and would
bring grpcio and protobuf for the five calls used here. etcd 3.4 serves the same v3 API as
JSON under /v3/ on its client URL (keys and values base64, int64s as strings), and httpx
speaks it, streaming watches included.

    client = EtcdClient(["http://127.0.0.1:2379", ...])
    rev = client.put(b"/tf/main/log", batch_bytes)          # the revision that orders it
    for w in client.watch(b"/tf/main/", start_revision=rev):  # every change, in order
        ...

Endpoints are tried in turn: a request that cannot reach one member goes to the next (etcd
forwards writes to its leader itself). A put whose answer was lost may have been applied:
the caller must tolerate a value twice in the log (the ledger does: a repeated batch only
repeats readings, which are duplicates the second time). Every error is an EtcdError
(ledger_node.consortium.errors): EtcdCompacted for a revision compacted away, EtcdNoSpace
when the storage quota is exhausted. The client is thread-safe; each watch has its own
connection.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx

from ledger_node.consortium.errors import EtcdCompacted, EtcdError, EtcdNoSpace

log = logging.getLogger("trustfleet.etcd")
logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per etcd request

GRPC_OUT_OF_RANGE: Final = 11
GRPC_RESOURCE_EXHAUSTED: Final = 8
MAX_LINE: Final = 256 * 1024 * 1024
"""Longest watch message accepted (etcd would never send one near this)."""


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    mod_revision: int


@dataclass(frozen=True)
class WatchEvent:
    key: bytes
    value: bytes
    revision: int
    deleted: bool = False


@dataclass(frozen=True)
class WatchBatch:
    """One watch response: its events (in revision order) and etcd's revision at sending."""

    header_revision: int
    events: tuple[WatchEvent, ...]


def prefix_end(prefix: bytes) -> bytes:
    """The range end that makes [prefix, end) every key starting with `prefix`."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\x00"  # etcd: the whole key space
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any, what: str) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, str):
        raise EtcdError(f"etcd answered a non-string {what}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EtcdError(f"etcd answered bad base64 in {what}: {exc}") from None


def _int(value: Any, what: str) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        raise EtcdError(f"etcd answered a non-integer {what}: {value!r}") from None


def _check(doc: Any, what: str) -> dict[str, Any]:
    """The answer as a dict, or the EtcdError it carries."""
    if not isinstance(doc, dict):
        raise EtcdError(f"{what}: etcd answered {type(doc).__name__}, not an object")
    if "error" in doc or ("code" in doc and "message" in doc):
        err = doc.get("error")
        message = str(doc.get("message") or (err.get("message") if isinstance(err, dict)
                                              else err))
        code = doc.get("code")
        code = code if isinstance(code, int) else None
        if "space exceeded" in message or code == GRPC_RESOURCE_EXHAUSTED:
            raise EtcdNoSpace(f"{what}: {message}", code)
        raise EtcdError(f"{what}: {message}", code)
    return doc


class EtcdClient:
    """Requests to the first endpoint that answers; see the module doc."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 5.0,
                 watch_idle_s: float = 10.0) -> None:
        if not endpoints:
            raise EtcdError("no etcd endpoints given")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self.watch_idle_s = watch_idle_s
        self._current = 0
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=httpx.Timeout(timeout),
                                  limits=httpx.Limits(max_connections=16))
        self._streams: set[httpx.Response] = set()
        self._closed = False

    # -- plumbing ------------------------------------------------------------------------------

    def _endpoint_order(self) -> list[str]:
        with self._lock:
            start = self._current
        n = len(self.endpoints)
        return [self.endpoints[(start + i) % n] for i in range(n)]

    def _failed(self, endpoint: str) -> None:
        with self._lock:
            if self.endpoints[self._current] == endpoint:
                self._current = (self._current + 1) % len(self.endpoints)

    def _call(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        last: Exception | None = None
        for endpoint in self._endpoint_order():
            try:
                resp = self._http.post(endpoint + path, json=body)
            except httpx.HTTPError as exc:
                last = exc
                self._failed(endpoint)
                continue
            try:
                doc = resp.json()
            except ValueError:
                last = EtcdError(f"{what}: {endpoint} answered HTTP {resp.status_code} "
                                 "without JSON")
                self._failed(endpoint)
                continue
            try:
                return _check(doc, what)
            except EtcdError as exc:
                # No leader (an election is going on) or a member cut off: try another.
                if exc.code in (14, 4) or "leader" in str(exc) or "timed out" in str(exc):
                    last = exc
                    self._failed(endpoint)
                    continue
                raise
        raise EtcdError(f"{what}: no etcd endpoint answered ({last})")

    # -- KV ------------------------------------------------------------------------------------

    def put(self, key: bytes, value: bytes) -> int:
        """Write `value` at `key`; returns the revision etcd gave the write."""
        doc = self._call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)}, "put")
        return _int(doc.get("header", {}).get("revision"), "revision")

    def get_range(self, key: bytes, range_end: bytes | None = None
                  ) -> tuple[int, list[KeyValue]]:
        """(etcd's revision, the key-values in [key, range_end)) — or just `key`."""
        body: dict[str, Any] = {"key": _b64(key)}
        if range_end is not None:
            body["range_end"] = _b64(range_end)
        doc = self._call("/v3/kv/range", body, "range")
        kvs = doc.get("kvs") or []
        if not isinstance(kvs, list):
            raise EtcdError("range: kvs is not a list")
        return (_int(doc.get("header", {}).get("revision"), "revision"),
                [KeyValue(_unb64(kv.get("key"), "key"), _unb64(kv.get("value"), "value"),
                          _int(kv.get("mod_revision"), "mod_revision")) for kv in kvs])

    def delete_range(self, key: bytes, range_end: bytes) -> int:
        doc = self._call("/v3/kv/deleterange", {"key": _b64(key), "range_end": _b64(range_end)},
                         "delete")
        return _int(doc.get("deleted"), "deleted")

    def compact(self, revision: int) -> bool:
        """Compact history before `revision`; False if it was compacted that far already."""
        try:
            self._call("/v3/kv/compaction", {"revision": str(revision)}, "compact")
        except EtcdError as exc:
            if exc.code == GRPC_OUT_OF_RANGE or "compacted" in str(exc):
                return False
            raise
        return True

    def compact_revision(self) -> int:
        """How far history is compacted (0: not at all), asked with a watch from revision 1."""
        try:
            for _ in self.watch(b"\x00", 1, idle_s=0.5, first_only=True):
                return 0
        except EtcdCompacted as exc:
            return exc.compact_revision
        return 0

    # -- watch ---------------------------------------------------------------------------------

    def watch(self, prefix: bytes, start_revision: int, *, idle_s: float | None = None,
              first_only: bool = False) -> Iterator[WatchBatch]:
        """Every change under `prefix` from `start_revision` on, in revision order.

        Ends (returns) when nothing arrived for `idle_s` or the connection is closed by
        `close()`; the caller watches again from its last revision + 1. Raises EtcdCompacted
        if `start_revision` was compacted away, EtcdError if no endpoint answers."""
        body = {"create_request": {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                                   "start_revision": str(start_revision)}}
        idle = self.watch_idle_s if idle_s is None else idle_s
        timeout = httpx.Timeout(self.timeout, read=idle)
        last: Exception | None = None
        for endpoint in self._endpoint_order():
            if self._closed:
                return
            try:
                with self._http.stream("POST", endpoint + "/v3/watch", json=body,
                                       timeout=timeout) as resp:
                    self._streams.add(resp)
                    try:
                        yield from self._read_watch(resp, first_only)
                    finally:
                        self._streams.discard(resp)
                return
            except httpx.ReadTimeout:
                return  # idle: the caller comes back
            except (httpx.HTTPError, RuntimeError) as exc:  # RuntimeError: closed under us
                if self._closed:
                    return
                last = exc
                self._failed(endpoint)
        raise EtcdError(f"watch: no etcd endpoint answered ({last})")

    def _read_watch(self, resp: httpx.Response, first_only: bool) -> Iterator[WatchBatch]:
        for line in resp.iter_lines():
            if not line.strip():
                continue
            if len(line) > MAX_LINE:
                raise EtcdError("watch: a message larger than the client accepts")
            try:
                doc = json.loads(line)
            except ValueError as exc:
                raise EtcdError(f"watch: not JSON: {exc}") from None
            result = _check(doc, "watch").get("result")
            if not isinstance(result, dict):
                raise EtcdError("watch: a message without a result")
            _check(result, "watch")
            if result.get("canceled"):
                compacted = _int(result.get("compact_revision"), "compact_revision")
                if compacted:
                    raise EtcdCompacted(compacted)
                raise EtcdError(f"watch canceled: {result.get('cancel_reason', 'no reason')}")
            header = _int(result.get("header", {}).get("revision"), "revision")
            raw_events = result.get("events") or []
            if not isinstance(raw_events, list):
                raise EtcdError("watch: events is not a list")
            events = tuple(
                WatchEvent(_unb64(e.get("kv", {}).get("key"), "key"),
                           _unb64(e.get("kv", {}).get("value"), "value"),
                           _int(e.get("kv", {}).get("mod_revision"), "mod_revision"),
                           deleted=e.get("type") == "DELETE") for e in raw_events)
            if first_only and result.get("created"):
                continue  # a compacted start revision is refused right after this
            if events or first_only:
                yield WatchBatch(header, events)
                if first_only:
                    return

    def close(self) -> None:
        """Close every connection; running watches end."""
        self._closed = True
        for resp in list(self._streams):
            try:
                resp.close()
            except Exception:  # closing from another thread: best effort
                log.debug("closing a watch stream failed", exc_info=True)
        self._http.close()
