"""Shared fixtures: a real Mosquitto broker and a real SoftHSM2 rig, in temporary folders."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from trustfleet.broker import start_broker
from trustfleet.procs import free_port, stop_process


@dataclass
class Broker:
    port: int
    directory: Path


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is not installed; `make test` installs it")
    port = free_port()
    proc = start_broker(tmp_path / "broker", port, tmp_path / "broker" / "mosquitto.log")
    yield Broker(port, tmp_path / "broker")
    stop_process(proc)


@pytest.fixture(scope="session")
def device_rig(tmp_path_factory: pytest.TempPathFactory) -> object:
    """One SoftHSM rig for the session: tokens truck-a, truck-b and node-1, keys inside."""
    from hsm import SoftHsmRig

    rig = SoftHsmRig(tmp_path_factory.mktemp("rig"))
    for label in ("truck-a", "truck-b", "node-1"):
        rig.ensure_token(label)
    return rig
