"""A consortium of real processes: 3 etcd members, a broker, ledger nodes with SoftHSM keys.

Readings published once through the shared subscription are committed exactly once, by
every node, in byte-identical blocks; receipts and the API carry quorum certificates; a
node's proof bundle verifies offline only with a quorum of the node set; a node started
late, after etcd compacted the history it would need, catches up from its peers over the
API and then follows etcd; `trustfleet verify` passes on every node.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ledger_node.bench_rig import SignedDevice
from ledger_node.block import block_hash, decode_header
from ledger_node.bundle_verify import verify_bundle
from ledger_node.consortium.rig import (
    ConsortiumRig,
    block_hashes,
    committed_seqs,
    device_readings,
    publish,
    start_rig,
    verify_node,
    wait_until,
)
from ledger_node.quorum import node_set_from_genesis
from trustfleet.receipt import Receipt, decode_receipt

pytestmark = pytest.mark.slow
FLEET = "test"


@pytest.fixture
def devices() -> list[SignedDevice]:
    """The trucks conftest's `rig` enrols."""
    return [SignedDevice(f"truck-{i:02d}", 64) for i in range(12)]


def all_committed(rig: ConsortiumRig, devs: list[SignedDevice], upto: int,
                  nodes: list[str] | None = None) -> bool:
    want = {d.dev: set(range(1, upto + 1)) for d in devs}
    return all(committed_seqs(rig.nodes[n].db) == want for n in nodes or list(rig.nodes))


def same_blocks(rig: ConsortiumRig, nodes: list[str] | None = None) -> list[bytes]:
    """The common prefix of the nodes' chains, after checking they agree on all of it."""
    chains = [block_hashes(rig.nodes[n].db) for n in nodes or list(rig.nodes)]
    common = min(len(c) for c in chains)
    for c in chains[1:]:
        assert c[:common] == chains[0][:common]
    return chains[0][:common]


class Receipts:
    def __init__(self, port: int) -> None:
        self.got: dict[str, Receipt] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-receipts",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"tf/v1/{FLEET}/+/receipt", qos=1)
        self.client.loop_start()

    def _on_message(self, c: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        r = decode_receipt(bytes(msg.payload))
        with self.lock:
            if r.dev not in self.got or r.seq >= self.got[r.dev].seq:
                self.got[r.dev] = r

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()



def test_readings_are_committed_once_in_identical_blocks_final_with_a_quorum(
        rig: ConsortiumRig, devices: list[SignedDevice]) -> None:
    receipts = Receipts(rig.mqtt_port)
    try:
        publish(rig.mqtt_port, device_readings(devices, 0, 60))
        wait_until(lambda: all_committed(rig, devices, 60), 180, "every reading on every node")
        wait_until(lambda: all(r.seq == 60 for r in receipts.got.values())
                   and len(receipts.got) == len(devices), 60, "final receipts")
    finally:
        receipts.close()
    common = same_blocks(rig)
    assert len(common) >= 2
    n1 = rig.nodes["node-1"]
    genesis = json.loads(json.dumps(n1.get("/v1/entries/0")))
    assert genesis["kind"] == "genesis"
    status = n1.get("/v1/consortium/status")
    assert status["node_set"] == ["node-1", "node-2", "node-3", "node-4"]
    assert status["quorum"] == 3

    # Receipts: sent when final, with the block's quorum certificate.
    from ledger_node import entries as entry_types

    rec = entry_types.decode_admin(base64.b64decode(genesis["data"]))
    node_set = node_set_from_genesis(rec, decode_header(
        base64.b64decode(n1.get("/v1/blocks/0")["header"])).time)
    for r in receipts.got.values():
        assert r.final is True
        assert block_hash(r.header) == r.block
        valid = [s["node"] for s in r.sigs if node_set.verify(s["node"], r.header, s["sig"])]
        assert len(valid) >= 3, r.sigs

    # The API's quorum certificate of a block every node has.
    qc = n1.get(f"/v1/consortium/qc/{len(common) - 1}")
    assert qc["final"] is True and len(qc["signatures"]) >= 3 and qc["invalid"] == []

    # A proof bundle from any node verifies offline against the pinned fleet CA, with a QC.
    index = n1.get("/v1/devices/truck-03/readings?limit=1")["readings"][0]["entry"]
    bundle = rig.nodes["node-2"].get(f"/v1/entries/{index}/proof")
    raw = json.dumps(bundle).encode()
    report = verify_bundle(raw, pinned_ca=rig.pki.ca_cert)
    assert report.ok, report.problems
    assert "quorum" in report.signed_by and report.node_certified
    # Two signatures are not a quorum of four.
    bundle["head"]["signatures"] = bundle["head"]["signatures"][:2]
    weak = verify_bundle(json.dumps(bundle).encode(), pinned_ca=rig.pki.ca_cert)
    assert [p.reason for p in weak.problems] == ["no_quorum"]

    rig.stop()
    for node in rig.nodes.values():
        result = verify_node(node.data)
        assert result.returncode == 0, result.stdout + result.stderr


def test_a_node_started_late_catches_up_from_its_peers_after_etcd_compacted(
        tmp_path: Path, devices: list[SignedDevice]) -> None:
    # "An hour of traffic later": enough traffic that etcd compacts past the revisions the
    # late node would need (a small etcd_retain_revisions, so that it takes seconds).
    rig = start_rig(tmp_path, 4, {d.dev: d.signer.public_key_der() for d in devices},
                    start=3, settings={"etcd_retain_revisions": 100})
    try:
        running = ["node-1", "node-2", "node-3"]
        for wave in range(30):
            publish(rig.mqtt_port, device_readings(devices, 2 * wave, 2 * wave + 2),
                    client_id=f"wave-{wave}")
            time.sleep(0.15)
        wait_until(lambda: all_committed(rig, devices, 60, running), 180, "readings on 3 nodes")
        wait_until(lambda: rig.nodes["node-1"].status()["consortium"]["compacted_to"] > 50,
                   120, "etcd compacted")
        late = rig.nodes["node-4"]
        late.start()
        late.wait_ready(180)
        wait_until(lambda: all_committed(rig, devices, 60, ["node-4"]), 180, "node-4 caught up")
        assert "catching up from peers" in late.log.read_text()
        # It follows etcd afterwards: new readings reach it like every other node.
        publish(rig.mqtt_port, device_readings(devices, 60, 64), client_id="after")
        wait_until(lambda: all_committed(rig, devices, 64), 180, "new readings on all four")
        assert len(same_blocks(rig)) >= rig.heights()["node-4"] - 2
    finally:
        rig.stop()
    for node in rig.nodes.values():
        result = verify_node(node.data)
        assert result.returncode == 0, result.stdout + result.stderr
