"""Catching up from peers: block sync over the API, every block checked, then re-applied.

A consortium node that joins late, or was down while etcd compacted the history it had not
applied, fetches blocks from its peers (`GET /v1/consortium/blocks`, ledger_node.consortium_api)
in pages:

    {"tip": height, "applied_revision": etcd revision, "blocks": [
      {"height", "revision", "header": base64, "signatures": [{"node", "sig": base64}],
       "entries": [base64, ...]}]}

(`tip` and `applied_revision` are read in the same transaction as the blocks.) Nothing a peer
sends is trusted. Each block must:

  1. carry a quorum certificate of the node set: more than two thirds of the node set's
     signatures over its header (ledger_node.quorum). Block 0's node set is the one its
     genesis entry names, which must be exactly the node set this node was configured with;
  2. reproduce its header when re-applied: its entries become a batch again (the operator and
     genesis entries, the audit entries, the readings as messages on their device's topic; the
     contract events are derived again) and `Chain.apply(batch, expect=hash)` re-validates
     every entry and must compute exactly the certified header — or nothing is written.

The node stores the certificate's signatures with its own, and the peer's etcd revision for
the block; once at the peer's tip it takes the peer's applied revision and follows etcd from
the next one.

`compare_blocks` is the cross-node comparison (`trustfleet consortium compare`): the same
pages from every node, compared height by height, naming a node whose header or entries
differ from what most nodes hold.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ledger_node import entries as entry_types
from ledger_node.admin import decode_operator_entry_unchecked, is_operator_entry
from ledger_node.block import block_hash, decode_header
from ledger_node.chain import ApplyResult, Chain, Message, OrderedBatch
from ledger_node.consortium.cstore import ConsortiumStore, changes_node_set, node_set_history_of
from ledger_node.consortium.errors import QuorumError, SyncError
from ledger_node.consortium.files import Peer, read_node_set, read_peers
from ledger_node.errors import LedgerError
from ledger_node.heads import CheckFailed, b64_field, int_field, want
from ledger_node.quorum import NodeSet, NodeSetHistory, check_qc, node_set_from_genesis
from ledger_node.world import AUDIT, CONTRACT_EVENT
from trustfleet.batch import open_reading
from trustfleet.errors import WireError
from trustfleet.topics import up_topic

__all__ = ["Difference", "SyncBlock", "SyncError", "SyncPage", "batch_from_entries",
           "catch_up", "compare_blocks", "fetch_blocks", "fetch_page", "parse_page",
           "read_peers"]

PAGE_BLOCKS = 200
MAX_PAGE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class SyncBlock:
    height: int
    revision: int
    header: bytes
    signatures: tuple[tuple[str, bytes], ...]
    entries: tuple[bytes, ...]


@dataclass(frozen=True)
class SyncPage:
    tip: int
    applied_revision: int
    blocks: tuple[SyncBlock, ...]


def parse_page(doc: Any) -> SyncPage:
    """A page as a peer sent it, checked for shape (raises SyncError)."""
    try:
        top = want(doc, "page", ("tip", "applied_revision", "blocks"))
        tip = top["tip"]
        if isinstance(tip, bool) or not isinstance(tip, int) or tip < -1:
            raise CheckFailed("bad_field", "page.tip", "must be an integer >= -1")
        applied = int_field(top["applied_revision"], "page.applied_revision")
        if not isinstance(top["blocks"], list):
            raise CheckFailed("bad_field", "page.blocks", "must be an array")
        blocks = []
        for i, item in enumerate(top["blocks"]):
            where = f"page.blocks[{i}]"
            b = want(item, where, ("height", "revision", "header", "signatures", "entries"))
            sigs = b["signatures"]
            if not isinstance(sigs, list) or not isinstance(b["entries"], list):
                raise CheckFailed("bad_field", where, "signatures and entries are arrays")
            pairs = tuple((str(want(s, f"{where}.signatures[{j}]", ("node", "sig"))["node"]),
                           b64_field(s["sig"], f"{where}.signatures[{j}].sig", 64))
                          for j, s in enumerate(sigs))
            blocks.append(SyncBlock(
                int_field(b["height"], f"{where}.height"),
                int_field(b["revision"], f"{where}.revision"),
                b64_field(b["header"], f"{where}.header"), pairs,
                tuple(b64_field(e, f"{where}.entries[{j}]") for j, e in enumerate(b["entries"]))))
    except CheckFailed as exc:
        raise SyncError(f"a peer sent a malformed page: {exc}") from None
    return SyncPage(tip, applied, tuple(blocks))


def fetch_page(peer: Peer, from_height: int, limit: int = PAGE_BLOCKS,
               timeout: float = 60.0) -> SyncPage:
    headers = {"Authorization": f"Bearer {peer.token}"} if peer.token else {}
    try:
        with httpx.Client(timeout=timeout) as client:
            resp = client.get(f"{peer.url}/v1/consortium/blocks",
                              params={"from": from_height, "limit": limit}, headers=headers)
    except httpx.HTTPError as exc:
        raise SyncError(f"peer {peer.node} ({peer.url}): {exc}") from None
    if resp.status_code != 200:
        raise SyncError(f"peer {peer.node} ({peer.url}) answered {resp.status_code}: "
                        f"{resp.text[:200]}")
    if len(resp.content) > MAX_PAGE_BYTES:
        raise SyncError(f"peer {peer.node} sent a page larger than {MAX_PAGE_BYTES} bytes")
    try:
        doc = resp.json()
    except ValueError as exc:
        raise SyncError(f"peer {peer.node} sent no JSON: {exc}") from None
    return parse_page(doc)


def batch_from_entries(chain: Chain, header_time: int, proposer: str,
                       data: Sequence[bytes]) -> OrderedBatch:
    """The batch that makes these entries again (see the module doc); raises SyncError for an
    entry that cannot be placed."""
    admin: list[bytes] = []
    audit: list[bytes] = []
    messages: list[Message] = []
    fleets: dict[str, str] = {}
    for i, entry in enumerate(data):
        try:
            kind = entry_types.admin_kind(entry)
        except (ValueError, WireError) as exc:
            raise SyncError(f"entry {i} of the block does not decode: {exc}") from None
        if kind == CONTRACT_EVENT:
            continue  # derived again by the contracts
        if kind == AUDIT:
            audit.append(entry)
        elif kind == entry_types.KIND_READING:
            try:
                dev = open_reading(entry).reading.dev
            except WireError as exc:
                raise SyncError(f"entry {i}: reading does not decode: {exc}") from None
            state = chain.devices.get(dev)
            fleet = fleets.get(dev) or (state.fleet if state is not None else "unknown")
            messages.append(Message(up_topic(fleet, dev), entry, header_time))
        else:
            admin.append(entry)
            if is_operator_entry(entry):
                try:
                    body = decode_operator_entry_unchecked(entry)
                except WireError:
                    continue
                if isinstance(body.get("dev"), str) and isinstance(body.get("fleet"), str):
                    fleets[body["dev"]] = body["fleet"]
    return OrderedBatch(time=header_time, proposer=proposer, admin=tuple(admin),
                        messages=tuple(messages), audit=tuple(audit), heartbeat=True)


def _history(store: ConsortiumStore) -> NodeSetHistory:
    """This node's node set history (the genesis entry's set, changed by the
    `node_set_changed` entries of the blocks applied so far: ledger_node.quorum)."""
    try:
        return node_set_history_of(store.conn)
    except (QuorumError, ValueError, WireError) as exc:
        raise SyncError(f"this node's node set history does not check: {exc}") from None


def _genesis_node_set(block: SyncBlock, at: int, configured: list[tuple[str, bytes]]
                      ) -> NodeSet:
    """The node set block 0's QC is checked with: its own genesis entry's (block 0's ledger
    time `at`), which must name exactly the configured node certificates."""
    if not block.entries:
        raise SyncError("block 0 from the peer has no genesis entry")
    try:
        rec = entry_types.decode_admin(block.entries[0])
    except (ValueError, WireError) as exc:
        raise SyncError(f"the genesis entry does not decode: {exc}") from None
    try:
        ns = node_set_from_genesis(rec, at)
    except QuorumError as exc:
        raise SyncError(f"the genesis entry's node set does not check: {exc}") from None
    if sorted(ns.certs.items()) != configured:
        raise SyncError("the peer's genesis names another node set than this node's "
                        "node_set_file: not this consortium's chain")
    return ns


def apply_block(chain: Chain, store: ConsortiumStore, block: SyncBlock,
                configured: list[tuple[str, bytes]], history: NodeSetHistory | None = None
                ) -> ApplyResult:
    """Check one block from a peer and re-apply it (see the module doc). Its QC is checked
    with the node set in force at its height: from `history` (this node's, read from the
    store when None), or for block 0 its own genesis entry's."""
    try:
        header = decode_header(block.header)
    except LedgerError as exc:
        raise SyncError(f"block {block.height}: header does not decode: {exc}") from None
    if header.height != block.height or block.height != chain.height + 1:
        raise SyncError(f"expected block {chain.height + 1}, the peer sent {header.height}")
    if chain.height < 0:
        ns = _genesis_node_set(block, header.time, configured)
    else:
        ns = (history if history is not None else _history(store)).at(block.height)
    try:
        qc = check_qc(ns, block.header, block.signatures)
    except QuorumError as exc:
        raise SyncError(f"block {block.height} from the peer: {exc}") from None
    if header.prev != chain.tip_hash or len(block.entries) != header.count:
        raise SyncError(f"block {block.height} does not extend this node's chain")
    batch = batch_from_entries(chain, header.time, header.proposer, block.entries)
    store.pending_revision = block.revision
    result = chain.apply(batch, expect=block_hash(block.header))  # DivergenceError: nothing
    store.add_signatures(block.height, [s for s in qc.signatures if s[0] != chain.node_id])
    return result


def catch_up(chain: Chain, store: ConsortiumStore, peers: Sequence[Peer],
             node_set_file: Path | None, *, stop: threading.Event | None = None,
             page_blocks: int = PAGE_BLOCKS) -> str:
    """Fetch and apply blocks from the first peer that answers, up to its tip; then take its
    applied revision. Returns a one-line report; raises SyncError if no peer could be used."""
    if not peers:
        raise SyncError("no peers to catch up from")
    if node_set_file is None:
        raise SyncError("catching up needs node_set_file to check the peers' blocks")
    configured = read_node_set(node_set_file)
    problems: list[str] = []
    start = chain.height
    history: NodeSetHistory | None = None  # read again after genesis and after a change
    for peer in peers:
        try:
            while stop is None or not stop.is_set():
                page = fetch_page(peer, chain.height + 1, page_blocks)
                for block in page.blocks:
                    if history is None and chain.height >= 0:
                        history = _history(store)
                    if changes_node_set(apply_block(chain, store, block, configured, history)):
                        history = None
                if not page.blocks or chain.height >= page.tip:
                    if chain.height >= page.tip and page.applied_revision > \
                            store.applied_revision():
                        store.mark_applied(page.applied_revision)
                    return (f"{chain.height - start} block(s) from {peer.node}, now at height "
                            f"{chain.height}, revision {store.applied_revision()}")
        except SyncError as exc:
            problems.append(str(exc))
            continue
    raise SyncError("; ".join(problems) or "stopped")


@dataclass(frozen=True)
class Difference:
    """A node whose block at `height` is not the one most nodes hold."""

    node: str
    height: int
    what: str
    """"header" (another block), "entries" (the same header, other entry bytes: a store
    edited after the fact) or "missing"."""
    detail: str


def compare_blocks(blocks: dict[str, dict[int, SyncBlock]]) -> list[Difference]:
    """Cross-node comparison: at every height, the header and entries most nodes hold are the
    reference; every node that holds something else is named (pure)."""
    from collections import Counter

    from ledger_node.merkle import leaf_hash

    out: list[Difference] = []
    heights = sorted({h for held in blocks.values() for h in held})
    for h in heights:
        have = {n: held[h] for n, held in blocks.items() if h in held}
        headers = Counter(b.header for b in have.values())
        ref_header, votes = headers.most_common(1)[0]
        if votes * 2 <= len(have) and len(headers) > 1:
            ref_header = b""  # no majority: name every node that differs from any other
        for n, b in sorted(have.items()):
            if ref_header and b.header != ref_header:
                out.append(Difference(n, h, "header", f"block {h}: header "
                                      f"{block_hash(b.header).hex()[:16]}…, most nodes hold "
                                      f"{block_hash(ref_header).hex()[:16]}…"))
        same = {n: b for n, b in have.items() if b.header == ref_header}
        contents = Counter(tuple(leaf_hash(e) for e in b.entries) for b in same.values())
        if not contents:
            continue
        ref_entries = contents.most_common(1)[0][0]
        for n, b in sorted(same.items()):
            got = tuple(leaf_hash(e) for e in b.entries)
            if got != ref_entries:
                first = header_first(b.header)
                at = next((i for i, (x, y) in enumerate(zip(got, ref_entries, strict=False))
                           if x != y), min(len(got), len(ref_entries)))
                out.append(Difference(n, h, "entries", f"block {h}: entry {first + at} is not "
                                      f"the entry the other nodes hold under the same signed "
                                      f"header (its store was changed)"))
    return out


def header_first(header: bytes) -> int:
    try:
        return decode_header(header).first
    except LedgerError:
        return 0


def fetch_blocks(peer: Peer, from_height: int = 0, to_height: int | None = None,
                 page_blocks: int = PAGE_BLOCKS) -> dict[int, SyncBlock]:
    """Blocks from_height..to_height (default: the peer's tip) of one node."""
    out: dict[int, SyncBlock] = {}
    at = from_height
    while to_height is None or at <= to_height:
        page = fetch_page(peer, at, page_blocks)
        for b in page.blocks:
            if to_height is None or b.height <= to_height:
                out[b.height] = b
        if not page.blocks:
            break
        at = page.blocks[-1].height + 1
        if at > page.tip:
            break
    return out
