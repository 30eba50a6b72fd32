"""Enrol, revoke and rotate devices with `trustfleet device`, with real SoftHSM tokens for the
fleet CA, the operator and the devices, a real node and real agents (issue 3)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from firmware_shims.w1_sysfs import W1SysfsShim
from tests.fleet import NodeProcess, cli, operator_token, spawn
from trustfleet.procs import free_port, stop_process, wait_for

pytestmark = pytest.mark.slow


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=120, check=False,
                          stdin=subprocess.DEVNULL)


def agent(tmp: Path, name: str, token: str, rig: Path, port: int, outbox: str | None = None
          ) -> subprocess.Popen[bytes]:
    """An agent for device `name` signing with token `token`; its outbox is the device's."""
    shim_dir = tmp / f"{name}-w1"
    shim = W1SysfsShim(shim_dir, index=1, count=1).create()
    for probe in shim.probes:
        shim.set_temperature(probe, 4.5)
    config = tmp / f"{token}.toml"
    config.write_text(f'[agent]\ndevice_id = "{name}"\nfleet = "test"\ntoken_label = "{token}"\n'
                      f'data_dir = "{tmp / (outbox or name)}"\nbroker_port = {port}\n'
                      f'w1_dir = "{shim_dir}"\ntemp_interval_s = 0.2\n')
    return spawn(cli("agent", "run", "--config", str(config), "--rig", str(rig)),
                 tmp / f"{token}.log")


def test_enrol_revoke_and_rotate_through_the_operator_cli(tmp_path: Path, broker: object
                                                          ) -> None:
    from hsm import SoftHsmRig, ensure_ca

    port = broker.port  # type: ignore[attr-defined]
    rig_dir = tmp_path / "rig"
    rig = SoftHsmRig(rig_dir)
    for label in ("node-1", "dev-x", "dev-x-r2", "dev-y", "operator"):
        rig.ensure_token(label)
    ensure_ca(rig)
    api = free_port()
    log = tmp_path / "node.log"
    proc = spawn(cli("node", "run", "--data", str(tmp_path / "node"), "--rig", str(rig_dir),
                     "--token", "node-1", "--fleet-ca", str(rig_dir / "ca.pem"),
                     "--broker-port", str(port), "--api-port", str(api),
                     "--block-interval-ms", "100"), log)
    node = NodeProcess(proc, tmp_path / "node", api, log, operator_token(tmp_path / "node"))
    agents: list[subprocess.Popen[bytes]] = []
    try:
        wait_for(lambda: node.get("/v1/node/status")["broker_connected"], 60, "node",
                 proc=proc, log_file=log)
        url = node.api
        # A device that is not enrolled is refused.
        agents.append(agent(tmp_path, "dev-y", "dev-y", rig_dir, port))
        wait_for(lambda: node.get("/v1/quarantine?reason=unknown_device")["items"], 60,
                 "dev-y refused as unknown", proc=proc, log_file=log)

        out = run("device", "enroll", "--rig", str(rig_dir), "--device", "dev-x", "--fleet",
                  "test", "--node", url)
        assert out.returncode == 0 and "accepted in block" in out.stdout, out.stdout + out.stderr
        again = run("device", "enroll", "--rig", str(rig_dir), "--device", "dev-x", "--fleet",
                    "test", "--node", url)
        assert again.returncode == 0 and "duplicate" in again.stdout, again.stdout
        token = str(node.token)
        listing = run("device", "list", "--node", url, "--token", token)
        assert "dev-x" in listing.stdout and "active" in listing.stdout

        old = agent(tmp_path, "dev-x", "dev-x", rig_dir, port)
        agents.append(old)
        wait_for(lambda: _seq(node, "dev-x") >= 5, 60, "dev-x readings", proc=proc,
                 log_file=log)

        # Rotation, as README describes it: quiet the sensors, let the outbox drain (every
        # reading receipted), stop the agent, rotate, start it on the new token.
        for probe in (tmp_path / "dev-x-w1").iterdir():
            (probe / "w1_slave").unlink()
        wait_for(lambda: _unreceipted(tmp_path / "dev-x") == 0, 60, "outbox drained",
                 proc=proc, log_file=log)
        stop_process(old)
        shutil.copytree(tmp_path / "dev-x", tmp_path / "dev-x-clone")  # a thief's copy
        out = run("device", "rotate", "--rig", str(rig_dir), "--device", "dev-x", "--token",
                  "dev-x-r2", "--node", url, "--api-token", token)
        assert out.returncode == 0 and "accepted" in out.stdout, out.stdout + out.stderr
        before = _seq(node, "dev-x")
        agents.append(agent(tmp_path, "dev-x", "dev-x-r2", rig_dir, port))
        wait_for(lambda: _seq(node, "dev-x") > before + 3, 60, "readings with the new key",
                 proc=proc, log_file=log)
        # The old key, still in a thief's hands, is refused from now on.
        agents.append(agent(tmp_path, "dev-x", "dev-x", rig_dir, port, outbox="dev-x-clone"))
        wait_for(lambda: node.get("/v1/quarantine?reason=rotated_key")["items"], 60,
                 "old-key readings refused as rotated_key", proc=proc, log_file=log)
        state = next(d for d in node.get("/v1/devices") if d["id"] == "dev-x")
        assert state["gaps"] == 0 and state["prev_mismatches"] == 0

        # Revocation: everything from dev-x after it is refused.
        out = run("device", "revoke", "--rig", str(rig_dir), "--device", "dev-x", "--reason",
                  "terminal stolen", "--node", url)
        assert out.returncode == 0 and "accepted" in out.stdout, out.stdout + out.stderr
        wait_for(lambda: node.get("/v1/quarantine?reason=revoked_device")["items"], 60,
                 "readings after revocation refused", proc=proc, log_file=log)
        assert "revoked" in run("device", "list", "--node", url, "--token", token).stdout

        # A rejected operator entry: rotating a revoked device.
        refused = run("device", "rotate", "--rig", str(rig_dir), "--device", "dev-x",
                      "--token", "dev-x", "--node", url, "--api-token", token)
        assert refused.returncode == 1 and "revoked_device" in refused.stdout, refused.stdout
    finally:
        for a in agents:
            stop_process(a)
        node.stop()
    check = run("verify", "--data", str(tmp_path / "node"))
    assert check.returncode == 0, check.stdout + check.stderr


def _unreceipted(outbox_dir: Path) -> int:
    import json

    out = run("agent", "status", "--data", str(outbox_dir))
    status = json.loads(out.stdout)
    return int(status["backlog"]) + int(status["unsealed"]) + int(status["in_flight"])


def _seq(node: NodeProcess, dev: str) -> int:
    for d in node.get("/v1/devices"):
        if d["id"] == dev:
            return int(d["last_seq"])
    return 0
