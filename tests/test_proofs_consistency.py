"""Consistency documents: an auditor's saved head against a newer one; forks are caught.

The forked history is two real chains signed by the SAME node key, identical up to block 1 and
different from block 2 on (what an equivocating node would show two auditors).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from hsm import SoftwareSigner
from ledger_node import entries, proofs
from ledger_node.chain import Chain, OrderedBatch
from ledger_node.heads import (
    CheckFailed,
    check_consistency,
    consistency_json,
    head_json,
    parse_consistency,
    read_head_file,
)
from ledger_node.store import Store, open_reader
from tests.chainkit import FLEET, Device
from tests.pki import SoftPKI

T0 = 1_763_700_000_000


def twin_chains(tmp: Path) -> tuple[Path, Path, bytes]:
    """Chains a and b: same node key, same blocks 0-1, different readings from block 2 on."""
    node = SoftwareSigner.generate()
    dev = Device("truck-1")
    pki = SoftPKI()
    admin = (entries.genesis("main", "node-1", node.public_key_der(), T0, pki.ca_cert),
             pki.enrol("truck-1", dev.signer, FLEET))
    stores = {name: Store(tmp / name / "ledger.sqlite") for name in ("a", "b")}
    chains = {name: Chain(s, "main", "node-1", node) for name, s in stores.items()}
    batches: list[tuple[Any, ...]] = [admin, (dev.reading(), dev.reading())]
    for n, batch in enumerate(batches):
        for chain in chains.values():
            msgs = tuple(dev.message(e) for e in batch) if n else ()
            chain.apply(OrderedBatch(T0 + n, "node-1", () if n else batch, msgs))
    seq, prev = dev.seq, dev.prev
    for name, chain in chains.items():
        dev.seq, dev.prev = seq, prev  # each history gets its own seq 3..6
        for n in range(2, 4):
            env = (dev.reading(values={"c": 5.0 if name == "a" else 9.0}), dev.reading())
            chain.apply(OrderedBatch(T0 + n, "node-1", (), tuple(dev.message(e) for e in env)))
    for s in stores.values():
        s.close()
    return tmp / "a" / "ledger.sqlite", tmp / "b" / "ledger.sqlite", node.public_key_der()


def doc(db: Path, old: int, new: int | None = None) -> dict[str, Any]:
    conn = open_reader(db)
    p = proofs.consistency(conn, old, new)
    out = consistency_json((p.old.header_bytes, p.old.signatures),
                           (p.new.header_bytes, p.new.signatures), p.hashes,
                           proofs.node_keys(conn))
    conn.close()
    return json.loads(json.dumps(out))


def saved_head(db: Path, height: int) -> bytes:
    conn = open_reader(db)
    h = proofs.signed_head(conn, height)
    conn.close()
    return json.dumps(head_json(h.header_bytes, h.signatures)).encode()


@pytest.fixture(scope="module")
def forks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    return twin_chains(tmp_path_factory.mktemp("forks"))


def test_the_log_only_grew_between_every_pair_of_heads(forks: tuple[Path, Path, bytes]) -> None:
    a, _, key = forks
    for old in range(4):
        for new in range(old, 4):
            summary = check_consistency(parse_consistency(doc(a, old, new)),
                                        saved_old=read_head_file(saved_head(a, old), "old"),
                                        pinned=key)
            assert f"is a prefix of block {new}" in summary and "the pinned key" in summary


def test_a_forked_history_is_caught_against_the_head_you_saved(
        forks: tuple[Path, Path, bytes]) -> None:
    a, b, key = forks
    mine = read_head_file(saved_head(a, 2), "my head")  # I saw block 2 of history a
    with pytest.raises(CheckFailed) as err:  # the node now shows history b
        check_consistency(parse_consistency(doc(b, 2, 3)), saved_old=mine, pinned=key)
    assert err.value.reason == "fork"
    assert "is not the block you hold" in err.value.detail
    # a node that splices my block 2 in front of its other history cannot make the proof fit
    spliced = doc(b, 1, 3)
    spliced["from"] = json.loads(saved_head(a, 2))
    spliced["proof"] = doc(a, 2, 3)["proof"]
    with pytest.raises(CheckFailed) as err:
        check_consistency(parse_consistency(spliced), saved_old=mine, pinned=key)
    assert err.value.reason == "inconsistent"
    assert "does not extend the tree of block 2" in err.value.detail
    # the common prefix is still consistent with both histories
    before = read_head_file(saved_head(a, 1), "common head")
    for db in (a, b):
        check_consistency(parse_consistency(doc(db, 1)), saved_old=before, pinned=key)


def test_two_signed_blocks_at_one_height_are_a_fork(forks: tuple[Path, Path, bytes]) -> None:
    a, b, key = forks
    d = doc(a, 3, 3)
    d["to"] = json.loads(saved_head(b, 3))
    with pytest.raises(CheckFailed, match=r"\[fork\] heads: two different signed blocks"):
        check_consistency(parse_consistency(d), pinned=key)


def _flip_proof(d: dict[str, Any]) -> None:
    import base64

    h = bytearray(base64.b64decode(d["proof"][0]))
    h[0] ^= 0x80
    d["proof"][0] = base64.b64encode(bytes(h)).decode()


@pytest.mark.parametrize("mutate, reason", [
    (_flip_proof, "inconsistent"),
    (lambda d: d["proof"].pop(), "bad_proof"),
    (lambda d: d["proof"].append(d["proof"][0]), "bad_proof"),
    (lambda d: d.update({"from": d["to"], "to": d["from"]}), "wrong_head"),
    (lambda d: d["to"]["signatures"].clear(), "missing_signature"),
    (lambda d: d["node_keys"].clear(), "no_node_key"),
    (lambda d: d.update(version=2), "unsupported_version"),
    (lambda d: d.update(format="trustfleet-proof-bundle"), "not_a_consistency_document"),
    (lambda d: d["to"].update(header=d["to"]["header"][:-4]), "bad_header"),
])
def test_broken_consistency_documents_are_named(forks: tuple[Path, Path, bytes], mutate: Any,
                                                reason: str) -> None:
    d = copy.deepcopy(doc(forks[0], 1, 3))
    mutate(d)
    with pytest.raises(CheckFailed) as err:
        check_consistency(parse_consistency(d))
    assert err.value.reason == reason, str(err.value)


def test_a_pinned_key_rejects_heads_signed_by_another_node(
        forks: tuple[Path, Path, bytes]) -> None:
    other = SoftwareSigner.generate().public_key_der()
    with pytest.raises(CheckFailed, match=r"\[bad_node_signature\] old head: .*the pinned key"):
        check_consistency(parse_consistency(doc(forks[0], 1, 3)), pinned=other)


def test_a_saved_head_of_another_height_is_named(forks: tuple[Path, Path, bytes]) -> None:
    a, _, key = forks
    with pytest.raises(CheckFailed, match=r"\[wrong_head\] old head: your head is block 1"):
        check_consistency(parse_consistency(doc(a, 2)),
                          saved_old=read_head_file(saved_head(a, 1), "old"), pinned=key)


def test_a_verified_consistency_document_serves_as_the_next_saved_head(
        forks: tuple[Path, Path, bytes]) -> None:
    a, _, key = forks
    saved = read_head_file(json.dumps(doc(a, 0, 2)).encode(), "last time's document")
    assert saved.header.height == 2
    check_consistency(parse_consistency(doc(a, 2, 3)), saved_old=saved, pinned=key)
