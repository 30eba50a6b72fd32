"""Node sets and quorum certificates (pure: no store, no network, no clock).

A chain's **node set** is written in its genesis entry. A solo chain's is its genesis node
(`node`, `node_key`): quorum 1, so every block it signs is final, as before. A consortium
chain's genesis entry carries one more field, `nodes`, the consortium's node certificates:

    {"type": "genesis", "chain", "node", "node_key", "ca", "time",
     "nodes": [{"node": id, "cert": DER}, ...]}            (sorted by id, ids unique)

Each certificate must chain to the genesis entry's fleet CA with role `node` and CN = its
id, valid at the ledger time of block 0 (hsm.check_certificate); the node key is the
certificate's key. The genesis `node` (the node that proposed it) must be in the set with
that same key.

A block is **final** when more than two thirds of the node set signed its header bytes
(ES256, raw r||s): `quorum(n) = floor(2n/3) + 1` signatures (1 of 1, 3 of 3, 3 of 4, 5 of 7).
Those signatures are its **quorum certificate** (QC). A QC on block h also vouches for
every block before it (each header names the previous one's hash).

The node set **changes** by an operator entry (ledger_node.admin, checked at the ledger time
of the block that carries it, like every operator entry):

    {"v": 1, "type": "node_set_changed", "nodes": [{"node": id, "cert": DER}, ...], "t": ms}

with the same rules for `nodes` as the genesis entry's (1 to MAX_NODES, ids unique, each
certificate role `node` with CN = id; in any order, the set is kept sorted by id). It only
applies to a consortium chain (a genesis entry with `nodes`). The new set is **in force from
the block after** the one that carries the entry: block h, which carries the change, is still
certified by the old set (its signers decided it); blocks h+1, ... by the new one.
`NodeSetHistory` answers "which set certifies block h" from the genesis entry and the
changes in log order (`node_set_history`); every checker uses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from hsm import check_certificate, verify_es256
from hsm.errors import CaCertificateInvalid, CertificateRejected
from ledger_node.consortium.errors import QuorumError
from trustfleet import cbor
from trustfleet.topics import check_name

__all__ = ["GENESIS_NODES", "NODE_SET_CHANGED", "NodeSet", "NodeSetHistory",
           "QuorumCertificate", "block_signatures_problem", "check_qc", "consortium_genesis",
           "genesis_keys", "node_set_change", "node_set_from_genesis", "node_set_from_listing",
           "node_set_history", "quorum_size", "tally"]

GENESIS_NODES: Final = "nodes"
NODE_SET_CHANGED: Final = "node_set_changed"
MAX_NODES: Final = 100


def quorum_size(n: int) -> int:
    """Signatures needed for a quorum of `n` nodes: more than two thirds."""
    return 2 * n // 3 + 1


@dataclass(frozen=True)
class NodeSet:
    """The nodes whose signatures count, with their keys (SPKI DER)."""

    keys: Mapping[str, bytes]
    certs: Mapping[str, bytes] = field(default_factory=dict)
    """The node certificates (from the fleet CA) that vouch for the keys (none: a solo
    chain's genesis node)."""

    @property
    def size(self) -> int:
        return len(self.keys)

    @property
    def quorum(self) -> int:
        return quorum_size(len(self.keys))

    def verify(self, node: str, header_bytes: bytes, sig: bytes) -> bool:
        """True if `sig` is `node`'s valid signature over the header bytes."""
        key = self.keys.get(node)
        return key is not None and len(sig) == 64 and verify_es256(key, header_bytes, sig)


@dataclass(frozen=True)
class QuorumCertificate:
    """Signatures over one header that verify with the node set's keys."""

    header: bytes
    signatures: tuple[tuple[str, bytes], ...]
    quorum: int

    @property
    def signers(self) -> tuple[str, ...]:
        return tuple(node for node, _ in self.signatures)


def consortium_genesis(chain: str, node_id: str, node_key: bytes, time_ms: int,
                       ca_cert: bytes, nodes: Iterable[tuple[str, bytes]]) -> bytes:
    """A genesis entry naming the consortium's node certificates (see the module doc)."""
    listed = sorted(nodes)
    return cbor.dumps({"type": "genesis", "chain": chain, "node": node_id,
                       "node_key": node_key, "ca": ca_cert, "time": time_ms,
                       GENESIS_NODES: [{"node": n, "cert": c} for n, c in listed]})


def node_set_from_genesis(rec: Mapping[str, Any], at_ms: int) -> NodeSet:
    """The node set a decoded genesis entry names, checked at ledger time `at_ms` (block 0's).

    Raises QuorumError (reason `bad_node_set` or `node_cert_<reason>`)."""
    node, node_key = rec.get("node"), rec.get("node_key")
    if not isinstance(node, str) or not isinstance(node_key, bytes):
        raise QuorumError("bad_node_set", "the genesis entry has no node and node_key")
    listed = rec.get(GENESIS_NODES)
    if listed is None:
        return NodeSet({node: node_key})
    ca = rec.get("ca")
    if not isinstance(ca, bytes):
        raise QuorumError("bad_node_set", "a node set needs the genesis entry's fleet CA")
    ns = node_set_from_listing(listed, ca, at_ms, sorted_ids=True)
    keys = ns.keys
    if keys.get(node) != node_key:
        raise QuorumError("bad_node_set", f"the genesis node {node!r} is not in the node set "
                          "with the key the genesis entry gives it")
    return ns


def node_set_from_listing(listed: object, ca: bytes, at_ms: int, *,
                          sorted_ids: bool = False) -> NodeSet:
    """The node set a `nodes` listing ([{node, cert}]) names, every certificate checked
    against the fleet CA `ca` at ledger time `at_ms`; `sorted_ids`: the listing must be
    sorted by id (the genesis entry's). Raises QuorumError (`bad_node_set`, `node_<reason>`)."""
    if not isinstance(listed, list) or not 1 <= len(listed) <= MAX_NODES:
        raise QuorumError("bad_node_set", f"nodes must be a list of 1 to {MAX_NODES}")
    keys: dict[str, bytes] = {}
    certs: dict[str, bytes] = {}
    for i, item in enumerate(listed):
        if not isinstance(item, dict) or set(item) != {"node", "cert"} \
                or not isinstance(item["cert"], bytes):
            raise QuorumError("bad_node_set", f"nodes[{i}] must be {{node, cert}}")
        try:
            nid = check_name(item["node"], "node")
        except (ValueError, TypeError) as exc:
            raise QuorumError("bad_node_set", f"nodes[{i}]: {exc}") from None
        if nid in keys:
            raise QuorumError("bad_node_set", f"node {nid!r} is listed twice")
        try:
            info = check_certificate(item["cert"], ca, expected_id=nid, expected_role="node",
                                     at_ms=at_ms)
        except CaCertificateInvalid as exc:
            raise QuorumError("bad_node_set", f"the fleet CA is unusable: {exc}") from None
        except CertificateRejected as exc:
            raise QuorumError(f"node_{exc.reason}", f"node certificate of {nid!r}: "
                              f"{exc}") from None
        keys[nid] = info.spki_der
        certs[nid] = item["cert"]
    if sorted_ids and sorted(keys) != list(keys):
        raise QuorumError("bad_node_set", "nodes must be sorted by id")
    ordered = sorted(keys)
    return NodeSet({n: keys[n] for n in ordered}, {n: certs[n] for n in ordered})


def node_set_change(body: Mapping[str, Any], ca: bytes, at_ms: int) -> NodeSet:
    """The node set a `node_set_changed` payload names, checked at `at_ms` (the ledger time
    of the block that carries it). Raises QuorumError."""
    if body.get("type") != NODE_SET_CHANGED:
        raise QuorumError("bad_node_set", f"not a {NODE_SET_CHANGED} entry")
    return node_set_from_listing(body.get(GENESIS_NODES), ca, at_ms)


@dataclass(frozen=True)
class NodeSetHistory:
    """The node set in force at each height: `spans` is ((first height, set), ...), ascending
    by first height, the first from height 0 (the genesis entry's set)."""

    spans: tuple[tuple[int, NodeSet], ...]

    def at(self, height: int) -> NodeSet:
        """The set that certifies block `height`."""
        found = self.spans[0][1]
        for first, ns in self.spans:
            if first > height:
                break
            found = ns
        return found

    @property
    def latest(self) -> NodeSet:
        """The set in force for the next block to be cut."""
        return self.spans[-1][1]

    @property
    def changes(self) -> tuple[int, ...]:
        """The heights of the blocks that carry a change (each in force one block later)."""
        return tuple(first - 1 for first, _ in self.spans[1:])

    def changed(self, carried_at: int, ns: NodeSet) -> NodeSetHistory:
        """This history with `ns` in force from the block after `carried_at`."""
        first = carried_at + 1
        if first <= self.spans[-1][0]:
            raise QuorumError("bad_node_set", f"a change at block {carried_at} is not after "
                              f"the last one (in force from {self.spans[-1][0]})")
        return NodeSetHistory((*self.spans, (first, ns)))


def node_set_history(genesis: Mapping[str, Any], genesis_time: int,
                     changes: Iterable[tuple[Mapping[str, Any], int, int]]) -> NodeSetHistory:
    """The history from a decoded genesis entry (block 0's ledger time `genesis_time`) and
    the `node_set_changed` payloads as (body, height of its block, that block's ledger time),
    in log order; several changes in one block: the last one wins. Raises QuorumError (a
    change on a chain without a node set is `bad_node_set`)."""
    history = NodeSetHistory(((0, node_set_from_genesis(genesis, genesis_time)),))
    ca = genesis.get("ca")
    for body, height, time in changes:
        if genesis.get(GENESIS_NODES) is None or not isinstance(ca, bytes):
            raise QuorumError("bad_node_set", "a node set can only change on a consortium "
                              "chain (a genesis entry with nodes)")
        ns = node_set_change(body, ca, time)
        if history.spans[-1][0] == height + 1:
            history = NodeSetHistory((*history.spans[:-1], (height + 1, ns)))
        else:
            history = history.changed(height, ns)
    return history


@dataclass
class Tally:
    """The signatures over one header, sorted out against a node set."""

    valid: list[tuple[str, bytes]] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def tally(node_set: NodeSet, header_bytes: bytes, sigs: Sequence[tuple[str, bytes]]) -> Tally:
    out = Tally()
    seen: set[str] = set()
    for node, sig in sigs:
        if node in seen:
            continue
        seen.add(node)
        if node not in node_set.keys:
            out.unknown.append(node)
        elif node_set.verify(node, header_bytes, sig):
            out.valid.append((node, sig))
        else:
            out.invalid.append(node)
    return out


def check_qc(node_set: NodeSet, header_bytes: bytes, sigs: Sequence[tuple[str, bytes]], *,
             strict: bool = False) -> QuorumCertificate:
    """The quorum certificate in `sigs`, or QuorumError: `no_quorum` (too few valid
    signatures of the node set) and, with `strict`, `bad_node_signature` / `no_node_key`
    for any signature that does not verify or is by a node outside the set."""
    t = tally(node_set, header_bytes, sigs)
    if strict and t.invalid:
        raise QuorumError("bad_node_signature", f"signature(s) of {', '.join(t.invalid)} do "
                          "not verify over this header")
    if strict and t.unknown:
        raise QuorumError("no_node_key", f"signature(s) by {', '.join(t.unknown)}, not in "
                          "the node set")
    if len(t.valid) < node_set.quorum:
        raise QuorumError("no_quorum", f"{len(t.valid)} valid signature(s) of the node set "
                          f"({', '.join(n for n, _ in t.valid) or 'none'}); a quorum is "
                          f"{node_set.quorum} of {node_set.size}")
    return QuorumCertificate(header_bytes, tuple(sorted(t.valid)), node_set.quorum)


def genesis_keys(rec: Mapping[str, Any], at_ms: int, pinned: bytes | None = None
                 ) -> dict[str, bytes]:
    """node id -> key of every node whose signatures count on this chain, for the store's
    checks (tipcheck, `trustfleet verify`): the genesis node (its key, or `pinned` instead),
    and on a consortium chain its whole node set (certificates checked at `at_ms`, block 0's
    ledger time). Raises QuorumError."""
    ns = node_set_from_genesis(rec, at_ms)
    keys = dict(ns.keys)
    if pinned is not None:
        keys[str(rec["node"])] = pinned
    return keys


def block_signatures_problem(header_bytes: bytes, proposer: str,
                             sigs: Sequence[tuple[str, bytes]], keys: Mapping[str, bytes],
                             pinned: bytes | None = None, *,
                             consortium: bool | None = None) -> str | None:
    """What is wrong with a stored block's signatures (None: nothing); `keys` are those of
    the node set in force at the block (NodeSetHistory.at).

    A solo chain (one key): the proposer's signature must verify, with `pinned` if given.
    A consortium chain: every stored signature must be by a node of the set and verify, and
    there must be at least one (a node signs every block it applies; the others' signatures
    arrive as they sign). `consortium`: which of the two (None: a consortium if more than one
    key; a consortium whose set changed to one node is still one)."""
    if not (len(keys) > 1 if consortium is None else consortium):
        key = pinned or keys.get(proposer)
        if key is None:
            return f"no key known for proposer {proposer!r}"
        sig = dict(sigs).get(proposer)
        if sig is None or not verify_es256(key, header_bytes, sig):
            return f"signature of node {proposer!r} does not verify"
        return None
    if not sigs:
        return "no signature of any node of the node set"
    for node, sig in sigs:
        key = keys.get(node)
        if key is None:
            return f"signature by node {node!r}, which is not in the chain's node set"
        if not verify_es256(key, header_bytes, sig):
            return f"signature of node {node!r} does not verify"
    return None
