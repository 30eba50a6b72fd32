"""An idle node cuts a block when a burst gives every verification worker a chunk
(ledger_node.node.burst_cut), not only at its block deadline.

Against real Mosquitto and a real node (SoftHSM block key, 2 verification workers) whose
block interval is 60 s: within the test, only the burst rule can commit anything."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ledger_node.bench import interleave, presign, receipts
from ledger_node.bench_rig import RawPublisher, RunningNode, running_node
from ledger_node.node import burst_cut
from ledger_node.validate import OPEN_CHUNK
from trustfleet.procs import wait_for
from trustfleet.topics import up_topic

FLEET = "bench"


def test_the_burst_threshold_is_a_chunk_per_worker_and_never_more_than_a_block() -> None:
    assert burst_cut(10_000, 2) == 2 * OPEN_CHUNK
    assert burst_cut(10_000, 1) == OPEN_CHUNK
    assert burst_cut(600, 2) == 600  # a full block comes first
    assert burst_cut(10_000, 0) == 10_000  # no workers: only a full block (or the deadline)


def _status_when(node: RunningNode, done: Callable[[dict[str, Any]], bool], what: str
                 ) -> dict[str, Any]:
    """The node's status once `done` holds for it (trustfleet.procs.wait_for: 30 s, and a
    node that died says so with its log)."""
    status: dict[str, Any] = {}

    def check() -> bool:
        status.update(node.get("/v1/node/status"))
        return done(status)

    wait_for(check, 30, what, interval=0.05, proc=node.proc, log_file=node.log)
    return status


def test_a_burst_is_cut_before_the_deadline_and_fewer_readings_wait_for_it(
        tmp_path: Path) -> None:
    devices, per_device = 4, 275
    keys, chains = presign(devices, per_device)
    below = interleave(chains, 0, 250)  # 1,000 readings: under the 1,024 a burst needs
    rest = interleave(chains, 250, per_device)  # 100 more: over it
    assert len(below) < burst_cut(10_000, 2) <= len(below) + len(rest)
    config = tmp_path / "node.toml"
    config.write_text("[node]\nverify_workers = 2\nblock_interval_ms = 60000\n")
    with running_node(tmp_path, keys, FLEET, ["--config", str(config)]) as node:
        lat, sub = receipts(node.mqtt_port, "burst-receipts")
        pub = RawPublisher(node.mqtt_port, "burst-publisher")
        try:
            start = node.get("/v1/node/status")
            pub.send([pub.packet(up_topic(FLEET, dev), env) for dev, _, env in below],
                     timeout=30)
            pub.wait_acked(30)
            waiting = _status_when(node, lambda s: s["received"] == len(below),
                                   "the node to receive the first 1,000")
            # Received, queued, and not cut: the deadline is a minute away.
            assert waiting["accepted"] == 0
            assert waiting["height"] == start["height"]
            assert waiting["queue"] == len(below)

            pub.send([pub.packet(up_topic(FLEET, dev), env) for dev, _, env in rest],
                     timeout=30)
            pub.wait_acked(30)
            # Cut once 1,024 were waiting: everything queued then is committed; readings
            # arriving after the cut wait for the next deadline, as any block's would.
            threshold = burst_cut(10_000, 2)
            done = _status_when(node, lambda s: s["accepted"] >= threshold,
                                "the burst to be committed")
            assert done["height"] == start["height"] + 1
            assert done["accepted"] + done["queue"] == len(below) + len(rest)
            # The devices were told: receipts cover the committed readings, in order.
            wait_for(lambda: lat.total() >= done["accepted"], 30, "receipts", interval=0.05)
            assert lat.total() == done["accepted"]

            # SIGTERM while the node waits out its minute: it stops at once, cleanly, and
            # commits the readings still queued before it goes.
            node.proc.send_signal(signal.SIGTERM)
            assert node.proc.wait(timeout=20) == 0
            with sqlite3.connect(f"file:{node.data / 'ledger.sqlite'}?mode=ro", uri=True) as db:
                stored = db.execute("SELECT dev, max(seq), count(*) FROM readings GROUP BY dev"
                                    ).fetchall()
            assert sorted(stored) == [(dev, per_device, per_device) for dev in sorted(keys)]
        finally:
            pub.close()
            sub.disconnect()
