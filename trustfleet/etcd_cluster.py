"""A local etcd cluster of our own: N members on loopback ports, one data folder each.

For `trustfleet up --nodes N` and the consortium tests. etcd (Debian `etcd-server`, 3.4) is
the ordering service of a consortium (docs/consortium.md): its Raft log orders the batches
every ledger node applies. On several machines you run etcd the usual way (one member per
machine, or an existing cluster) and give the nodes its client URLs; this module only starts
members on 127.0.0.1 for one machine.

    cluster = start_etcd_cluster(Path("var/etcd"), members=3)
    cluster.endpoints          # ["http://127.0.0.1:PORT", ...] for the nodes' etcd_endpoints
    cluster.leader()           # the member that leads now (asked over the HTTP gateway)
    cluster.kill(member)       # SIGKILL (fault tests); cluster.start_member(member) restarts
    cluster.stop()             # SIGTERM every member, data kept

The members' ports are kept in `cluster.json` in the folder: a member's identity in the
cluster is its peer URL, so a restart must reuse them (start refuses if one is taken). The
storage quota (`--quota-backend-bytes`) and request limit (`--max-request-bytes`) are set
explicitly, since the ledger nodes size their proposals and compactions against them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from trustfleet.procs import free_port, stop_process, wait_for

ETCD_CANDIDATES: Final = ("etcd", "/usr/bin/etcd")
CLUSTER_FILE: Final = "cluster.json"
CLUSTER_TOKEN: Final = "trustfleet-consortium"
DEFAULT_QUOTA_BYTES: Final = 2 * 1024 * 1024 * 1024
"""etcd's own default storage quota (2 GiB); the nodes compact what every node has applied."""
DEFAULT_MAX_REQUEST_BYTES: Final = 4 * 1024 * 1024
"""Larger than etcd's 1.5 MiB default, so a node's proposals (at most etcd_max_batch_bytes,
1 MB by default) always fit with room to spare."""


class EtcdClusterError(RuntimeError):
    """The cluster could not be started: no etcd binary, a port taken, a member not healthy."""


def etcd_binary() -> str:
    for name in ETCD_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise EtcdClusterError("etcd not found: install it with `apt-get install etcd-server` "
                           "(scripts/bootstrap.sh does this for you)")


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class EtcdCluster:
    directory: Path
    members: list[EtcdMember]
    quota_bytes: int = DEFAULT_QUOTA_BYTES
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    election_ms: int = 2500
    heartbeat_ms: int = 250
    extra: list[str] = field(default_factory=list)

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def endpoints_arg(self) -> str:
        """The endpoints as one comma-separated string (a node's `etcd_endpoints`)."""
        return ",".join(self.endpoints)

    def _initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def argv(self, m: EtcdMember) -> list[str]:
        return [etcd_binary(), "--name", m.name, "--data-dir", str(m.data_dir),
                "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", self._initial_cluster(),
                "--initial-cluster-token", CLUSTER_TOKEN,
                "--initial-cluster-state", "new",
                "--quota-backend-bytes", str(self.quota_bytes),
                "--max-request-bytes", str(self.max_request_bytes),
                "--heartbeat-interval", str(self.heartbeat_ms),
                "--election-timeout", str(self.election_ms),
                "--logger", "zap", "--log-outputs", "stderr", *self.extra]

    def start_member(self, m: EtcdMember) -> None:
        """Start (or restart) one member; it rejoins with its data folder."""
        if m.running:
            return
        for port in (m.client_port, m.peer_port):
            if not _bindable(port):
                raise EtcdClusterError(f"etcd member {m.name}: port {port} is taken")
        m.data_dir.parent.mkdir(parents=True, exist_ok=True)
        m.log.parent.mkdir(parents=True, exist_ok=True)
        with m.log.open("ab") as fh:
            m.proc = subprocess.Popen(self.argv(m), stdout=fh, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_healthy(self, timeout: float = 60.0, members: list[EtcdMember] | None = None
                     ) -> None:
        """Wait until every (given) member answers /health with a leader elected."""
        for m in members or self.members:
            wait_for(lambda m=m: _healthy(m), timeout, f"etcd member {m.name}",  # type: ignore[misc]
                     interval=0.2, proc=m.proc, log_file=m.log)

    def kill(self, m: EtcdMember, sig: int = signal.SIGKILL) -> None:
        if m.proc is not None and m.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(m.proc.pid, sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                m.proc.wait(timeout=30)

    def status(self, m: EtcdMember) -> dict[str, Any] | None:
        """A member's maintenance status (None if it does not answer)."""
        try:
            return _post(m.client_url, "/v3/maintenance/status", {})
        except (OSError, ValueError):
            return None

    def leader(self) -> EtcdMember | None:
        """The member that is the Raft leader now, as the running members report it."""
        ids: dict[str, EtcdMember] = {}
        leader_id = None
        for m in self.members:
            if not m.running:
                continue
            st = self.status(m)
            if st is None:
                continue
            ids[str(st.get("header", {}).get("member_id"))] = m
            leader_id = str(st.get("leader")) if st.get("leader") else leader_id
        return ids.get(leader_id) if leader_id else None

    def stop(self) -> None:
        for m in self.members:
            if m.proc is not None:
                stop_process(m.proc, timeout=15)


def start_etcd_cluster(directory: Path, members: int = 3, *,
                       quota_bytes: int = DEFAULT_QUOTA_BYTES,
                       max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                       timeout: float = 60.0) -> EtcdCluster:
    """Start (or resume) an N-member cluster in `directory` and wait until it is healthy.

    Ports come from `directory/cluster.json` when it exists (a resumed cluster must keep its
    peer URLs), else free ones are picked and written there."""
    if not 1 <= members <= 7:
        raise EtcdClusterError("an etcd cluster here has 1 to 7 members")
    directory.mkdir(parents=True, exist_ok=True)
    saved = _load_ports(directory / CLUSTER_FILE)
    if saved is not None and len(saved) != members:
        raise EtcdClusterError(f"{directory / CLUSTER_FILE} describes {len(saved)} members, "
                               f"not {members}: remove the folder to start a new cluster")
    taken: set[int] = set()
    specs: list[tuple[int, int]] = []
    for i in range(members):
        if saved is not None:
            specs.append(saved[i])
            continue
        client = _new_port(taken)
        peer = _new_port(taken)
        specs.append((client, peer))
    cluster = EtcdCluster(directory, [
        EtcdMember(f"etcd-{i + 1}", client, peer, directory / f"etcd-{i + 1}",
                   directory / f"etcd-{i + 1}.log") for i, (client, peer) in enumerate(specs)],
        quota_bytes=quota_bytes, max_request_bytes=max_request_bytes)
    (directory / CLUSTER_FILE).write_text(json.dumps(
        [{"name": m.name, "client": m.client_port, "peer": m.peer_port}
         for m in cluster.members]))
    try:
        for m in cluster.members:
            cluster.start_member(m)
        cluster.wait_healthy(timeout)
    except (EtcdClusterError, RuntimeError, TimeoutError):
        cluster.stop()
        raise
    return cluster


def _bindable(port: int) -> bool:
    """True if a listener could bind `port` now (as etcd does: with SO_REUSEADDR, so that
    connections of a killed member in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _new_port(taken: set[int]) -> int:
    while True:
        port = free_port()
        if port not in taken:
            taken.add(port)
            return port


def _load_ports(path: Path) -> list[tuple[int, int]] | None:
    try:
        doc = json.loads(path.read_text())
        return [(int(m["client"]), int(m["peer"])) for m in doc]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EtcdClusterError(f"{path} is unreadable ({exc}): remove the folder to start a "
                               "new cluster") from None


def _post(base: str, path: str, body: dict[str, Any], timeout: float = 2.0) -> Any:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _healthy(m: EtcdMember) -> bool:
    with urllib.request.urlopen(m.client_url + "/health", timeout=2) as resp:
        return json.loads(resp.read()).get("health") == "true"
