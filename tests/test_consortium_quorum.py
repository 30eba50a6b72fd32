"""Node sets and quorum certificates: the genesis entry's node set, the > 2/3 rule, what the
chain, `trustfleet verify` and the offline bundle verifier make of them.

`ConsortiumChain` (also used by tests/test_consortium_sync.py) is a consortium chain built
in-process: four software node keys with node certificates from a software fleet CA, a real
ConsortiumStore, and each block signed by every node (as their signature posts would do).
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import pytest

from hsm import SoftwareSigner
from ledger_node import entries
from ledger_node.block import decode_header
from ledger_node.bundle import bundle_for_entry
from ledger_node.bundle_verify import verify_bundle
from ledger_node.chain import ApplyResult, Chain, Message, OrderedBatch
from ledger_node.consortium.cstore import ConsortiumStore
from ledger_node.consortium.errors import QuorumError
from ledger_node.quorum import (
    NodeSet,
    block_signatures_problem,
    check_qc,
    consortium_genesis,
    node_set_from_genesis,
    quorum_size,
)
from ledger_node.verify import verify_store
from tests.chainkit import Device
from tests.pki import T0, SoftPKI

NODES = ("node-1", "node-2", "node-3", "node-4")


class ConsortiumChain:
    """One node's chain of a 4-node consortium; `sign_all` adds the other nodes' signatures."""

    def __init__(self, path: Path, devices: list[Device], pki: SoftPKI | None = None,
                 keys: dict[str, SoftwareSigner] | None = None, me: str = "node-1") -> None:
        self.pki = pki or SoftPKI()
        self.keys = keys or {n: SoftwareSigner.generate() for n in NODES}
        self.certs = {n: self.pki.issue(s, n, "node") for n, s in self.keys.items()}
        self.store = ConsortiumStore(path)
        self.chain = Chain(self.store, "main", me, self.keys[me])
        self.time = 1_763_700_000_000
        self.revision = 0
        self.devices = devices

    def genesis_entry(self) -> bytes:
        return consortium_genesis("main", "node-1", self.keys["node-1"].public_key_der(),
                                  self.time, self.pki.ca_cert, self.certs.items())

    def start(self) -> ApplyResult:
        admin = [self.genesis_entry(), *(self.pki.enrol(d.dev, d.signer, "test")
                                         for d in self.devices)]
        result = self.apply(admin=admin)
        assert all(a.status == "accepted" for a in result.admin), result.admin
        return result

    def apply(self, messages: list[Message] | None = None, admin: list[bytes] | None = None,
              proposer: str = "node-2", sign_all: bool = True) -> ApplyResult:
        self.time += 1000
        self.revision += 3
        self.store.pending_revision = self.revision
        result = self.chain.apply(OrderedBatch(self.time, proposer, tuple(admin or ()),
                                               tuple(messages or ())))
        if self.store.pending_revision is not None:
            self.store.mark_applied(self.revision)
        if sign_all and result.header_bytes is not None and result.header is not None:
            self.store.add_signatures(result.header.height, [
                (n, k.sign(result.header_bytes)) for n, k in self.keys.items()
                if n != self.chain.node_id])
        return result

    @property
    def node_set(self) -> NodeSet:
        return NodeSet({n: k.public_key_der() for n, k in self.keys.items()})


@pytest.fixture
def cc(tmp_path: Path) -> ConsortiumChain:
    trucks = [Device("truck-1"), Device("truck-2")]
    c = ConsortiumChain(tmp_path / "ledger.sqlite", trucks)
    c.start()
    for _ in range(3):
        c.apply([d.message(d.reading()) for d in trucks])
    return c


def test_quorum_is_more_than_two_thirds() -> None:
    assert [quorum_size(n) for n in (1, 2, 3, 4, 5, 6, 7, 10)] == [1, 2, 3, 3, 4, 5, 5, 7]


def test_a_solo_genesis_names_one_node() -> None:
    key = SoftwareSigner.generate().public_key_der()
    ns = node_set_from_genesis(entries.decode_admin(entries.genesis("main", "node-1", key, 0)),
                               0)
    assert ns.keys == {"node-1": key} and ns.quorum == 1


def test_a_consortium_genesis_names_certified_nodes(tmp_path: Path) -> None:
    c = ConsortiumChain(tmp_path / "l.sqlite", [])
    ns = node_set_from_genesis(entries.decode_admin(c.genesis_entry()), T0 + 1000)
    assert ns.keys == {n: k.public_key_der() for n, k in c.keys.items()}
    assert ns.quorum == 3 and ns.certs == c.certs  # every node of the set is certified


def _genesis_with(c: ConsortiumChain, certs: list[tuple[str, bytes]],
                  node: str = "node-1") -> dict[str, object]:
    return entries.decode_admin(consortium_genesis(
        "main", node, c.keys["node-1"].public_key_der(), c.time, c.pki.ca_cert, certs))


@pytest.mark.parametrize(("change", "reason"), [
    ("device_role", "node_cert_role"),
    ("other_ca", "node_cert_chain"),
    ("wrong_cn", "node_cert_wrong_device"),
    ("duplicate", "bad_node_set"),
    ("genesis_node_missing", "bad_node_set"),
    ("empty", "bad_node_set"),
])
def test_a_node_set_that_does_not_check_is_refused(tmp_path: Path, change: str,
                                                   reason: str) -> None:
    c = ConsortiumChain(tmp_path / "l.sqlite", [])
    certs = list(c.certs.items())
    if change == "device_role":
        certs[1] = ("node-2", c.pki.issue(c.keys["node-2"], "node-2", "device"))
    elif change == "other_ca":
        certs[1] = ("node-2", SoftPKI().issue(c.keys["node-2"], "node-2", "node"))
    elif change == "wrong_cn":
        certs[1] = ("node-2", c.certs["node-3"])
    elif change == "duplicate":
        certs.append(certs[0])
    elif change == "genesis_node_missing":
        certs = certs[1:]
    elif change == "empty":
        certs = []
    with pytest.raises(QuorumError) as exc:
        node_set_from_genesis(_genesis_with(c, certs), T0 + 1000)
    assert exc.value.reason == reason


def test_the_chain_refuses_a_genesis_whose_node_set_does_not_check(tmp_path: Path) -> None:
    c = ConsortiumChain(tmp_path / "l.sqlite", [])
    bad = consortium_genesis("main", "node-1", c.keys["node-1"].public_key_der(), c.time,
                             c.pki.ca_cert, [("node-1", c.certs["node-1"]),
                                             ("node-2", c.certs["node-3"])])
    result = c.apply(admin=[bad])
    assert result.header is None
    assert [(a.status, a.reason) for a in result.admin] == [("rejected", "bad_node_set")]


def test_a_quorum_certificate_needs_three_valid_signatures_of_four(
        cc: ConsortiumChain) -> None:
    header = cc.store.header(2)
    assert header is not None
    sigs = [(n, k.sign(header)) for n, k in cc.keys.items()]
    assert check_qc(cc.node_set, header, sigs[:3]).signers == ("node-1", "node-2", "node-3")
    with pytest.raises(QuorumError) as exc:
        check_qc(cc.node_set, header, sigs[:2])
    assert exc.value.reason == "no_quorum"
    bad = [*sigs[:3], ("node-4", sigs[0][1])]
    assert len(check_qc(cc.node_set, header, bad).signatures) == 3
    with pytest.raises(QuorumError, match="bad_node_signature"):
        check_qc(cc.node_set, header, bad, strict=True)
    stranger = SoftwareSigner.generate()
    with pytest.raises(QuorumError, match="no_node_key"):
        check_qc(cc.node_set, header, [*sigs[:3], ("node-9", stranger.sign(header))],
                 strict=True)
    duplicated = [sigs[0], sigs[0], sigs[0]]
    with pytest.raises(QuorumError, match="no_quorum"):
        check_qc(cc.node_set, header, duplicated)


def test_stored_signatures_of_a_consortium_block_are_all_checked(cc: ConsortiumChain) -> None:
    header = cc.store.header(1)
    assert header is not None
    keys = cc.node_set.keys
    sigs = cc.store.signatures(1)
    assert block_signatures_problem(header, "node-2", sigs, keys) is None
    assert block_signatures_problem(header, "node-2", sigs[:1], keys) is None  # own only
    assert block_signatures_problem(header, "node-2", [], keys) == \
        "no signature of any node of the node set"
    forged = [(n, sigs[0][1]) if n == "node-3" else (n, s) for n, s in sigs]
    assert block_signatures_problem(header, "node-2", forged, keys) == \
        "signature of node 'node-3' does not verify"


def test_verify_checks_every_node_signature_of_a_consortium_store(cc: ConsortiumChain,
                                                                   tmp_path: Path) -> None:
    report = verify_store(cc.store.path)
    assert report.ok, report.problems
    with cc.store.conn:
        cc.store.conn.execute("UPDATE block_sigs SET sig = ? WHERE height = 2 AND node = "
                              "'node-4'", (bytes(64),))
    report = verify_store(cc.store.path)
    assert [(p.where, p.detail) for p in report.problems][:1] == \
        [("block 2", "signature of node 'node-4' does not verify")]


def test_a_bundle_verifies_only_with_a_quorum_of_the_node_set(cc: ConsortiumChain) -> None:
    conn = sqlite3.connect(f"file:{cc.store.path}?mode=ro", uri=True)
    try:
        bundle = bundle_for_entry(conn, 6)
    finally:
        conn.close()
    assert [n["node"] for n in bundle["certificates"]["nodes"]] == list(NODES)
    raw = json.dumps(bundle).encode()
    report = verify_bundle(raw, pinned_ca=cc.pki.ca_cert)
    assert report.ok, report.problems
    assert "a quorum of 3 of 4" in report.signed_by
    assert report.node_certified and "quorum certificate" in report.key_source

    def variant(sigs: list[dict[str, str]]) -> list[str]:
        b = json.loads(raw)
        b["head"]["signatures"] = sigs
        return [p.reason for p in verify_bundle(json.dumps(b).encode(),
                                                pinned_ca=cc.pki.ca_cert).problems]

    sigs = json.loads(raw)["head"]["signatures"]
    assert variant(sigs[:2]) == ["no_quorum"]
    assert variant(sigs[1:]) == []  # no proposer signature needed: a quorum is enough
    forged = [dict(s) for s in sigs]
    forged[3]["sig"] = forged[0]["sig"]
    assert variant(forged) == ["bad_node_signature"]
    stranger = SoftwareSigner.generate()
    header = json.loads(raw)["head"]["header"]
    extra = {"node": "node-9", "sig": base64.b64encode(
        stranger.sign(base64.b64decode(header))).decode()}
    assert variant([*sigs, extra]) == ["no_node_key"]
    # Another CA pinned: the node certificates (and so the node set) do not chain to it.
    other = verify_bundle(raw, pinned_ca=SoftPKI().ca_cert)
    assert "wrong_ca" in [p.reason for p in other.problems]


def test_the_default_head_of_a_consortium_bundle_is_the_newest_final_block(
        cc: ConsortiumChain) -> None:
    trucks = cc.devices
    cc.apply([d.message(d.reading()) for d in trucks], sign_all=False)  # not final
    conn = sqlite3.connect(f"file:{cc.store.path}?mode=ro", uri=True)
    try:
        bundle = bundle_for_entry(conn, 5)
    finally:
        conn.close()
    head = decode_header(base64.b64decode(bundle["head"]["header"]))
    assert head.height == cc.chain.height - 1
    assert verify_bundle(json.dumps(bundle).encode(), pinned_ca=cc.pki.ca_cert).ok
