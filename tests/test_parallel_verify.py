"""Blocks do not depend on how signatures are checked: in the apply thread, in threads, or in
the node's worker processes (ledger_node.workers), the store ends byte-identical.

The batches mix everything validation distinguishes (good readings, duplicates, replays,
gaps, forged and high-S signatures, wrong kids, unknown devices, wrong topics, garbage,
messages of several envelopes, batch-signed readings, a revocation in the middle) and are
large enough to be split into several chunks."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import BrokenExecutor, Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from hsm import SoftwareSigner
from ledger_node import entries
from ledger_node.chain import Chain, Message, OrderedBatch
from ledger_node.store import Store
from ledger_node.validate import ROW_FIELDS, KeyHint, open_envelopes
from ledger_node.workers import start_verify_pool
from tests.chainkit import FLEET, Device
from tests.pki import SoftPKI
from trustfleet.batch import sign_batch
from trustfleet.cose import P256_ORDER, sign1
from trustfleet.payload import GENESIS_PREV, Reading, encode_payload
from trustfleet.topics import encode_batch, up_topic

T = 1_763_700_000_000
TABLES = {
    "blocks": "height", "entries": "idx", "readings": "idx", "merkle_nodes": "level, idx",
    "devices": "dev", "quarantine": "id", "quarantine_summary": "reason, dev",
}


def _high_s(env: bytes) -> bytes:
    """The same envelope with its signature's other (high-S) form: valid, but refused."""
    s = int.from_bytes(env[-32:], "big")
    return env[:-32] + (P256_ORDER - s).to_bytes(32, "big")


def _batched(dev: Device, count: int) -> list[bytes]:
    payloads = []
    for _ in range(count):
        dev.seq += 1
        payload = encode_payload(Reading(dev=dev.dev, seq=dev.seq, prev=dev.prev, t=T + dev.seq,
                                         ts="gps", k="temp", d={"c": 1.5, "n": [dev.seq]}))
        dev.prev = hashlib.sha256(payload).digest()
        payloads.append(payload)
    return sign_batch(payloads, dev.dev, dev.seq - count + 1, T, dev.signer.kid,
                      dev.signer.sign)


def _dump(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(db) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY {order}").fetchall()
                for t, order in TABLES.items()}


def _run(tmp: Path, name: str, node: SoftwareSigner, admin: list[bytes],
         batches: list[OrderedBatch], executor: Executor | None, *,
         prefetch: int = 0) -> dict[str, Any]:
    """Apply the batches; with `prefetch` (1 or 2: at the first or the second time `apply`
    says it may), as the node does under load: each batch's
    messages are handed to the workers while the previous block is applied."""
    store = Store(tmp / f"{name}.sqlite")
    chain = Chain(store, "main", "node-1", node, executor=executor)
    genesis = chain.apply(OrderedBatch(T, "node-1", tuple(admin), ()))
    assert all(a.status == "accepted" for a in genesis.admin)
    results = []
    for i, batch in enumerate(batches):
        if prefetch and i + 1 < len(batches):
            following = batches[i + 1]
            chain.may_prefetch = _on_call(prefetch, lambda m=following.messages:
                                          chain.prefetch(m, T))
        else:
            chain.may_prefetch = None
        r = chain.apply(batch)
        results.append((r.accepted, r.duplicates, sorted(r.rejected.items()),
                        sorted(r.touched), r.header_bytes, r.block_hash))
    store.close()
    return {"results": results, "tables": _dump(tmp / f"{name}.sqlite")}


def _on_call(n: int, action: Callable[[], None]) -> Callable[[], None]:
    """`action` the n-th time it is called, and only then (the node cuts one batch ahead)."""
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        if calls == n:
            action()

    return call


Inputs = tuple[SoftwareSigner, list[bytes], list[OrderedBatch], dict[str, KeyHint]]


@pytest.fixture(scope="module")
def inputs() -> Inputs:
    node = SoftwareSigner.generate()
    return (node, *_build(node, SoftPKI()))


def _build(node: SoftwareSigner, pki: SoftPKI
           ) -> tuple[list[bytes], list[OrderedBatch], dict[str, KeyHint]]:
    """Genesis and enrolments; ordered batches of every kind of input; each enrolled
    device's key as a hint (by topic)."""
    devices = [Device(f"dev-{i}") for i in range(8)]
    hints = {d.topic: (d.dev, d.signer.public_key_der(), d.signer.kid) for d in devices}
    admin = [entries.genesis("main", "node-1", node.public_key_der(), T, pki.ca_cert)]
    admin += [pki.enrol(d.dev, d.signer, FLEET) for d in devices]
    stranger, impostor = Device("stranger"), SoftwareSigner.generate()

    def msg(dev: Device, data: bytes, topic: str | None = None) -> Message:
        return Message(topic or dev.topic, data, 7)

    one: list[Message] = []
    for round_ in range(90):  # 720 good readings, interleaved as a fleet's
        for d in devices:
            one.append(msg(d, d.reading(values={"c": round_ / 4, "ok": True, "s": "x"})))
    a, b, c = devices[0], devices[1], devices[2]
    forged = Reading(dev=a.dev, seq=a.seq + 1, prev=a.prev, t=T, ts="gps", k="temp", d={})
    one += [
        msg(a, sign1(encode_payload(forged), a.signer.kid, impostor.sign)),  # bad signature
        msg(a, sign1(encode_payload(forged), impostor.kid, impostor.sign)),  # kid mismatch
        msg(b, _high_s(b.reading())),                                         # high-S
        msg(stranger, stranger.reading()),                                    # unknown device
        msg(c, c.reading(), topic=up_topic(FLEET, "dev-3")),                  # wrong topic
        msg(c, b"\xd2\x84garbage"), msg(c, b"\x82\x01\x02"),                  # not envelopes
        msg(c, encode_batch([c.reading(), c.reading(), b"junk"])),            # several at once
        msg(a, one[0].payload),                                               # duplicate
    ]
    d, e = devices[3], devices[4]
    d.reading()  # lost: a gap
    two = [msg(d, d.reading())] + [msg(e, env) for env in _batched(e, 100)]
    two += [msg(x, x.reading()) for _ in range(40) for x in devices[5:]]
    f = devices[5]
    f.seq -= 1  # the same seq again with other bytes: a replay conflict
    f.prev = GENESIS_PREV
    two.append(msg(f, f.reading(values={"c": -1.0})))
    three = [msg(x, x.reading()) for _ in range(30) for x in devices]
    batches = [OrderedBatch(T + 1000, "node-1", (), tuple(one)),
               OrderedBatch(T + 2000, "node-1", (), tuple(two)),
               OrderedBatch(T + 3000, "node-1", (pki.revoke(devices[6].dev),), tuple(three))]
    return admin, batches, hints


def test_blocks_are_byte_identical_with_and_without_verification_workers(
        tmp_path: Path, inputs: Inputs, caplog: pytest.LogCaptureFixture) -> None:
    node, admin, batches, _ = inputs
    inline = _run(tmp_path, "inline", node, admin, batches, None)
    with ThreadPoolExecutor(3) as threads:
        threaded = _run(tmp_path, "threads", node, admin, batches, threads)
    pool = start_verify_pool(2)
    assert pool is not None
    try:
        processes = _run(tmp_path, "processes", node, admin, batches, pool)
        # Opened ahead, while the block before is written: from the state before that
        # block (batch three's revocation comes after its messages were handed out).
        ahead = _run(tmp_path, "ahead", node, admin, batches, pool, prefetch=1)
        # ... or once the workers have opened the block before, while it is written
        later = _run(tmp_path, "later", node, admin, batches, pool, prefetch=2)
    finally:
        pool.shutdown()
    # the batches exercise what they should
    accepted = [r[0] for r in inline["results"]]
    rejected = dict(kv for r in inline["results"] for kv in r[2])
    assert accepted[0] >= 720 and accepted[1] >= 200 and all(accepted)
    assert inline["results"][0][1] == 1  # the duplicate
    assert {"bad_signature", "kid_mismatch", "unknown_device", "topic_mismatch",
            "replay_conflict", "revoked_device"} <= set(rejected)
    assert any("gap" in row[8] for row in inline["tables"]["readings"])
    # ... and nothing depends on where signatures were checked
    assert threaded == inline
    assert processes == inline
    assert ahead == inline
    assert later == inline
    assert "verification workers failed" not in caplog.text  # they did the work


class _Breaks(Executor):
    """An executor whose workers have died."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        raise BrokenExecutor("a worker died")


def _comparable(opened: Iterable[Any]) -> list[Any]:
    """Rows, with the signature result (None for rows of envelopes that do not open)."""
    return [(row, row[ROW_FIELDS - 3] if len(row) == ROW_FIELDS else None) for row in opened]


def test_open_envelopes_gives_the_same_results_whatever_the_chunks_or_a_broken_pool(
        inputs: Inputs) -> None:
    _, _, batches, hints = inputs
    items: list[tuple[bytes, KeyHint | None]] = []
    for n, m in enumerate(m for b in batches for m in b.messages):
        hint = hints.get(m.topic)
        if n % 5 == 4 and hint is not None:  # a hint with another device's key
            hint = (hint[0], *next(iter(hints.values()))[1:])
        items.append((m.payload, hint if n % 7 else None))
    inline = _comparable(open_envelopes(items))
    assert sum(ok is True for _, ok in inline) > 500
    assert any(ok is False for _, ok in inline)
    assert any(ok is None for _, ok in inline)
    with ThreadPoolExecutor(2) as pool:
        for chunk in (1, 7, 100, 5000):
            assert _comparable(open_envelopes(items, pool, chunk=chunk, inline_below=1)) == inline
    assert _comparable(open_envelopes(items, _Breaks(), inline_below=1)) == inline


def test_verify_workers_default_to_one_per_cpu_and_zero_means_none(tmp_path: Path) -> None:
    import os

    from ledger_node.config import load_config
    from ledger_node.errors import ConfigError

    assert load_config(None).verify_processes == (os.cpu_count() or 1)
    toml = tmp_path / "node.toml"
    toml.write_text("[node]\nverify_workers = 0\n")
    assert load_config(toml).verify_processes == 0
    assert start_verify_pool(0) is None
    toml.write_text("[node]\nverify_workers = -1\n")
    with pytest.raises(ConfigError, match="verify_workers"):
        load_config(toml)
