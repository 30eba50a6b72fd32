"""Bad command-line input: a clear message and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.fleet import cli


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTFLEET_")}
    full_env.update(env or {})
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=60, check=False,
                          env=full_env, stdin=subprocess.DEVNULL)


def test_help_lists_every_command() -> None:
    out = run("--help")
    assert out.returncode == 0
    for command in ("up", "node", "verify", "agent", "hsm", "shim"):
        assert command in out.stdout


@pytest.mark.parametrize("args, message", [
    (("up", "--trucks", "0"), "--trucks must be between 1 and 200"),
    (("up", "--trucks", "many"), "invalid int value"),
    (("frobnicate",), "invalid choice"),
    (("verify",), "the following arguments are required: --data"),
])
def test_bad_arguments_exit_non_zero_with_a_message(args: tuple[str, ...], message: str,
                                                     tmp_path: Path) -> None:
    out = run(*args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_node_without_a_pin_source_names_the_variable(tmp_path: Path) -> None:
    out = run("node", "run", "--data", str(tmp_path / "n"))
    assert out.returncode == 2
    assert "TRUSTFLEET_NODE_PIN" in out.stderr and "Traceback" not in out.stderr


def test_agent_with_a_missing_config_file_says_so(tmp_path: Path) -> None:
    out = run("agent", "run", "--config", str(tmp_path / "nope.toml"))
    assert out.returncode == 2
    assert "nope.toml: cannot read" in out.stderr


def test_agent_with_an_unknown_token_says_which(tmp_path: Path, device_rig: object) -> None:
    out = run("agent", "run", "--device-id", "no-such-truck", "--gps-port", "/dev/null",
              "--rig", str(device_rig.directory), "--data", str(tmp_path))  # type: ignore[attr-defined]
    assert out.returncode == 2
    assert "no-such-truck" in out.stderr and "Traceback" not in out.stderr
