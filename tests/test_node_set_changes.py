"""Changing a consortium's node set with an operator-signed `node_set_changed` entry.

The rules (ledger_node.quorum, ledger_node.admin): the entry is checked at the ledger time of
the block that carries it (certificates role `node`, CN = id, from the genesis entry's fleet
CA; 1 to MAX_NODES nodes, ids unique), refused entries are quarantined, and the new set is in
force from the block AFTER the one that carries it. Every checker asks for the set in force
at a height: `trustfleet verify`, the tip check, finality (final_height), block sync and the
offline bundle verifier.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import pytest

from hsm import SoftwareSigner
from ledger_node import entries
from ledger_node.admin import (
    NODE_SET_CHANGED,
    AdminRejected,
    apply_operator_entry,
    check_node_set_change,
    decode_operator_entry,
)
from ledger_node.bundle import bundle_for_entry, default_head
from ledger_node.bundle_verify import verify_bundle
from ledger_node.consortium.cli import node_set_body
from ledger_node.consortium.cstore import final_height, node_set_history_of, node_set_of
from ledger_node.consortium.errors import QuorumError
from ledger_node.consortium.files import write_node_set
from ledger_node.errors import ConfigError, TamperError
from ledger_node.quorum import (
    MAX_NODES,
    NodeSet,
    NodeSetHistory,
    block_signatures_problem,
    node_set_history,
)
from ledger_node.tipcheck import check_tip
from ledger_node.verify import verify_store
from tests.chainkit import ChainUnderTest, Device
from tests.pki import T0, SoftPKI
from tests.test_consortium_quorum import NODES, ConsortiumChain
from trustfleet import cli


def _change(c: ConsortiumChain, certs: dict[str, bytes], **extra: object) -> bytes:
    return c.pki.signed({"type": NODE_SET_CHANGED,
                         "nodes": [{"node": n, "cert": cert} for n, cert in certs.items()],
                         **extra})


def _add_node_5(c: ConsortiumChain) -> int:
    """Put node-5 into the set (a block of its own); returns the height that carries it."""
    key5 = SoftwareSigner.generate()
    certs = {**c.certs, "node-5": c.pki.issue(key5, "node-5", "node")}
    result = c.apply(admin=[_change(c, certs)])
    assert [(a.kind, a.status) for a in result.admin] == [(NODE_SET_CHANGED, "accepted")]
    assert result.header is not None
    c.keys = {**c.keys, "node-5": key5}
    c.certs = certs
    return result.header.height


def _drop(c: ConsortiumChain, *nodes: str) -> int:
    certs = {n: cert for n, cert in c.certs.items() if n not in nodes}
    result = c.apply(admin=[_change(c, certs)])
    assert [(a.kind, a.status) for a in result.admin] == [(NODE_SET_CHANGED, "accepted")]
    assert result.header is not None
    c.keys = {n: k for n, k in c.keys.items() if n not in nodes}
    c.certs = certs
    return result.header.height


@pytest.fixture
def cc(tmp_path: Path) -> ConsortiumChain:
    trucks = [Device("truck-1")]
    c = ConsortiumChain(tmp_path / "ledger.sqlite", trucks)
    c.start()
    c.apply([d.message(d.reading()) for d in trucks])
    return c


def _ns(*names: str) -> NodeSet:
    return NodeSet({n: n.encode() for n in names})


# -- the pure rules ---------------------------------------------------------------------------

def test_a_history_gives_the_set_in_force_from_the_block_after_the_change() -> None:
    history = NodeSetHistory(((0, _ns("a", "b")),)).changed(4, _ns("a", "b", "c"))
    history = history.changed(9, _ns("c"))
    assert [sorted(history.at(h).keys) for h in (0, 4, 5, 9, 10, 99)] == [
        ["a", "b"], ["a", "b"], ["a", "b", "c"], ["a", "b", "c"], ["c"], ["c"]]
    assert history.changes == (4, 9) and sorted(history.latest.keys) == ["c"]
    with pytest.raises(QuorumError, match="bad_node_set"):
        history.changed(8, _ns("a"))  # not after the last change


def test_node_set_history_applies_changes_in_log_order(cc: ConsortiumChain) -> None:
    genesis = entries.decode_admin(cc.genesis_entry())
    three = {"nodes": [{"node": n, "cert": cc.certs[n]} for n in NODES[:3]],
             "type": NODE_SET_CHANGED}
    two = {**three, "nodes": three["nodes"][:2]}
    history = node_set_history(genesis, cc.time, [(three, 3, cc.time), (two, 3, cc.time),
                                                  (three, 7, cc.time)])
    assert [history.at(h).size for h in (3, 4, 7, 8)] == [4, 2, 2, 3]  # last in a block wins
    solo = entries.decode_admin(entries.genesis("main", "node-1", b"k", 0, cc.pki.ca_cert))
    with pytest.raises(QuorumError, match="consortium chain"):
        node_set_history(solo, 0, [(three, 1, cc.time)])


def test_a_node_set_of_one_node_is_a_consortium_after_a_change(cc: ConsortiumChain) -> None:
    header = cc.store.header(1)
    assert header is not None
    keys = {"node-3": cc.keys["node-3"].public_key_der()}
    sigs = [("node-3", cc.keys["node-3"].sign(header))]
    assert block_signatures_problem(header, "node-2", sigs, keys) is not None  # solo rule
    assert block_signatures_problem(header, "node-2", sigs, keys, consortium=True) is None


# -- the entry on the chain -------------------------------------------------------------------

def test_a_change_is_in_force_from_the_next_block(cc: ConsortiumChain) -> None:
    h = _add_node_5(cc)
    history = node_set_history_of(cc.store.conn)
    assert history.changes == (h,)
    assert sorted(history.at(h).keys) == list(NODES)  # the carrying block: the old set
    assert sorted(history.at(h + 1).keys) == [*NODES, "node-5"]
    assert history.at(h + 1).quorum == 4
    assert sorted(node_set_of(cc.store.conn).keys) == [*NODES, "node-5"]  # type: ignore[union-attr]
    assert sorted(node_set_of(cc.store.conn, h).keys) == list(NODES)  # type: ignore[union-attr]
    d = cc.devices[0]
    cc.apply([d.message(d.reading())])
    assert final_height(cc.store.conn, history) == h + 1
    report = verify_store(cc.store.path)
    assert report.ok, report.problems
    check_tip(cc.store.conn, "node-1", cc.keys["node-1"].public_key_der())


def test_finality_counts_only_the_set_in_force(cc: ConsortiumChain) -> None:
    h = _drop(cc, "node-4")  # 3 nodes from h + 1: quorum 3 of 3
    d = cc.devices[0]
    cc.apply([d.message(d.reading())], sign_all=False)
    cc.store.add_signatures(h + 1, [(n, cc.keys[n].sign(cc.store.header(h + 1) or b""))
                                    for n in ("node-2",)])
    history = node_set_history_of(cc.store.conn)
    assert final_height(cc.store.conn, history) == h  # 2 of 3 is no quorum
    cc.store.add_signatures(h + 1, [("node-3", cc.keys["node-3"].sign(
        cc.store.header(h + 1) or b""))])
    assert final_height(cc.store.conn, history) == h + 1


def test_verify_refuses_a_signature_of_a_removed_node(cc: ConsortiumChain) -> None:
    removed = cc.keys["node-4"]
    h = _drop(cc, "node-4")
    d = cc.devices[0]
    cc.apply([d.message(d.reading())])
    assert verify_store(cc.store.path).ok
    header = cc.store.header(h + 1)
    assert header is not None
    cc.store.add_signatures(h + 1, [("node-4", removed.sign(header))])
    report = verify_store(cc.store.path)
    assert [(p.where, p.detail) for p in report.problems][:1] == [
        (f"block {h + 1}", "signature by node 'node-4', which is not in the chain's node set")]
    with pytest.raises(TamperError, match="not in the chain's node set"):
        check_tip(cc.store.conn, "node-1", cc.keys["node-1"].public_key_der())


def _refused(c: ConsortiumChain, entry: bytes) -> tuple[str, str]:
    before = c.chain.height
    result = c.apply(admin=[entry])
    assert result.header is None and c.chain.height == before
    [outcome] = result.admin
    assert outcome.status == "rejected"
    row = c.store.conn.execute("SELECT reason, topic FROM quarantine ORDER BY id DESC "
                               "LIMIT 1").fetchone()
    assert tuple(row) == (outcome.reason, "admin")
    return outcome.reason, outcome.detail


@pytest.mark.parametrize(("change", "reason"), [
    ("empty", "bad_node_set"),
    ("duplicate", "bad_node_set"),
    ("device_role", "node_cert_role"),
    ("other_ca", "node_cert_chain"),
    ("wrong_cn", "node_cert_wrong_device"),
    ("expired", "node_cert_expired"),
    ("not_a_list", "bad_node_set"),
    ("cert_is_text", "bad_node_set"),
    ("extra_field", "bad_node_set"),
    ("bad_id", "bad_node_set"),
    ("too_many", "bad_node_set"),
    ("oversized", "too_large"),
])
def test_a_change_that_does_not_check_is_quarantined(cc: ConsortiumChain, change: str,
                                                     reason: str) -> None:
    items: object = [{"node": n, "cert": cert} for n, cert in cc.certs.items()]
    assert isinstance(items, list)
    if change == "empty":
        items = []
    elif change == "duplicate":
        items.append(items[0])
    elif change == "device_role":
        items[1] = {"node": "node-2", "cert": cc.pki.issue(cc.keys["node-2"], "node-2",
                                                           "device")}
    elif change == "other_ca":
        items[1] = {"node": "node-2", "cert": SoftPKI().issue(cc.keys["node-2"], "node-2",
                                                              "node")}
    elif change == "wrong_cn":
        items[1] = {"node": "node-2", "cert": cc.certs["node-3"]}
    elif change == "expired":
        items[1] = {"node": "node-2", "cert": cc.pki.issue(cc.keys["node-2"], "node-2", "node",
                                                           not_after=T0 + 1000)}
    elif change == "not_a_list":
        items = {"node-1": cc.certs["node-1"]}
    elif change == "cert_is_text":
        items[1] = {"node": "node-2", "cert": "MII..."}
    elif change == "extra_field":
        items[1] = {**items[1], "key": b"x"}
    elif change == "bad_id":
        items[1] = {"node": "../node 2", "cert": cc.certs["node-2"]}
    elif change == "too_many":
        items = [{"node": f"n{i}", "cert": b"x"} for i in range(MAX_NODES + 1)]
    elif change == "oversized":
        items = [items[0]] * 110
    entry = cc.pki.signed({"type": NODE_SET_CHANGED, "nodes": items})
    got, detail = _refused(cc, entry)
    assert got == reason, detail
    assert node_set_history_of(cc.store.conn).changes == ()


def test_a_change_signed_by_a_non_operator_is_refused(cc: ConsortiumChain) -> None:
    body: dict[str, object] = {"type": NODE_SET_CHANGED,
            "nodes": [{"node": n, "cert": cert} for n, cert in cc.certs.items()]}
    node_key = cc.keys["node-1"]
    assert _refused(cc, cc.pki.signed(body, node_key, cc.certs["node-1"]))[0] == "not_operator"


def test_a_solo_chain_refuses_a_node_set_change(tmp_path: Path) -> None:
    c = ChainUnderTest(tmp_path / "solo.sqlite", [])
    cert = c.pki.issue(c.node, "node-1", "node")
    result = c.apply(admin=[c.pki.signed({"type": NODE_SET_CHANGED,
                                          "nodes": [{"node": "node-1", "cert": cert}]})])
    assert [(a.status, a.reason) for a in result.admin] == [("rejected", "bad_node_set")]
    assert "consortium chain" in result.admin[0].detail


def test_admin_level_checks(cc: ConsortiumChain) -> None:
    entry = _change(cc, dict(cc.certs))
    op = decode_operator_entry(entry, cc.pki.ca_cert, T0 + 1000)
    assert op.type == NODE_SET_CHANGED
    genesis = entries.decode_admin(cc.genesis_entry())
    assert sorted(check_node_set_change(op, genesis, T0 + 1000).keys) == list(NODES)
    with pytest.raises(AdminRejected, match="bad_node_set"):
        check_node_set_change(op, None, T0 + 1000)
    with pytest.raises(AdminRejected, match="not about a device"):
        apply_operator_entry(op, {}, cc.pki.ca_cert, 3, T0 + 1000)
    with pytest.raises(AdminRejected, match="bad_payload"):  # fields are exact
        decode_operator_entry(cc.pki.signed({"type": NODE_SET_CHANGED, "nodes": [],
                                             "dev": "x"}), cc.pki.ca_cert, T0 + 1000)


# -- bundles ----------------------------------------------------------------------------------

def _bundle(c: ConsortiumChain, index: int) -> dict[str, object]:
    conn = sqlite3.connect(f"file:{c.store.path}?mode=ro", uri=True)
    try:
        return bundle_for_entry(conn, index)
    finally:
        conn.close()


def test_a_bundle_carries_the_changes_and_needs_the_new_sets_quorum(
        cc: ConsortiumChain) -> None:
    old_keys = dict(cc.keys)
    h = _drop(cc, "node-3", "node-4")  # from h + 1: node-1, node-2, quorum 2 of 2
    d = cc.devices[0]
    cc.apply([d.message(d.reading())])
    index = cc.chain.size - 1
    bundle = _bundle(cc, index)
    change_idx = [e["index"] for e in bundle["entries"]  # type: ignore[attr-defined]
                  if entries.admin_kind(base64.b64decode(e["data"])) == NODE_SET_CHANGED]
    assert len(change_idx) == 1
    assert len(bundle["blocks"]) >= 1  # type: ignore[arg-type]
    raw = json.dumps(bundle).encode()
    report = verify_bundle(raw, pinned_ca=cc.pki.ca_cert)
    assert report.ok, report.problems
    assert "a quorum of 2 of 2" in report.signed_by
    assert f"changed in block(s) {h}" in report.key_source

    head = base64.b64decode(bundle["head"]["header"])  # type: ignore[index]
    old_only = json.loads(raw)
    old_only["head"]["signatures"] = [
        {"node": n, "sig": base64.b64encode(old_keys[n].sign(head)).decode()}
        for n in ("node-3", "node-4")]
    reasons = [p.reason for p in verify_bundle(json.dumps(old_only).encode(),
                                               pinned_ca=cc.pki.ca_cert).problems]
    assert "no_node_key" in reasons or "no_quorum" in reasons
    # Signatures of the old set's members that remain, too few for the old set's quorum of 3
    # but a quorum of the new one: accepted only because the change is in the bundle.
    lenient = json.loads(raw)
    lenient["head"]["signatures"] = [s for s in lenient["head"]["signatures"]
                                     if s["node"] in ("node-1", "node-2")]
    assert verify_bundle(json.dumps(lenient).encode(), pinned_ca=cc.pki.ca_cert).ok


def test_a_bundle_with_only_the_old_sets_signatures_fails_no_quorum(
        cc: ConsortiumChain) -> None:
    old_keys = dict(cc.keys)
    _add_node_5(cc)  # from then on 5 nodes, quorum 4
    d = cc.devices[0]
    cc.apply([d.message(d.reading())])
    raw = json.dumps(_bundle(cc, cc.chain.size - 1)).encode()
    assert verify_bundle(raw, pinned_ca=cc.pki.ca_cert).ok
    doc = json.loads(raw)
    head = base64.b64decode(doc["head"]["header"])
    doc["head"]["signatures"] = [
        {"node": n, "sig": base64.b64encode(k.sign(head)).decode()}
        for n, k in sorted(old_keys.items()) if n != "node-4"]  # 3: the old set's quorum
    reasons = [p.reason for p in verify_bundle(json.dumps(doc).encode(),
                                               pinned_ca=cc.pki.ca_cert).problems]
    assert reasons == ["no_quorum"]


def test_a_bundle_without_the_changes_block_header_fails(cc: ConsortiumChain) -> None:
    h = _add_node_5(cc)
    d = cc.devices[0]
    cc.apply([d.message(d.reading())])
    doc = _bundle(cc, cc.chain.size - 1)
    blocks = doc["blocks"]
    assert isinstance(blocks, list)
    doc["blocks"] = [b for b in blocks if entries_height(b) != h]
    problems = verify_bundle(json.dumps(doc).encode(), pinned_ca=cc.pki.ca_cert).problems
    assert "bad_node_set" in [p.reason for p in problems]


def test_a_forged_change_in_a_bundle_is_refused(cc: ConsortiumChain) -> None:
    """An entry swapped for another node set fails its inclusion proof and changes nothing."""
    _add_node_5(cc)
    d = cc.devices[0]
    cc.apply([d.message(d.reading())])
    doc = json.loads(json.dumps(_bundle(cc, cc.chain.size - 1)))
    for e in doc["entries"]:
        if entries.admin_kind(base64.b64decode(e["data"])) == NODE_SET_CHANGED:
            e["data"] = base64.b64encode(_change(cc, {"node-1": cc.certs["node-1"]})).decode()
    reasons = [p.reason for p in verify_bundle(json.dumps(doc).encode(),
                                               pinned_ca=cc.pki.ca_cert).problems]
    # The forged entry is not proven, so it changes nothing: the head's signer node-5 is then
    # outside the (old) set in force.
    assert sorted(reasons) == ["bad_inclusion_proof", "no_node_key"]


def entries_height(block: dict[str, object]) -> int:
    from ledger_node.block import decode_header

    return decode_header(base64.b64decode(str(block["header"]))).height


def test_default_head_uses_the_set_in_force(cc: ConsortiumChain) -> None:
    h = _drop(cc, "node-4")
    d = cc.devices[0]
    cc.apply([d.message(d.reading())], sign_all=False)
    cc.store.add_signatures(h + 1, [(n, cc.keys[n].sign(cc.store.header(h + 1) or b""))
                                    for n in ("node-2", "node-3")])
    assert default_head(cc.store.conn) == h + 1  # 3 of 3: final under the new set


# -- the CLI ----------------------------------------------------------------------------------

def test_set_nodes_reads_the_node_set_file(cc: ConsortiumChain, tmp_path: Path) -> None:
    path = write_node_set(tmp_path / "nodes.json", dict(cc.certs))
    body = node_set_body(path)
    assert body["type"] == NODE_SET_CHANGED
    assert [n["node"] for n in body["nodes"]] == list(NODES)
    bad = tmp_path / "bad.json"
    bad.write_text('{"nodes": [{"node": "node-1", "cert": "not base64!"}]}')
    with pytest.raises(ConfigError):
        node_set_body(bad)
    huge = tmp_path / "huge.json"
    huge.write_text("[" * 100_000)
    with pytest.raises(ConfigError):
        node_set_body(huge)


def test_set_nodes_cli_fails_clearly_on_bad_input(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    code = cli.main(["consortium", "set-nodes", "--node-set", str(bad), "--out",
                     str(tmp_path / "e.cose"), "--operator-cert", str(tmp_path / "none.der")])
    assert code == 2
    assert "trustfleet consortium set-nodes:" in capsys.readouterr().err
    assert not (tmp_path / "e.cose").exists()


# -- block sync -------------------------------------------------------------------------------

def test_catching_up_checks_each_block_against_the_set_in_force(cc: ConsortiumChain,
                                                                tmp_path: Path) -> None:
    from ledger_node.block_sync import SyncBlock, apply_block, parse_page
    from ledger_node.consortium.errors import SyncError
    from ledger_node.consortium_api import sync_page

    genesis_certs = sorted(cc.certs.items())  # a node's node_set_file: the genesis set
    h = _add_node_5(cc)
    d = cc.devices[0]
    for _ in range(2):
        cc.apply([d.message(d.reading())])
    conn = sqlite3.connect(f"file:{cc.store.path}?mode=ro", uri=True)
    try:
        page = parse_page(sync_page(conn, 0, 100))
    finally:
        conn.close()
    new = ConsortiumChain(tmp_path / "node-5" / "ledger.sqlite", [], pki=cc.pki, keys=cc.keys,
                          me="node-5")
    for block in page.blocks[: h + 1]:
        apply_block(new.chain, new.store, block, genesis_certs)
    b = page.blocks[h + 1]
    old_quorum = tuple(s for s in b.signatures if s[0] in ("node-1", "node-2", "node-3"))
    weak = SyncBlock(b.height, b.revision, b.header, old_quorum, b.entries)
    with pytest.raises(SyncError, match="no_quorum"):  # 3 of 5: the old set's quorum only
        apply_block(new.chain, new.store, weak, genesis_certs)
    for block in page.blocks[h + 1:]:
        apply_block(new.chain, new.store, block, genesis_certs)
    assert new.chain.tip_hash == cc.chain.tip_hash
    assert sorted(node_set_history_of(new.store.conn).latest.keys) == [*NODES, "node-5"]
