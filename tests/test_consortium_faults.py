"""Fault tests of a consortium: real processes, real etcd (3 members), 4 ledger nodes.

Each test breaks one part while readings flow, brings it back, and ends the same way
(`settle_and_check`): devices resend what is missing (as agents resend what is not
receipted), then every reading is committed exactly once on every node, all nodes hold the
same chain (same height, byte-identical block hashes), and `trustfleet verify` passes on each.

Shortened on purpose, to bound the suite's time: a node is frozen (SIGSTOP) for 20 s, not a
minute (long enough for the others to apply and finalise dozens of blocks without it); the
"hour of traffic later" join is in tests/test_consortium_nodes.py (enough traffic that etcd
compacts past the joiner's start). A kill -9 of a node "in the middle of applying a block" is
a kill while blocks are being applied back to back, three times at different moments: it
cannot choose the instruction it lands on, and every landing spot must be safe.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ledger_node.bench_rig import SignedDevice
from ledger_node.consortium.rig import (
    ConsortiumRig,
    block_hashes,
    committed_seqs,
    device_readings,
    publish,
    verify_node,
    wait_until,
)
from trustfleet.topics import up_topic

pytestmark = pytest.mark.slow
FLEET = "test"
PER_DEVICE = 120
DEVICES = 16


@pytest.fixture
def devices() -> list[SignedDevice]:
    """The trucks conftest's `rig` enrols."""
    return [SignedDevice(f"truck-{i:02d}", PER_DEVICE) for i in range(DEVICES)]


def load_with_fault(rig: ConsortiumRig, devs: list[SignedDevice],
                    fault: Callable[[], None], waves: int = 20) -> None:
    """Publish every reading in `waves` over a few seconds; run `fault` in the middle."""
    step = PER_DEVICE // waves
    errors: list[BaseException] = []

    def publisher() -> None:
        try:
            for w in range(waves):
                publish(rig.mqtt_port, device_readings(devs, w * step, (w + 1) * step, FLEET),
                        client_id=f"load-{w}")
                time.sleep(0.25)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=publisher)
    t.start()
    time.sleep(1.5)
    fault()
    t.join(timeout=300)
    assert not errors, errors


def missing(rig: ConsortiumRig, devs: list[SignedDevice]) -> dict[str, list[int]]:
    want = set(range(1, PER_DEVICE + 1))
    out: dict[str, set[int]] = {}
    for node in rig.nodes.values():
        held = committed_seqs(node.db)
        for d in devs:
            gap = want - held.get(d.dev, set())
            if gap:
                out.setdefault(d.dev, set()).update(gap)
    return {dev: sorted(seqs) for dev, seqs in out.items()}


def settle_and_check(rig: ConsortiumRig, devs: list[SignedDevice],
                     timeout: float = 240) -> None:
    by_dev = {d.dev: d for d in devs}
    deadline = time.monotonic() + timeout
    round_ = 0
    while (gaps := missing(rig, devs)):
        assert time.monotonic() < deadline, f"still missing after {timeout} s: {gaps}"
        round_ += 1
        if round_ % 6 == 0:  # what a device's resend timer does
            publish(rig.mqtt_port, [(up_topic(FLEET, dev), by_dev[dev].readings[s - 1])
                                    for dev, seqs in gaps.items() for s in seqs],
                    client_id=f"resend-{round_}")
        time.sleep(0.5)
    wait_until(lambda: _one_chain(rig), 120, "all nodes at the same height, same blocks")
    expected = len(devs) * PER_DEVICE
    for node in rig.nodes.values():
        conn = sqlite3.connect(f"file:{node.db}?mode=ro", uri=True)
        try:
            readings = conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
            entries = conn.execute("SELECT COUNT(*) FROM entries WHERE kind = 'reading'"
                                   ).fetchone()[0]
        finally:
            conn.close()
        assert readings == entries == expected, (node.node_id, readings, entries)
    rig.stop()
    for node in rig.nodes.values():
        result = verify_node(node.data)
        assert result.returncode == 0, (node.node_id, result.stdout, result.stderr)


def _one_chain(rig: ConsortiumRig) -> bool:
    chains = [block_hashes(n.db) for n in rig.nodes.values()]
    return all(c == chains[0] for c in chains[1:])


@pytest.mark.parametrize("role", ["leader", "follower"])
def test_kill_9_of_an_etcd_member_under_load(rig: ConsortiumRig, devices: list[SignedDevice],
                                             role: str) -> None:
    killed = []

    def fault() -> None:
        leader = rig.etcd.leader()
        assert leader is not None
        victim = leader if role == "leader" else next(
            m for m in rig.etcd.members if m is not leader)
        rig.etcd.kill(victim)
        killed.append(victim)

    load_with_fault(rig, devices, fault)
    rig.etcd.start_member(killed[0])
    rig.etcd.wait_healthy()
    settle_and_check(rig, devices)


def test_kill_9_of_a_ledger_node_while_it_applies_blocks(rig: ConsortiumRig,
                                                         devices: list[SignedDevice]) -> None:
    victim = rig.nodes["node-2"]

    def fault() -> None:
        for pause in (0.0, 0.37, 0.81):  # three different moments under load
            time.sleep(pause)
            victim.kill(signal.SIGKILL)
            victim.start()
            victim.wait_ready(120)

    load_with_fault(rig, devices, fault)
    settle_and_check(rig, devices)
    # Every block of the killed node records the etcd revision of the batch that made it (in
    # the block's transaction): each revision made one block, and the same block as on a node
    # that was never killed, so no batch was applied twice or skipped across the restarts.
    revisions = _block_revisions(victim.db)
    assert [r for _, r in revisions] == sorted({r for _, r in revisions}), "a batch made 2 blocks"
    assert revisions == _block_revisions(rig.nodes["node-1"].db)


def _block_revisions(db: Path) -> list[tuple[int, int]]:
    """(height, etcd revision) of every block of a node's store, by height."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        blocks = conn.execute("SELECT COUNT(*) FROM blocks").fetchone()[0]
        rows = conn.execute("SELECT height, revision FROM consortium_blocks ORDER BY height"
                            ).fetchall()
    finally:
        conn.close()
    assert [h for h, _ in rows] == list(range(blocks)), "a block without its revision"
    return [(int(h), int(r)) for h, r in rows]


def test_a_ledger_node_frozen_for_20_s_then_resumed(rig: ConsortiumRig,
                                                    devices: list[SignedDevice]) -> None:
    frozen = rig.nodes["node-4"]
    heights: list[int] = []

    def fault() -> None:
        frozen.kill(signal.SIGSTOP)
        before = rig.heights()
        time.sleep(20)
        after = rig.heights()
        heights.extend([before["node-1"], after["node-1"]])
        frozen.kill(signal.SIGCONT)

    load_with_fault(rig, devices, fault)
    assert heights[1] > heights[0]  # the other three went on (and finalised: a quorum of 3)
    settle_and_check(rig, devices)


def test_a_tampered_node_is_found_by_itself_and_by_comparison(
        rig: ConsortiumRig, devices: list[SignedDevice]) -> None:
    publish(rig.mqtt_port, device_readings(devices, 0, 40, FLEET))
    wait_until(lambda: all(len(committed_seqs(n.db).get(devices[0].dev, ())) == 40
                           for n in rig.nodes.values()), 120, "readings on all nodes")
    victim = rig.nodes["node-3"]
    victim.stop()
    conn = sqlite3.connect(victim.db)
    with conn:
        idx, height = conn.execute("SELECT idx, height FROM entries WHERE kind = 'reading' "
                                   "ORDER BY idx LIMIT 1 OFFSET 5").fetchone()
        data = bytearray(conn.execute("SELECT data FROM entries WHERE idx = ?",
                                      (idx,)).fetchone()[0])
        data[-1] ^= 0x01  # one bit of the device signature
        conn.execute("UPDATE entries SET data = ? WHERE idx = ?", (bytes(data), idx))
    conn.close()
    victim.start()
    victim.wait_ready()

    # Itself: its store no longer reproduces the signed root; it will not serve that proof.
    result = verify_node(victim.data)
    assert result.returncode == 1 and f"block {height}" in result.stdout, result.stdout
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as refused:
        victim.get(f"/v1/entries/{idx}/proof")
    assert refused.value.code == 503

    # Across nodes: the same signed header, other entry bytes on node-3 only.
    compare = subprocess.run(
        [sys.executable, "-m", "trustfleet.cli", "consortium", "compare", "--peers",
         str(rig.nodes["node-1"].data / "peers.json"), "--peers",
         str(rig.nodes["node-2"].data / "peers.json")],
        capture_output=True, text=True, timeout=300)
    assert compare.returncode == 1, compare.stdout + compare.stderr
    lines = [line for line in compare.stdout.splitlines() if line.startswith("DIFFERS")]
    assert lines == [f"DIFFERS: node-3: entries: block {height}: entry {idx} is not the entry "
                     "the other nodes hold under the same signed header (its store was "
                     "changed)"], compare.stdout
    for other in ("node-1", "node-2", "node-4"):
        ok = verify_node(rig.nodes[other].data)
        assert ok.returncode == 0, ok.stdout

    # Its tip changed: it refuses to start at all (exit 3, a damaged store).
    victim.stop()
    conn = sqlite3.connect(victim.db)
    with conn:
        top = conn.execute("SELECT MAX(idx) FROM entries").fetchone()[0]
        last = bytearray(conn.execute("SELECT data FROM entries WHERE idx = ?",
                                      (top,)).fetchone()[0])
        last[-1] ^= 0x01
        conn.execute("UPDATE entries SET data = ? WHERE idx = ?", (bytes(last), top))
    conn.close()
    victim.start()
    assert victim.proc is not None and victim.proc.wait(timeout=120) == 3
