"""Signed tree heads as JSON documents, and the offline checks on them (docs/proof-bundle.md).

A *head object* is a JSON object with
    "header":     base64 of the block header bytes (deterministic CBOR, ledger_node.block)
    "signatures": [{"node": node id, "sig": base64 of the 64-byte ES256 r||s over the header}]
GET /v1/chain/head and GET /v1/blocks/{h} return head objects with convenience fields as
well (height, tree_root, ...). Verifiers ignore those and read everything from the header
bytes, which the signatures cover.

A *consistency document* (GET /v1/chain/consistency?from=N&to=M) is
    {"format": "trustfleet-consistency", "version": 1, "from": head, "to": head,
     "proof": [base64 hash, ...], "node_keys": [{"node": id, "spki": base64 DER}]}

Nothing here touches a store or the network: these checks run on a partner's machine.
Every failure raises CheckFailed with a stable ``reason`` code, where it happened and why.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from hsm import verify_es256
from ledger_node.block import BlockHeader, block_hash, decode_header
from ledger_node.errors import LedgerError, ProofError, RootMismatchError
from ledger_node.merkle import verify_consistency

__all__ = [
    "CONSISTENCY_FORMAT", "CheckFailed", "ConsistencyDoc", "Head", "b64", "b64_field",
    "check_consistency", "check_head_signatures", "consistency_json", "fingerprint", "head_json",
    "int_field", "load_json", "node_keys_json", "parse_consistency", "parse_head",
    "parse_node_keys", "read_head_file", "want",
]  # fmt: skip

CONSISTENCY_FORMAT: Final = "trustfleet-consistency"
CONSISTENCY_VERSION: Final = 1
MAX_DOCUMENT: Final = 512 * 1024 * 1024
SIGNATURE_SIZE: Final = 64
HASH_SIZE: Final = 32


class CheckFailed(LedgerError):
    """An offline check failed. ``reason`` is a stable code (docs/proof-bundle.md lists them),
    ``where`` names the item (``head``, ``entries[3] (index 17)``), ``detail`` explains."""

    def __init__(self, reason: str, where: str, detail: str) -> None:
        super().__init__(f"[{reason}] {where}: {detail}")
        self.reason = reason
        self.where = where
        self.detail = detail


# -- strict JSON and field access ---------------------------------------------------------------

def load_json(raw: bytes, what: str) -> Any:
    """Parse one JSON document: UTF-8, no duplicate keys, no NaN/Infinity, nothing after it."""
    if len(raw) > MAX_DOCUMENT:
        raise CheckFailed("bad_json", what, f"{len(raw)} bytes, more than {MAX_DOCUMENT}")
    try:
        text = raw.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise CheckFailed("bad_json", what, f"not UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CheckFailed("bad_json", what, f"not valid JSON: {exc}") from None
    except ValueError as exc:
        raise CheckFailed("bad_json", what, str(exc)) from None
    except RecursionError:
        raise CheckFailed("bad_json", what, "nested too deeply") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def want(obj: Any, where: str, required: Sequence[str], *, strict: bool = True,
         optional: Sequence[str] = ()) -> Mapping[str, Any]:
    """``obj`` as an object with the ``required`` keys (and, if strict, no others)."""
    if not isinstance(obj, dict):
        raise CheckFailed("bad_field", where, f"must be a JSON object, not {_kind(obj)}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise CheckFailed("bad_field", where, f"missing field(s): {', '.join(missing)}")
    if strict:
        extra = sorted(set(obj) - set(required) - set(optional))
        if extra:
            raise CheckFailed("bad_field", where, f"unknown field(s): {', '.join(extra)}")
    return obj


def b64_field(value: Any, where: str, size: int | None = None) -> bytes:
    """Decode canonical standard base64 (RFC 4648 §4, padded); optionally of exactly ``size``."""
    if not isinstance(value, str):
        raise CheckFailed("bad_field", where, f"must be a base64 string, not {_kind(value)}")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CheckFailed("bad_field", where, f"not valid base64: {exc}") from None
    if base64.b64encode(data).decode() != value:
        raise CheckFailed("bad_field", where, "not canonical base64")
    if size is not None and len(data) != size:
        raise CheckFailed("bad_field", where, f"must be {size} bytes, got {len(data)}")
    return data


def int_field(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise CheckFailed("bad_field", where, f"must be an integer in [0, 2**64), not {value!r}")
    return value


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def fingerprint(spki: bytes) -> str:
    """Short form of a key for messages: the first 16 hex digits of SHA-256(SPKI)."""
    return hashlib.sha256(spki).hexdigest()[:16]


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


# -- heads ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Head:
    """A decoded head object."""

    header: BlockHeader
    header_bytes: bytes
    signatures: tuple[tuple[str, bytes], ...]

    @property
    def hash(self) -> bytes:
        return block_hash(self.header_bytes)


def head_json(header_bytes: bytes, signatures: Sequence[tuple[str, bytes]], *,
              convenience: bool = True) -> dict[str, Any]:
    """A head object; with ``convenience``, also the header's values for human readers."""
    out: dict[str, Any] = {}
    if convenience:
        h = decode_header(header_bytes)
        out.update({"height": h.height, "hash": block_hash(header_bytes).hex(), "chain": h.chain,
                    "time": h.time, "tree_size": h.size, "tree_root": h.root.hex()})
    out["header"] = b64(header_bytes)
    out["signatures"] = [{"node": node, "sig": b64(sig)} for node, sig in signatures]
    return out


def parse_head(obj: Any, where: str, *, strict: bool) -> Head:
    """Decode a head object; ``strict`` refuses fields other than header and signatures."""
    fields = want(obj, where, ("header", "signatures"), strict=strict)
    header_bytes = b64_field(fields["header"], f"{where}.header")
    try:
        header = decode_header(header_bytes)
    except LedgerError as exc:
        raise CheckFailed("bad_header", f"{where}.header", str(exc)) from None
    sigs = fields["signatures"]
    if not isinstance(sigs, list):
        raise CheckFailed("bad_field", f"{where}.signatures", "must be an array")
    out: list[tuple[str, bytes]] = []
    for i, item in enumerate(sigs):
        at = f"{where}.signatures[{i}]"
        s = want(item, at, ("node", "sig"))
        if not isinstance(s["node"], str) or not s["node"]:
            raise CheckFailed("bad_field", f"{at}.node", "must be a non-empty string")
        if any(node == s["node"] for node, _ in out):
            raise CheckFailed("bad_field", at, f"second signature by node {s['node']!r}")
        out.append((s["node"], b64_field(s["sig"], f"{at}.sig", SIGNATURE_SIZE)))
    return Head(header, header_bytes, tuple(out))


def node_keys_json(keys: Mapping[str, bytes]) -> list[dict[str, str]]:
    return [{"node": node, "spki": b64(key)} for node, key in sorted(keys.items())]


def parse_node_keys(value: Any, where: str) -> dict[str, bytes]:
    if not isinstance(value, list):
        raise CheckFailed("bad_field", where, "must be an array")
    out: dict[str, bytes] = {}
    for i, item in enumerate(value):
        k = want(item, f"{where}[{i}]", ("node", "spki"))
        if not isinstance(k["node"], str) or k["node"] in out:
            raise CheckFailed("bad_field", f"{where}[{i}].node", "must be a new node id")
        out[k["node"]] = b64_field(k["spki"], f"{where}[{i}].spki")
    return out


def check_head_signatures(head: Head, keys: Mapping[str, bytes], pinned: bytes | None,
                          where: str) -> str:
    """Check the proposer's signature (required) and every other one. The proposer's key is
    ``pinned`` when given, else ``keys[proposer]``. Returns a line saying who signed."""
    proposer = head.header.proposer
    by_node = dict(head.signatures)
    if proposer not in by_node:
        raise CheckFailed("missing_signature", where, f"no signature by the block's proposer "
                          f"{proposer!r} (signed by: {', '.join(by_node) or 'nobody'})")
    for node, sig in head.signatures:
        if pinned is not None and node == proposer:
            key, source = pinned, "the pinned key"
        elif node in keys:
            key, source = keys[node], "the key in the document"
        else:
            raise CheckFailed("no_node_key", where, f"signature by node {node!r}, whose key "
                              f"is neither pinned nor in the document")
        if not verify_es256(key, head.header_bytes, sig):
            raise CheckFailed("bad_node_signature", where, f"signature of node {node!r} over "
                              f"block {head.header.height} does not verify with {source} "
                              f"(SHA-256 {fingerprint(key)}…)")
    return ", ".join(node for node, _ in head.signatures)


# -- consistency ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConsistencyDoc:
    old: Head
    new: Head
    proof: tuple[bytes, ...]
    node_keys: dict[str, bytes]


def consistency_json(old: tuple[bytes, Sequence[tuple[str, bytes]]],
                     new: tuple[bytes, Sequence[tuple[str, bytes]]], proof: Sequence[bytes],
                     node_keys: Mapping[str, bytes]) -> dict[str, Any]:
    """A consistency document from (header bytes, signatures) of both heads and the proof."""
    return {"format": CONSISTENCY_FORMAT, "version": CONSISTENCY_VERSION,
            "from": head_json(*old), "to": head_json(*new), "proof": [b64(h) for h in proof],
            "node_keys": node_keys_json(node_keys)}


def parse_consistency(obj: Any, where: str = "consistency document") -> ConsistencyDoc:
    doc = want(obj, where, ("format", "version", "from", "to", "proof", "node_keys"))
    if doc["format"] != CONSISTENCY_FORMAT:
        raise CheckFailed("not_a_consistency_document", where,
                          f"format is {doc['format']!r}, expected {CONSISTENCY_FORMAT!r}")
    if doc["version"] != CONSISTENCY_VERSION or isinstance(doc["version"], bool):
        raise CheckFailed("unsupported_version", where, f"version {doc['version']!r}; this "
                          f"verifier reads version {CONSISTENCY_VERSION}")
    proof = doc["proof"]
    if not isinstance(proof, list):
        raise CheckFailed("bad_field", f"{where}.proof", "must be an array")
    return ConsistencyDoc(
        old=parse_head(doc["from"], f"{where}.from", strict=False),
        new=parse_head(doc["to"], f"{where}.to", strict=False),
        proof=tuple(b64_field(h, f"{where}.proof[{i}]", HASH_SIZE) for i, h in enumerate(proof)),
        node_keys=parse_node_keys(doc["node_keys"], f"{where}.node_keys"))


def read_head_file(raw: bytes, what: str) -> Head:
    """A saved head: a head object, or a consistency document (its newer head is taken)."""
    obj = load_json(raw, what)
    if isinstance(obj, dict) and obj.get("format") == CONSISTENCY_FORMAT:
        return parse_consistency(obj, what).new
    return parse_head(obj, what, strict=False)


def _same_block(saved: Head, got: Head, what: str) -> None:
    if saved.header.chain != got.header.chain:
        raise CheckFailed("chain_mismatch", what, f"your head is of chain {saved.header.chain!r}"
                          f", the document's of {got.header.chain!r}")
    if saved.header.height != got.header.height:
        raise CheckFailed("wrong_head", what, f"your head is block {saved.header.height}, the "
                          f"document proves from/to block {got.header.height}")
    if saved.header_bytes != got.header_bytes:
        raise CheckFailed("fork", what, f"block {got.header.height} in the document (hash "
                          f"{got.hash.hex()[:16]}…) is not the block you hold (hash "
                          f"{saved.hash.hex()[:16]}…): the history was rewritten")


def check_consistency(doc: ConsistencyDoc, *, saved_old: Head | None = None,
                      saved_new: Head | None = None, pinned: bytes | None = None) -> str:
    """Check a consistency document, and that its heads are the ones the caller saved (when
    given). Returns a one-paragraph summary; raises CheckFailed naming the first failure."""
    old, new = doc.old, doc.new
    signed_old = check_head_signatures(old, doc.node_keys, pinned, "old head")
    signed_new = check_head_signatures(new, doc.node_keys, pinned, "new head")
    for saved, got, what in ((saved_old, old, "old head"), (saved_new, new, "new head")):
        if saved is not None:
            check_head_signatures(saved, doc.node_keys, pinned, f"your saved {what}")
            _same_block(saved, got, what)
    if old.header.chain != new.header.chain:
        raise CheckFailed("chain_mismatch", "heads", f"old head is of chain "
                          f"{old.header.chain!r}, new head of {new.header.chain!r}")
    h1, h2 = old.header, new.header
    if h1.height > h2.height:
        raise CheckFailed("wrong_head", "heads", f"old head is block {h1.height}, after the new "
                          f"head's block {h2.height}")
    if h1.height == h2.height and old.header_bytes != new.header_bytes:
        raise CheckFailed("fork", "heads", f"two different signed blocks at height {h1.height}")
    if h1.size > h2.size:
        raise CheckFailed("inconsistent", "heads", f"the tree shrank from {h1.size} entries "
                          f"(block {h1.height}) to {h2.size} (block {h2.height})")
    try:
        verify_consistency(h1.size, h2.size, doc.proof, h1.root, h2.root)
    except RootMismatchError as exc:
        raise CheckFailed("inconsistent", "proof", f"the tree of block {h2.height} (size "
                          f"{h2.size}) does not extend the tree of block {h1.height} (size "
                          f"{h1.size}): {exc}; the log was rewritten or forked") from None
    except ProofError as exc:
        raise CheckFailed("bad_proof", "proof", str(exc)) from None
    source = "the pinned key" if pinned is not None else "node keys carried in the document " \
        "(NOT pinned: pass --node-key to trust a key you obtained yourself)"
    return (f"chain {h2.chain!r}: block {h1.height} (tree size {h1.size}, root "
            f"{h1.root.hex()}) is a prefix of block {h2.height} (tree size {h2.size}, root "
            f"{h2.root.hex()}); the log only grew. Signed by {signed_old} / {signed_new}, "
            f"checked with {source}.")
