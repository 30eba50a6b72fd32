"""A whole consortium on one machine, for tests and the benchmark (not for production).

`start_rig(folder, nodes=4, devices=...)` starts, on free loopback ports under `folder`:
an etcd cluster (trustfleet.etcd_cluster, 3 members by default), a Mosquitto broker
(plaintext: the consortium is what is exercised here; `trustfleet up --nodes` runs TLS), a
SoftHSM rig with one token per node, a software fleet CA (ledger_node.softpki) that issues the
node certificates (role node) and enrols the devices, and N ledger node processes with
`ordering = "etcd"`, each with its own data folder, token, config file, node set file and
peers file (auditor tokens of the others, for block sync). Nodes can be stopped, killed,
frozen and restarted one by one; `stop()` ends everything.

For the tests that drive it: `device_readings` and `publish` send readings,
`committed_seqs` and `block_hashes` read a node's store, `verify_node` runs `trustfleet
verify` on a node's data folder, `wait_until` polls.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hsm import SoftHsmRig
from hsm.x509 import (
    build_certificate,
    build_name,
    der_to_pem,
    end_entity_extensions,
    key_identifier,
)
from ledger_node.auth import TokenBook, tokens_path, wall_clock_ms
from ledger_node.consortium.files import Peer, write_node_set, write_peers
from ledger_node.softpki import SoftwareFleetPKI, write_enrolment_file
from trustfleet.broker import start_broker
from trustfleet.etcd_cluster import EtcdCluster, start_etcd_cluster
from trustfleet.procs import free_port, stop_process, wait_for
from trustfleet.topics import up_topic

if TYPE_CHECKING:
    from ledger_node.bench_rig import SignedDevice

STAGGER_S = 0.5
"""Pause between starting two nodes (SoftHSM reads every token of a rig when it starts)."""


def node_certificate(pki: SoftwareFleetPKI, node: str, spki_der: bytes) -> bytes:
    """A node certificate (role node, CN = node id) from the software fleet CA."""
    return build_certificate(
        pki.ca_signer, serial=int.from_bytes(os.urandom(8), "big") | 1,
        issuer=build_name("Software Test Fleet CA"), subject=build_name(node),
        spki_der=spki_der, not_before_ms=pki.not_before, not_after_ms=pki.not_after,
        extensions=end_entity_extensions("node", spki_der,
                                         key_identifier(pki.ca_signer.public_key_der())))


@dataclass
class RigNode:
    node_id: str
    data: Path
    api_port: int
    config: Path
    log: Path
    rig_dir: Path
    token: str
    """An operator API token of this node."""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def db(self) -> Path:
        return self.data / "ledger.sqlite"

    def get(self, path: str, timeout: float = 10) -> Any:
        req = urllib.request.Request(self.api + path,
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trustfleet.cli", "node", "run", "--config",
                 str(self.config), "--rig", str(self.rig_dir)],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 120) -> None:
        """Wait until the node serves its API and is connected to the broker. A node that
        exits at once on a PKCS#11 GeneralError is started once more: SoftHSM reads every
        token of the rig at start, and can trip over another node's token being written."""
        for attempt in (1, 2):
            try:
                wait_for(lambda: bool(self.get("/v1/node/status", timeout=2)
                                      ["broker_connected"]),
                         timeout, f"ledger node {self.node_id}", interval=0.2, proc=self.proc,
                         log_file=self.log)
                return
            except RuntimeError as exc:
                if attempt == 2 or "GeneralError" not in str(exc):
                    raise
                self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
        return stop_process(self.proc, timeout=timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            if sig == signal.SIGKILL:
                self.proc.wait(timeout=30)

    def status(self) -> dict[str, Any]:
        return dict(self.get("/v1/node/status"))


@dataclass
class ConsortiumRig:
    folder: Path
    etcd: EtcdCluster
    broker: subprocess.Popen[bytes]
    mqtt_port: int
    pki: SoftwareFleetPKI
    nodes: dict[str, RigNode] = field(default_factory=dict)

    def stop(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.stop()
        stop_process(self.broker)
        self.etcd.stop()

    def heights(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n, node in self.nodes.items():
            try:
                out[n] = int(node.status()["height"])
            except (OSError, ValueError, KeyError):
                out[n] = -2
        return out


def start_rig(folder: Path, nodes: int = 4, devices: Mapping[str, bytes] | None = None, *,
              fleet: str = "test", etcd_members: int = 3, start: int | None = None,
              settings: Mapping[str, object] | None = None,
              per_node: Mapping[str, Mapping[str, object]] | None = None,
              etcd_quota_bytes: int | None = None) -> ConsortiumRig:
    """Start the rig (see the module doc). `start`: how many nodes to start now (default all;
    the others are prepared, to start later). `settings` go into every node's [node] table,
    `per_node` into one node's. `devices`: device id -> SPKI DER, enrolled by the first node."""
    folder.mkdir(parents=True, exist_ok=True)
    pki = SoftwareFleetPKI()
    etcd_kwargs: dict[str, Any] = {}
    if etcd_quota_bytes is not None:
        etcd_kwargs["quota_bytes"] = etcd_quota_bytes
    cluster = start_etcd_cluster(folder / "etcd", etcd_members, **etcd_kwargs)
    mqtt_port = free_port()
    try:
        broker = start_broker(folder / "broker", mqtt_port, folder / "broker" / "mosquitto.log")
    except BaseException:
        cluster.stop()
        raise
    rig = ConsortiumRig(folder, cluster, broker, mqtt_port, pki)
    try:
        _prepare_nodes(rig, nodes, devices or {}, fleet, settings or {}, per_node or {})
        ids = sorted(rig.nodes)
        for n in ids[:nodes if start is None else start]:
            rig.nodes[n].start()
            time.sleep(STAGGER_S)
        for n in ids[:nodes if start is None else start]:
            rig.nodes[n].wait_ready()
    except BaseException:
        rig.stop()
        raise
    return rig


def _prepare_nodes(rig: ConsortiumRig, n: int, devices: Mapping[str, bytes], fleet: str,
                   settings: Mapping[str, object],
                   per_node: Mapping[str, Mapping[str, object]]) -> None:
    folder = rig.folder
    hsm = SoftHsmRig(folder / "hsm")
    ids = [f"node-{i}" for i in range(1, n + 1)]
    hsm.ensure_tokens(ids)
    certs = {node: node_certificate(rig.pki, node, hsm.public_key_der(node)) for node in ids}
    node_set = write_node_set(folder / "node-set.json", certs)
    ca = folder / "ca.pem"
    ca.write_text(der_to_pem(rig.pki.ca_cert))
    enroll = write_enrolment_file(folder / "enroll.json", [
        rig.pki.enrol_entry(d, fleet, k) for d, k in devices.items()])
    ports = {node: free_port() for node in ids}
    peer_tokens: dict[str, str] = {}
    for node in ids:
        data = folder / node
        data.mkdir(parents=True, exist_ok=True)
        book = TokenBook(tokens_path(data / "ledger.sqlite"))
        peer_tokens[node] = book.create("consortium-peers", "auditor", None,
                                        now_ms=wall_clock_ms())
        token = book.create("rig-operator", "operator", None, now_ms=wall_clock_ms())
        peers = write_peers(data / "peers.json", [
            Peer(p, f"http://127.0.0.1:{ports[p]}", None) for p in ids if p != node])
        values: dict[str, object] = {
            "data_dir": str(data), "node_id": node, "token_label": node,
            "broker_port": rig.mqtt_port, "api_port": ports[node], "ordering": "etcd",
            "etcd_endpoints": rig.etcd.endpoints_arg, "node_set_file": str(node_set),
            "peers_file": str(peers), "fleet_ca": str(ca), "verify_workers": 0,
            "block_interval_ms": 100, "heartbeat_ms": 5000,
            **({"enroll_file": str(enroll)} if node == ids[0] and devices else {}),
            **settings, **per_node.get(node, {})}
        config = data / "node.toml"
        config.write_text("[node]\n" + "".join(f"{k} = {_toml(v)}\n"
                                               for k, v in values.items()))
        rig.nodes[node] = RigNode(node, data, ports[node], config, data / "node.log",
                                  folder / "hsm", token)
    for node in ids:  # now every node's auditor token is known: the peers files get them
        write_peers(folder / node / "peers.json", [
            Peer(p, f"http://127.0.0.1:{ports[p]}", peer_tokens[p]) for p in ids if p != node])


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.5) -> None:
    """Poll `check()` until true (exceptions count as false); TimeoutError names `what`."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # a node restarting, a file being written
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what}: not true after {timeout:.0f} s" + (f" ({last})" if last
                                                                   else ""))


def publish(port: int, items: list[tuple[str, bytes]], client_id: str = "rig-publisher",
            timeout: float = 120) -> None:
    """Publish (topic, payload) pairs with QoS 1, each its own message; wait for the acks."""
    from ledger_node.bench_rig import RawPublisher

    pub = RawPublisher(port, client_id)
    try:
        pub.send([pub.packet(topic, payload) for topic, payload in items], timeout=timeout)
        pub.wait_acked(timeout)
    finally:
        pub.close()


def device_readings(devices: Sequence[SignedDevice], first: int, last: int,
                    fleet: str = "test") -> list[tuple[str, bytes]]:
    """(topic, envelope) of readings first..last-1 (0-based) of every device, devices
    interleaved as a fleet's, for `publish`."""
    return [(up_topic(fleet, d.dev), d.readings[s]) for s in range(first, last) for d in devices]


def verify_node(data: Path) -> subprocess.CompletedProcess[str]:
    """`trustfleet verify -q` on a node's data folder, its output captured."""
    return subprocess.run([sys.executable, "-m", "trustfleet.cli", "verify", "--data",
                           str(data), "-q"], capture_output=True, text=True, timeout=300)


def committed_seqs(db: Path) -> dict[str, set[int]]:
    """Every (device -> seqs) in a node's readings table (read-only)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        out: dict[str, set[int]] = {}
        for dev, seq in conn.execute("SELECT dev, seq FROM readings"):
            out.setdefault(dev, set()).add(int(seq))
        return out
    finally:
        conn.close()


def block_hashes(db: Path) -> list[bytes]:
    """Block hashes by height of a node's store (read-only)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return [bytes(r[0]) for r in conn.execute("SELECT hash FROM blocks ORDER BY height")]
    finally:
        conn.close()
