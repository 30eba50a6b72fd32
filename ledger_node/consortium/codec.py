"""What travels through etcd, as deterministic CBOR (pure functions, no I/O).

Keys, under `{prefix}/{chain}/` (prefix: the node's `etcd_prefix`):

    log             every proposed batch is a new revision of this one key; etcd's revision
                    is the order, and a watch from revision r hands out every one since r
    sigs/{node}     a node's signatures over the blocks it applied (a new revision per post)
    applied/{node}  how far a node has applied the log (for compaction)

A batch (what `Chain.apply` needs, everything a node derives from it):

    {"v": 1, "time": ms (ledger time, the proposer's stamp), "proposer": node id,
     "admin": [bstr], "audit": [bstr], "messages": [[topic, payload bstr]],
     "heartbeat": bool}

A `Message.received` is not carried (it is the node clock, used only for node-local
quarantine rows): the decoder stamps the batch time. Signatures:

    {"v": 1, "node": node id, "sigs": [[height, header bstr, signature bstr (64)]]}

Progress: {"v": 1, "node": node id, "revision": uint, "height": int}

Decoding never trusts the bytes: a value that is not exactly one of these, within the size
limits, raises BatchDecodeError with a reason (every node refuses the same bytes alike).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from ledger_node.chain import Message, OrderedBatch
from ledger_node.consortium.errors import BatchDecodeError
from trustfleet import cbor
from trustfleet.errors import WireError
from trustfleet.topics import check_name

CODEC_VERSION: Final = 1
MAX_VALUE_BYTES: Final = 64 * 1024 * 1024
"""No value of ours is larger (etcd's request limit is far below; this only bounds decoding)."""
MAX_TOPIC: Final = 256
MAX_ITEMS: Final = 1_000_000
MAX_SIGS: Final = 10_000
MAX_HEADER: Final = 4096
SIGNATURE_SIZE: Final = 64
MAX_TIME: Final = 1 << 53

_BATCH_KEYS: Final = {"v", "time", "proposer", "admin", "audit", "messages", "heartbeat"}
_SIGS_KEYS: Final = {"v", "node", "sigs"}
_PROGRESS_KEYS: Final = {"v", "node", "revision", "height"}

LOG_KEY: Final = "log"
SIGS_DIR: Final = "sigs/"
APPLIED_DIR: Final = "applied/"


@dataclass(frozen=True)
class Keys:
    """The etcd keys of one chain under one prefix."""

    prefix: str
    chain: str

    @property
    def root(self) -> bytes:
        return f"{self.prefix.rstrip('/')}/{self.chain}/".encode()

    @property
    def log(self) -> bytes:
        return self.root + LOG_KEY.encode()

    def sigs(self, node: str) -> bytes:
        return self.root + (SIGS_DIR + node).encode()

    def applied(self, node: str) -> bytes:
        return self.root + (APPLIED_DIR + node).encode()

    @property
    def applied_dir(self) -> bytes:
        return self.root + APPLIED_DIR.encode()

    def kind(self, key: bytes) -> tuple[str, str]:
        """("log" | "sigs" | "applied" | "other", node id or "")."""
        if not key.startswith(self.root):
            return "other", ""
        rest = key[len(self.root):].decode("utf-8", "replace")
        if rest == LOG_KEY:
            return "log", ""
        for kind, start in (("sigs", SIGS_DIR), ("applied", APPLIED_DIR)):
            if rest.startswith(start):
                return kind, rest[len(start):]
        return "other", ""


@dataclass(frozen=True)
class NodeSigs:
    """A node's post of signatures: (height, header bytes, signature) each."""

    node: str
    sigs: tuple[tuple[int, bytes, bytes], ...]


@dataclass(frozen=True)
class Progress:
    node: str
    revision: int
    height: int


def encode_batch(batch: OrderedBatch) -> bytes:
    return cbor.dumps({"v": CODEC_VERSION, "time": batch.time, "proposer": batch.proposer,
                       "admin": list(batch.admin), "audit": list(batch.audit),
                       "messages": [[m.topic, m.payload] for m in batch.messages],
                       "heartbeat": batch.heartbeat})


def batch_size_estimate(topic: str, payload: bytes) -> int:
    """An upper bound of what one message adds to an encoded batch."""
    return len(topic.encode()) + len(payload) + 16


def decode_batch(data: bytes) -> OrderedBatch:
    """The batch `data` encodes; raises BatchDecodeError for anything else."""
    doc = _load(data, _BATCH_KEYS, "batch")
    time, proposer = doc["time"], doc["proposer"]
    if type(time) is not int or not 0 <= time < MAX_TIME:
        raise BatchDecodeError("bad_batch", "time must be ms since the epoch")
    _name(proposer, "proposer")
    if type(doc["heartbeat"]) is not bool:
        raise BatchDecodeError("bad_batch", "heartbeat must be a boolean")
    admin = _bytes_list(doc["admin"], "admin")
    audit = _bytes_list(doc["audit"], "audit")
    raw = doc["messages"]
    if not isinstance(raw, list) or len(raw) > MAX_ITEMS:
        raise BatchDecodeError("bad_batch", "messages must be a list")
    messages: list[Message] = []
    for i, item in enumerate(raw):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], bytes)) or len(item[0]) > MAX_TOPIC:
            raise BatchDecodeError("bad_batch", f"messages[{i}] must be [topic, payload]")
        messages.append(Message(item[0], item[1], time))
    return OrderedBatch(time=time, proposer=proposer, admin=tuple(admin),
                        messages=tuple(messages), audit=tuple(audit),
                        heartbeat=doc["heartbeat"])


def encode_sigs(node: str, sigs: Sequence[tuple[int, bytes, bytes]]) -> bytes:
    return cbor.dumps({"v": CODEC_VERSION, "node": node,
                       "sigs": [[h, header, sig] for h, header, sig in sigs]})


def decode_sigs(data: bytes) -> NodeSigs:
    doc = _load(data, _SIGS_KEYS, "signatures")
    node = _name(doc["node"], "node")
    raw = doc["sigs"]
    if not isinstance(raw, list) or len(raw) > MAX_SIGS:
        raise BatchDecodeError("bad_sigs", f"sigs must be a list of at most {MAX_SIGS}")
    out: list[tuple[int, bytes, bytes]] = []
    for i, item in enumerate(raw):
        if not (isinstance(item, list) and len(item) == 3 and type(item[0]) is int
                and 0 <= item[0] < MAX_TIME and isinstance(item[1], bytes)
                and len(item[1]) <= MAX_HEADER and isinstance(item[2], bytes)
                and len(item[2]) == SIGNATURE_SIZE):
            raise BatchDecodeError("bad_sigs", f"sigs[{i}] must be [height, header, 64-byte "
                                   "signature]")
        out.append((item[0], item[1], item[2]))
    return NodeSigs(node, tuple(out))


def encode_progress(p: Progress) -> bytes:
    return cbor.dumps({"v": CODEC_VERSION, "node": p.node, "revision": p.revision,
                       "height": p.height})


def decode_progress(data: bytes) -> Progress:
    doc = _load(data, _PROGRESS_KEYS, "progress")
    node = _name(doc["node"], "node")
    rev, height = doc["revision"], doc["height"]
    if type(rev) is not int or type(height) is not int or rev < 0 or height < -1:
        raise BatchDecodeError("bad_progress", "revision and height must be integers")
    return Progress(node, rev, height)


def _load(data: bytes, keys: set[str], what: str) -> dict[str, Any]:
    try:
        doc = cbor.loads_strict(data, max_size=MAX_VALUE_BYTES)
    except WireError as exc:
        raise BatchDecodeError(exc.reason, f"{what}: {exc.detail}") from None
    if not isinstance(doc, dict) or set(doc) != keys:
        raise BatchDecodeError("bad_" + what.split()[0], f"{what} must be a map with exactly "
                               f"{sorted(keys)}")
    if doc["v"] != CODEC_VERSION or type(doc["v"]) is not int:
        raise BatchDecodeError("unsupported_version", f"{what} version {doc['v']!r}")
    if not cbor.is_deterministic(data, doc):
        raise BatchDecodeError("non_deterministic_cbor", f"{what} is not deterministic CBOR")
    return doc


def _name(value: Any, what: str) -> str:
    try:
        return check_name(value, what)
    except (ValueError, TypeError) as exc:
        raise BatchDecodeError("bad_name", str(exc)) from None


def _bytes_list(value: Any, what: str) -> list[bytes]:
    if not isinstance(value, list) or len(value) > MAX_ITEMS or not all(
            isinstance(v, bytes) for v in value):
        raise BatchDecodeError("bad_batch", f"{what} must be a list of byte strings")
    return value
