"""`trustfleet up`: a whole fleet on one machine, on the embedded defaults.

Starts and supervises, all under one data folder (default ./var):
  broker/        Mosquitto on a free loopback port, persistence on; MQTT over TLS with client
                 certificates and a default-deny ACL (trustfleet.broker), or plaintext with
                 --no-tls; broker/tls/ holds its server certificate and key
  hsm/           a SoftHSM2 rig: one token per truck and one for the node, keys made inside
  node-1/        one ledger node (solo ordering, SQLite), API and dashboard on localhost;
                 node-1/tls/ its TLS client certificate and key
  trucks/NAME/   per truck: a firmware shim (NMEA pty + 1-wire tree; with --scenario also an
                 RFID reader pty and a door GPIO line playing the trip) and an edge agent;
                 trucks/NAME/tls/ its TLS client certificate and key, agent.toml their paths
  logs/          one log file per process
  tokens/        API tokens (operator, auditor, two partners), made once, mode 0600
With --nodes N (N > 1) it starts a local consortium instead of one node (docs/consortium.md):
  etcd/          a 3-member etcd cluster on loopback (trustfleet.etcd_cluster) that orders
                 the batches of every node
  node-1..N/     N ledger nodes with `ordering = "etcd"` (node.toml), each with its own data
                 folder, HSM token and TLS files; they split ingest through the broker's shared
                 subscription, apply every batch, and sign each block: final with a quorum
  node-set.json  the node certificates (role node) the genesis entry names; each node's
                 peers.json has auditor tokens of the others, for catching up (block sync)
The dashboard and the demo tokens are node-1's.
On the first run it also submits demo contracts and one shipment per truck as operator
entries (trustfleet.demo_business).
TLS keys are files (mode 0600), separate from the signing keys in the tokens: Python's ssl
module cannot use a PKCS#11 key (hsm.tlsfiles, docs/tls.md).
Ports are remembered in ports.json and reused when free. Ctrl-C or SIGTERM stops everything
in order (agents first, so their outboxes are flushed) and leaves the data on disk; running
`trustfleet up` again resumes the same chain.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from hsm.tlsfiles import TlsFiles
from trustfleet.broker import BrokerTls, broker_url, start_broker
from trustfleet.etcd_cluster import EtcdCluster
from trustfleet.procs import free_port, stop_process, wait_for

FLEET = "demo"
NODE_ID = "node-1"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser(
        "up", help="start a local fleet: broker, SoftHSM rig, ledger node, emulated trucks",
        description="Start and supervise a whole TrustFleet on this machine until Ctrl-C or "
                    "SIGTERM. Data stays in --data; running again resumes the same chain.")
    up.add_argument("--data", type=Path, default=Path("var"), help="data folder (./var)")
    up.add_argument("--trucks", type=int, default=5, help="number of emulated trucks (5)")
    up.add_argument("--nodes", type=int, default=1,
                    help="ledger nodes (1: solo ordering; 2-7: a consortium ordered by a "
                         "3-member etcd cluster on loopback)")
    up.add_argument("--api-port", type=int, default=8080, help="API/dashboard port if free (8080)")
    up.add_argument("--mqtt-port", type=int, default=1883, help="broker port if free (1883)")
    up.add_argument("--duration", type=float, default=None,
                    help="stop by itself after this many seconds (default: run until stopped)")
    up.add_argument("--gps-interval", type=float, default=1.0,
                    help="seconds between GPS readings per truck (1.0)")
    up.add_argument("--no-tls", dest="tls", action="store_false",
                    help="plain MQTT without TLS, client certificates or ACL (default: TLS)")
    up.add_argument("--scenario", type=Path, default=None,
                    help="trip scenario (YAML) every truck plays: temperature excursions, "
                         "door openings, RFID scans (e.g. firmware_shims/scenarios/*.yaml)")
    up.set_defaults(func=run_up)


@dataclass
class Child:
    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(self.argv, stdout=fh, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.started_at = time.monotonic()


@dataclass
class Fleet:
    data: Path
    trucks: int
    api_port: int
    mqtt_port: int
    gps_interval: float
    scenario: Path | None = None
    tls: bool = True
    broker: subprocess.Popen[bytes] | None = None
    broker_tls: BrokerTls | None = None
    tls_files: dict[str, TlsFiles] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)
    """API tokens by name (trustfleet.demo_business)."""
    nodes: int = 1
    etcd: EtcdCluster | None = None
    node_ports: dict[str, int] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def mqtt_url(self) -> str:
        return broker_url("127.0.0.1", self.mqtt_port, self.tls)

    def truck_names(self) -> list[str]:
        return [f"truck-{i}" for i in range(1, self.trucks + 1)]

    def node_names(self) -> list[str]:
        return node_names(self.nodes)


def node_names(n: int) -> list[str]:
    return [NODE_ID] if n <= 1 else [f"node-{i}" for i in range(1, n + 1)]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "trustfleet.cli", *args]


def _ports(data: Path, api: int, mqtt: int) -> tuple[int, int]:
    path = data / "ports.json"
    saved: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads(path.read_text())
    mqtt_port = free_port(saved.get("mqtt", mqtt))
    api_port = free_port(saved.get("api", api))
    path.write_text(json.dumps({"mqtt": mqtt_port, "api": api_port}))
    return api_port, mqtt_port


OPERATOR = "operator"


def prepare_rig(data: Path, trucks: list[str], nodes: list[str] | None = None) -> Path:
    """The SoftHSM rig (idempotent): a token per truck, one for the node, one for the fleet
    CA and one for the operator, each with its key made inside; certificates from the fleet
    CA; and the enrolment file: one operator-signed entry per truck. Returns its path."""
    import os

    from hsm import SoftHsmRig, ensure_ca, ensure_certificates, open_signer
    from ledger_node.admin import DEVICE_ENROLLED, build_operator_entry
    from ledger_node.softpki import write_enrolment_file

    nodes = nodes or [NODE_ID]
    rig = SoftHsmRig(data / "hsm")
    for label in [*trucks, *nodes, OPERATOR]:
        rig.ensure_token(label)
    ensure_ca(rig, name="TrustFleet Demo Fleet CA")
    certs = ensure_certificates(rig, {**{t: "device" for t in trucks},
                                      **{n: "node" for n in nodes}, OPERATOR: "operator"})
    if len(nodes) > 1:
        from ledger_node.consortium.files import write_node_set

        write_node_set(data / "node-set.json", {n: certs[n] for n in nodes})
    enroll = data / "enroll.json"
    if enroll.exists() and _enrols(enroll, trucks):
        return enroll
    os.environ.update(rig.env())  # this process signs with the operator token, nothing else
    signer = open_signer(rig, OPERATOR)
    try:
        now = time.time_ns() // 1_000_000
        entries = [build_operator_entry({"type": DEVICE_ENROLLED, "dev": t, "fleet": FLEET,
                                         "cert": certs[t], "t": now}, signer, certs[OPERATOR])
                   for t in trucks]
    finally:
        signer.close()
    return write_enrolment_file(enroll, entries)


def prepare_tls(data: Path, trucks: list[str], nodes: list[str] | None = None
                ) -> tuple[BrokerTls, dict[str, TlsFiles]]:
    """TLS keys (files, mode 0600) and fleet-CA certificates for the broker (role broker,
    for localhost / 127.0.0.1), each truck (role device) and the node (role node), made or
    kept (idempotent: hsm.tlsfiles); and the broker's TLS settings with its ACL."""
    from hsm import SoftHsmRig
    from hsm.tlsfiles import TlsIdentity, broker_identity, ensure_tls_files

    nodes = nodes or [NODE_ID]
    rig = SoftHsmRig(data / "hsm")
    identities = [broker_identity(data / "broker" / "tls"),
                  *(TlsIdentity(n, "node", data / n / "tls") for n in nodes),
                  *(TlsIdentity(t, "device", data / "trucks" / t / "tls") for t in trucks)]
    files = ensure_tls_files(rig, identities)
    own = files[identities[0].subject_id]
    broker = BrokerTls(own.ca, own.cert, own.key, devices={FLEET: tuple(trucks)},
                       nodes=tuple(nodes))
    return broker, files


def _agent_tls_config(truck_dir: Path, files: TlsFiles) -> Path:
    """An [agent] table naming the truck's TLS files, for `trustfleet agent run --config`."""
    path = truck_dir / "agent.toml"
    truck_dir.mkdir(parents=True, exist_ok=True)
    path.write_text("# generated by trustfleet up; the other settings come from its flags\n"
                    "[agent]\n"
                    f"tls_ca = {json.dumps(str(files.ca))}\n"
                    f"tls_cert = {json.dumps(str(files.cert))}\n"
                    f"tls_key = {json.dumps(str(files.key))}\n")
    return path


def _enrols(path: Path, trucks: list[str]) -> bool:
    """True if the enrolment file already holds an entry for each truck."""
    from ledger_node.admin import decode_operator_entry_unchecked

    try:
        doc = json.loads(path.read_text())
        devs = {decode_operator_entry_unchecked(base64.b64decode(e)).get("dev")
                for e in doc["entries"]}
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return set(trucks) <= devs


def _get(url: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as resp:
        return json.loads(resp.read())


def start_fleet(fleet: Fleet) -> None:
    data = fleet.data
    logs = data / "logs"
    names = fleet.truck_names()
    print(f"trustfleet: preparing SoftHSM rig: {len(names)} truck tokens, node, fleet CA and "
          f"operator tokens, certificates and operator-signed enrolments "
          f"in {data / 'hsm'}", flush=True)
    enroll = prepare_rig(data, names, fleet.node_names())
    if fleet.tls:
        print("trustfleet: TLS: broker, node and truck certificates from the fleet CA "
              "(keys in files, mode 0600)", flush=True)
        fleet.broker_tls, fleet.tls_files = prepare_tls(data, names, fleet.node_names())
    fleet.broker = start_broker(data / "broker", fleet.mqtt_port, logs / "mosquitto.log",
                                tls=fleet.broker_tls)
    print(f"trustfleet: broker at {fleet.mqtt_url}", flush=True)
    configs: dict[str, list[str]] = {}
    if fleet.nodes > 1:
        configs = _start_consortium(fleet)
    for node_id in fleet.node_names():
        node_tls: list[str] = []
        if fleet.tls:
            own = fleet.tls_files[node_id]
            node_tls = ["--tls-ca", str(own.ca), "--tls-cert", str(own.cert), "--tls-key",
                        str(own.key)]
        port = fleet.node_ports.get(node_id, fleet.api_port)
        node = Child(node_id, _cli("node", "run", *configs.get(node_id, []), "--data",
                                   str(data / node_id), "--node-id", node_id, "--rig",
                                   str(data / "hsm"), "--token", node_id, "--enroll",
                                   str(enroll), "--fleet-ca", str(data / "hsm" / "ca.pem"),
                                   "--broker-port", str(fleet.mqtt_port), "--api-port",
                                   str(port), *node_tls), logs / f"{node_id}.log")
        node.start()
        fleet.children.append(node)
        if fleet.nodes > 1:
            time.sleep(0.5)  # SoftHSM reads every token of the rig when a node starts
    for child in [c for c in fleet.children if c.name in fleet.node_names()]:
        port = fleet.node_ports.get(child.name, fleet.api_port)
        wait_for(lambda port=port: bool(_get(f"http://127.0.0.1:{port}/healthz")),  # type: ignore[misc]
                 120, f"ledger node {child.name} API", proc=child.proc, log_file=child.log)
    from trustfleet.demo_business import CONTRACTS, ensure_tokens, submit_demo_business

    fleet.tokens = ensure_tokens(data, data / fleet.node_names()[0] / "ledger.sqlite")
    taken = submit_demo_business(data, fleet.api, names, OPERATOR)
    if taken:
        print(f"trustfleet: demo shipments SHP-1..SHP-{len(names)} with contracts "
              f"{', '.join(CONTRACTS)} ({taken} operator entries on the ledger)", flush=True)
    for i, name in enumerate(names, start=1):
        truck_dir = data / "trucks" / name
        scenario = ["--scenario", str(fleet.scenario)] if fleet.scenario else []
        shim = Child(f"{name}-shim", _cli("shim", "truck", "--dir", str(truck_dir), "--index",
                                          str(i), *scenario), logs / f"{name}-shim.log")
        shim.start()
        fleet.children.append(shim)
        wait_for(lambda d=truck_dir: (d / "gps.tty").exists(), 20, f"{name} GPS pty",  # type: ignore[misc]
                 proc=shim.proc, log_file=shim.log)
        config = (["--config", str(_agent_tls_config(truck_dir, fleet.tls_files[name]))]
                  if fleet.tls else [])
        agent = Child(name, _cli("agent", "run", *config, "--device-id", name, "--fleet", FLEET,
                                 "--data", str(truck_dir), "--gps-port",
                                 str(truck_dir / "gps.tty"), "--w1-dir", str(truck_dir / "w1"),
                                 "--rig", str(data / "hsm"), "--broker-port",
                                 str(fleet.mqtt_port), *_scenario_sensors(fleet, truck_dir)),
                      logs / f"{name}.log")
        agent.start()
        fleet.children.append(agent)


def _start_consortium(fleet: Fleet) -> dict[str, list[str]]:
    """The etcd cluster, and each node's config (ordering, etcd, node set, peers): returns the
    extra `node run` arguments per node. API ports: node-1 gets --api-port, the others free
    ports kept in ports.json; peers files hold auditor tokens (made once) of the others."""
    from ledger_node.auth import TokenBook, tokens_path, wall_clock_ms
    from ledger_node.consortium.files import Peer, read_peers, write_peers
    from trustfleet.etcd_cluster import start_etcd_cluster

    data = fleet.data
    names = fleet.node_names()
    fleet.etcd = start_etcd_cluster(data / "etcd", 3)
    print(f"trustfleet: etcd cluster of 3 members at {fleet.etcd.endpoints_arg}", flush=True)
    saved: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads((data / "ports.json").read_text())
    ports = {NODE_ID: fleet.api_port, **{n: free_port(saved.get(f"api-{n}")) for n in names
                                         if n != NODE_ID}}
    saved.update({f"api-{n}": p for n, p in ports.items() if n != NODE_ID})
    (data / "ports.json").write_text(json.dumps(saved))
    fleet.node_ports = ports
    tokens: dict[str, str] = {}
    for n in names:
        token_file = data / n / "peer-sync.token"
        if token_file.exists():
            tokens[n] = token_file.read_text().strip()
            continue
        (data / n).mkdir(parents=True, exist_ok=True)
        tokens[n] = TokenBook(tokens_path(data / n / "ledger.sqlite")).create(
            "consortium-peers", "auditor", None, now_ms=wall_clock_ms())
        token_file.write_text(tokens[n] + "\n")
        token_file.chmod(0o600)
    out: dict[str, list[str]] = {}
    for n in names:
        peers = write_peers(data / n / "peers.json", [
            Peer(p, f"http://127.0.0.1:{ports[p]}", tokens[p]) for p in names if p != n])
        read_peers(peers)  # what the node will read: fail here, not in the node
        config = data / n / "node.toml"
        config.write_text("# generated by trustfleet up --nodes; docs/consortium.md\n[node]\n"
                          'ordering = "etcd"\n'
                          f"etcd_endpoints = {json.dumps(fleet.etcd.endpoints_arg)}\n"
                          f"node_set_file = {json.dumps(str(data / 'node-set.json'))}\n"
                          f"peers_file = {json.dumps(str(peers))}\n"
                          "verify_workers = 1\n")
        out[n] = ["--config", str(config)]
    print(f"trustfleet: {len(names)} ledger nodes ({', '.join(names)}), APIs on ports "
          f"{', '.join(str(ports[n]) for n in names)}", flush=True)
    return out


def _scenario_sensors(fleet: Fleet, truck_dir: Path) -> list[str]:
    """The extra devices a scenario's shim provides: an RFID reader and a door contact."""
    if fleet.scenario is None:
        return []
    return ["--rfid-port", str(truck_dir / "rfid.tty"), "--door-gpio",
            str(truck_dir / "gpio" / "gpio17" / "value")]


def stop_fleet(fleet: Fleet) -> None:
    # Agents first (they seal what they hold), then shims, then the node, then the broker.
    order = ([c for c in fleet.children if c.name.startswith("truck") and "shim" not in c.name]
             + [c for c in fleet.children if c.name.endswith("-shim")]
             + [c for c in fleet.children if c.name in fleet.node_names()])
    for child in order:
        if child.proc is not None:
            code = stop_process(child.proc, timeout=15)
            if code not in (0, -signal.SIGTERM):
                print(f"trustfleet: {child.name} exited with {code} (log: {child.log})",
                      flush=True)
    if fleet.broker is not None:
        stop_process(fleet.broker)
    if fleet.etcd is not None:
        fleet.etcd.stop()


def supervise(fleet: Fleet) -> None:
    """Restart a child that died, with a growing pause so a crash loop does not spin."""
    for child in fleet.children:
        if child.proc is not None and child.proc.poll() is not None:
            pause = min(30.0, 2.0 ** child.restarts)
            if time.monotonic() - child.started_at < pause:
                continue
            child.restarts += 1
            print(f"\ntrustfleet: {child.name} exited with {child.proc.returncode}; restarting "
                  f"(restart {child.restarts}, log: {child.log})", flush=True)
            child.start()
    if fleet.etcd is not None:
        for member in fleet.etcd.members:
            if not member.running:
                print(f"\ntrustfleet: etcd member {member.name} exited; restarting it",
                      flush=True)
                fleet.etcd.start_member(member)
    if fleet.broker is not None and fleet.broker.poll() is not None:
        print("\ntrustfleet: mosquitto exited; restarting it", flush=True)
        fleet.broker = start_broker(fleet.data / "broker", fleet.mqtt_port,
                                    fleet.data / "logs" / "mosquitto.log", tls=fleet.broker_tls)


def status_line(fleet: Fleet) -> str:
    try:
        st = _get(f"{fleet.api}/v1/node/status", fleet.tokens.get("operator"))
    except (OSError, ValueError):
        return "node API not answering"
    rejected = sum(st.get("rejected", {}).values())
    line = (f"height {st['height']} | {st['size']} entries | {st['accepted']} readings this run "
            f"| {st['readings_per_s']:.1f} readings/s | {st['devices']} devices | "
            f"quarantined {rejected}")
    consortium = st.get("consortium")
    if consortium:
        line += (f" | final {consortium.get('final_height')} | nodes "
                 f"{len(consortium.get('peers', {}))}/{len(consortium.get('node_set', []))}")
    return line


def run_up(args: argparse.Namespace) -> int:
    data: Path = args.data.resolve()
    data.mkdir(parents=True, exist_ok=True)
    if not 1 <= args.trucks <= 200:
        print("trustfleet up: --trucks must be between 1 and 200", file=sys.stderr)
        return 2
    if not 1 <= args.nodes <= 7:
        print("trustfleet up: --nodes must be between 1 and 7", file=sys.stderr)
        return 2
    scenario = args.scenario.resolve() if args.scenario else None
    if scenario is not None:
        from firmware_shims.scenario import load_scenario

        try:
            load_scenario(scenario)
        except ValueError as exc:
            print(f"trustfleet up: {exc}", file=sys.stderr)
            return 2
    api_port, mqtt_port = _ports(data, args.api_port, args.mqtt_port)
    fleet = Fleet(data, args.trucks, api_port, mqtt_port, args.gps_interval, scenario,
                  tls=args.tls, nodes=args.nodes)
    stopping = {"flag": False}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        start_fleet(fleet)
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"trustfleet up: could not start: {exc}", file=sys.stderr)
        stop_fleet(fleet)
        return 1
    print(f"trustfleet: dashboard {fleet.api}/   API {fleet.api}/v1   docs {fleet.api}/docs",
          flush=True)
    print(f"trustfleet: MQTT broker {fleet.mqtt_url}   data {data}   logs {data / 'logs'}",
          flush=True)
    if fleet.tokens:
        print(f"trustfleet: dashboard login (operator token): {fleet.tokens['operator']}\n"
              f"trustfleet: partner and auditor tokens are in {data / 'tokens'}", flush=True)
    print("trustfleet: running; Ctrl-C or SIGTERM stops everything and keeps the data",
          flush=True)
    started = time.monotonic()
    tty = sys.stdout.isatty()
    last_print = 0.0
    while not stopping["flag"]:
        if args.duration is not None and time.monotonic() - started >= args.duration:
            break
        time.sleep(0.5)
        supervise(fleet)
        now = time.monotonic()
        if tty and now - last_print >= 1:
            print(f"\r{status_line(fleet):<100}", end="", flush=True)
            last_print = now
        elif not tty and now - last_print >= 10:
            print(status_line(fleet), flush=True)
            last_print = now
    final = status_line(fleet)
    print(f"\ntrustfleet: stopping ({final})", flush=True)
    stop_fleet(fleet)
    print(f"trustfleet: stopped; data kept in {data}", flush=True)
    return 0
