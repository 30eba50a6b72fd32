"""Under a flood of invalid messages, every valid reading is committed, in order and without
gaps, and every flood message is either stored in quarantine or counted in its summary.
Functional only (no timing): real broker, real node process, real SoftHSM token."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from hsm import SoftwareSigner
from ledger_node.bench_flood import FLEET, VICTIM, _attack_pool
from ledger_node.bench_rig import client
from tests.chainkit import Device
from tests.fleet import (
    NodeProcess,
    ca_path_for,
    cli,
    operator_token,
    spawn,
    write_enrollments,
)
from trustfleet.procs import free_port, wait_for
from trustfleet.topics import up_topic

pytestmark = pytest.mark.slow

FLOOD = 3000
VALID_DEVICES, PER_DEVICE = 3, 30


def start_node_with(config: str, data: Path, rig_dir: Path, broker_port: int,
                    enroll: Path) -> NodeProcess:
    toml = data.parent / "node.toml"
    toml.write_text(config)
    api_port = free_port()
    log = data / "node.log"
    proc = spawn(cli("node", "run", "--config", str(toml), "--data", str(data), "--rig",
                     str(rig_dir), "--token", "node-1", "--enroll", str(enroll),
                     "--fleet-ca", str(ca_path_for(enroll)), "--broker-port",
                     str(broker_port), "--api-port", str(api_port), "--block-interval-ms",
                     "100"), log)
    node = NodeProcess(proc, data, api_port, log, operator_token(data))
    wait_for(lambda: node.get("/v1/node/status")["broker_connected"], 60, "ledger node",
             proc=proc, log_file=log)
    return node


def test_a_flood_is_stored_or_counted_and_valid_readings_all_commit_contiguously(
        tmp_path: Path, broker: object, device_rig: object) -> None:
    port = broker.port  # type: ignore[attr-defined]
    devices = [Device(f"valid-{i}") for i in range(VALID_DEVICES)]
    for d in devices:
        d.topic = up_topic(FLEET, d.dev)
    victim = SoftwareSigner.generate()
    keys = {d.dev: d.signer.public_key_der() for d in devices} | {
        VICTIM: victim.public_key_der()}
    enroll = write_enrollments(tmp_path / "enroll.json", keys, fleet=FLEET)
    # Small caps, so that both the summary of the store and ingest's overload path are used.
    node = start_node_with("[node]\nquarantine_max_rows = 300\ningest_suspect_queue = 100\n",
                           tmp_path / "node", device_rig.directory, port, enroll)  # type: ignore[attr-defined]
    try:
        pool = _attack_pool(victim.kid)
        attacker, valid = client(port, "attacker"), client(port, "valid")
        started = threading.Event()

        def flood() -> None:
            info = None
            for i in range(FLOOD):
                _, topic, payload = pool[i % len(pool)]
                info = attacker.publish(topic, payload, qos=1)
                if i == 100:
                    started.set()
            assert info is not None
            info.wait_for_publish(60)

        flooder = threading.Thread(target=flood)
        flooder.start()
        assert started.wait(30)
        last = None
        for _ in range(PER_DEVICE):  # interleaved with the flood
            for d in devices:
                last = valid.publish(d.topic, d.reading(t=time.time_ns() // 1_000_000), qos=1)
        assert last is not None
        last.wait_for_publish(60)
        flooder.join(60)
        def settled() -> bool:  # every message received and dealt with, by the node's count
            st = node.get("/v1/node/status")
            return bool(st["received"] == FLOOD + VALID_DEVICES * PER_DEVICE
                        and st["accepted"] == VALID_DEVICES * PER_DEVICE
                        and sum(st["rejected"].values()) + st["summarised_unexamined"] == FLOOD)

        wait_for(settled, 120, "flood and readings", proc=node.proc, log_file=node.log)
        status = node.get("/v1/node/status")
        q = node.get("/v1/quarantine?limit=1")
        for d in devices:
            readings = node.get(f"/v1/devices/{d.dev}/readings?limit=1000")["readings"]
            assert [r["seq"] for r in readings] == list(range(1, PER_DEVICE + 1))
            assert all(r["flags"] == [] for r in readings)
        assert status["queue"] == 0
        assert sum(q["counts"].values()) + q["summarised"] == FLOOD  # what the store says
        assert q["stored"]["rows"] <= 300 and q["summarised"] > 0
        assert sum(s["count"] for s in q["summary"]) == q["summarised"]
        listed = subprocess.run(cli("quarantine", "list", "--node", node.api, "--limit", "5",
                                    "--token", str(node.token)),
                                capture_output=True, text=True, timeout=60, check=False)
        assert listed.returncode == 0, listed.stderr
        assert f"summarised, not stored: {q['summarised']:,}" in listed.stdout
        for c in (attacker, valid):
            c.disconnect()
            c.loop_stop()
    finally:
        node.stop()
