"""Helpers for tests that start real processes: broker, ledger node, shims, agents.

Everything runs on free loopback ports in temporary folders and is stopped by the fixture
that started it. Logs go to files next to the data, and are shown when a start fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustfleet.procs import free_port, stop_process, wait_for


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "trustfleet.cli", *args]


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env)


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def write_enrollments(path: Path, devices: dict[str, bytes], fleet: str = "test") -> Path:
    """Operator-signed enrolment entries for `devices` (id -> SPKI DER) at `path`, with the
    software fleet CA that issued their certificates beside it (`ca_path_for(path)`)."""
    from hsm.x509 import der_to_pem
    from ledger_node.softpki import SoftwareFleetPKI, write_enrolment_file

    pki = SoftwareFleetPKI()
    ca_path_for(path).write_text(der_to_pem(pki.ca_cert))
    return write_enrolment_file(path, [pki.enrol_entry(d, fleet, k) for d, k in devices.items()])


def ca_path_for(enroll: Path) -> Path:
    return enroll.with_suffix(".ca.pem")


@dataclass
class NodeProcess:
    proc: subprocess.Popen[bytes]
    data: Path
    api_port: int
    log: Path

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def get(self, path: str) -> Any:
        return http_json(self.api + path)

    def stop(self) -> int:
        return stop_process(self.proc, timeout=20)


def start_node(data: Path, rig_dir: Path, broker_port: int, enroll: Path,
               token: str = "node-1", block_interval_ms: int = 100) -> NodeProcess:
    api_port = free_port()
    log = data / "node.log"
    proc = spawn(cli("node", "run", "--data", str(data), "--rig", str(rig_dir), "--token", token,
                     "--enroll", str(enroll), "--fleet-ca", str(ca_path_for(enroll)),
                     "--broker-port", str(broker_port), "--api-port", str(api_port),
                     "--block-interval-ms", str(block_interval_ms)), log)
    node = NodeProcess(proc, data, api_port, log)
    wait_for(lambda: node.get("/v1/node/status")["broker_connected"], 60, "ledger node",
             proc=proc, log_file=log)
    return node


def truck_agent_toml(dev: str, data: Path, port: int, **extra: object) -> str:
    """An [agent] table for a shim-fed truck, tuned for quick tests (short resend and reconnect
    times); `extra` adds or overrides settings (strings are quoted)."""
    settings: dict[str, object] = {
        "device_id": dev, "fleet": "test", "data_dir": str(data), "broker_port": port,
        "gps_port": f"{data}/gps.tty", "w1_dir": f"{data}/w1", "gps_interval_s": 0.2,
        "temp_interval_s": 1.0, "resend_after_s": 2.0, "resend_max_s": 4.0,
        "reconnect_min_s": 0.2, "reconnect_max_s": 1.0, "status_interval_s": 3.0, **extra}
    lines = [f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in settings.items()]
    return "[agent]\n" + "\n".join(lines) + "\n"
