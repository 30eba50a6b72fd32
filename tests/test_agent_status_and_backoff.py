"""`trustfleet agent status`, reconnect backoff with jitter, and the shipped example configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.backoff import Backoff
from edge_agent.collectors.base import Sample
from edge_agent.config import load_agent_config
from edge_agent.outbox import Outbox
from hsm import SoftwareSigner

DEPLOY = Path(__file__).parents[1] / "edge_agent" / "deploy"
SIGNER = SoftwareSigner.generate()


def status_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trustfleet.cli", "agent", "status", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_status_reports_backlog_last_seq_and_last_receipt_from_the_outbox(
        tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    box.add([Sample("temp", {"c": 4.0 + i}, 1_767_225_600_000 + i, "gps") for i in range(7)])
    box.seal("truck-1", SIGNER.kid, SIGNER.sign, limit=5)
    box.apply_receipt(3, height=12, at_ms=1_767_225_700_000)
    out = status_cli("--data", str(tmp_path))  # read while the writer still has it open
    box.close()
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert (st["backlog"], st["unsealed"], st["in_flight"]) == (4, 2, 2)
    assert (st["last_seq"], st["receipt_seq"], st["receipt_height"]) == (5, 3, 12)
    assert st["receipt_at_ms"] == 1_767_225_700_000


def test_status_finds_the_outbox_through_the_config_file(tmp_path: Path) -> None:
    Outbox(tmp_path / "data" / "outbox.sqlite").close()
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\ndata_dir = "{tmp_path / "data"}"\ngps_port = "/dev/x"\n')
    out = status_cli("--config", str(config))
    assert out.returncode == 0 and json.loads(out.stdout)["backlog"] == 0


def test_status_of_a_folder_without_an_outbox_says_so(tmp_path: Path) -> None:
    out = status_cli("--data", str(tmp_path))
    assert out.returncode == 1 and "no outbox" in out.stderr


def test_backoff_doubles_up_to_the_cap_with_jitter_between_half_and_full_step() -> None:
    low = Backoff(0.5, 8.0, rand=lambda: 0.0)
    high = Backoff(0.5, 8.0, rand=lambda: 0.999999)
    assert [low.next_delay() for _ in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [round(high.next_delay(), 3) for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0,
                                                               8.0]
    high.reset()
    assert round(high.next_delay(), 3) == 0.5


def test_backoff_jitter_spreads_a_fleet_that_failed_at_the_same_instant() -> None:
    import random

    rng = random.Random(7)
    delays = {round(Backoff(1.0, 30.0, rand=rng.random).next_delay(), 3) for _ in range(50)}
    assert len(delays) > 40 and min(delays) >= 0.5 and max(delays) <= 1.0


@pytest.mark.parametrize("name", ["truck.toml", "container.toml"])
def test_shipped_example_configs_are_valid(name: str) -> None:
    cfg = load_agent_config(DEPLOY / name)
    assert cfg.tls_ca is not None and cfg.gps_port


def test_systemd_unit_runs_the_agent_and_stops_it_with_sigterm() -> None:
    unit = (DEPLOY / "trustfleet-agent.service").read_text()
    assert "ExecStart=/opt/trustfleet/.venv/bin/trustfleet agent run --config" in unit
    assert "KillSignal=SIGTERM" in unit and "Restart=always" in unit
