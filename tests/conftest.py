"""Shared fixtures: a real Mosquitto broker and a real SoftHSM2 rig, in temporary folders;
for tests that run an edge agent in this process, its key, a ledger node that enrols it and
the agent's thread; for consortium tests, a running consortium."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from trustfleet.broker import start_broker
from trustfleet.procs import free_port, stop_process

if TYPE_CHECKING:
    from edge_agent.agent import EdgeAgent
    from hsm import SoftHsmRig, SoftwareSigner
    from ledger_node.bench_rig import SignedDevice
    from ledger_node.consortium.rig import ConsortiumRig
    from tests.fleet import NodeProcess


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
def device_rig(tmp_path_factory: pytest.TempPathFactory) -> SoftHsmRig:
    """One SoftHSM rig for the session: tokens truck-a, truck-b and node-1, keys inside."""
    from hsm import SoftHsmRig

    rig = SoftHsmRig(tmp_path_factory.mktemp("rig"))
    for label in ("truck-a", "truck-b", "node-1"):
        rig.ensure_token(label)
    return rig


@pytest.fixture
def signer() -> SoftwareSigner:
    """A fresh in-memory P-256 key: the device key of an agent run in this process."""
    from hsm import SoftwareSigner

    return SoftwareSigner.generate()


@pytest.fixture
def agent_device() -> str:
    """The device id of the agent a test runs in this process (enrolled by `node_factory`):
    a test module that uses `node_factory` overrides this fixture with its own."""
    pytest.fail("define an agent_device fixture in the test module")


@pytest.fixture
def node_factory(tmp_path: Path, broker: Broker, device_rig: SoftHsmRig, agent_device: str,
                 signer: SoftwareSigner) -> Iterator[Callable[[], NodeProcess]]:
    """Starts a real ledger node process with `agent_device` enrolled under `signer`'s key;
    every call starts one on the same data folder (a restart). All are stopped at the end."""
    from tests.fleet import start_node, write_enrollments

    enroll = write_enrollments(tmp_path / "enroll.json",
                               {agent_device: signer.public_key_der()})
    nodes: list[NodeProcess] = []

    def start() -> NodeProcess:
        nodes.append(start_node(tmp_path / "node", device_rig.directory, broker.port, enroll))
        return nodes[-1]

    yield start
    for node in nodes:
        node.stop()


class AgentThread:
    """An EdgeAgent running in a thread of this process (a 0.05 s tick) until `stop()`."""

    def __init__(self, agent: EdgeAgent) -> None:
        self.agent = agent
        self.thread = threading.Thread(target=agent.run, kwargs={"tick_s": 0.05})
        self.thread.start()

    def stop(self) -> None:
        self.agent.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def run_agent() -> Iterator[Callable[[EdgeAgent], AgentThread]]:
    """Starts an agent in its own thread; the test stops it (`.stop()`), and any it left
    running are stopped at the end."""
    started: list[AgentThread] = []

    def start(agent: EdgeAgent) -> AgentThread:
        started.append(AgentThread(agent))
        return started[-1]

    yield start
    for running in started:
        if running.thread.is_alive():
            running.stop()


@pytest.fixture
def rig(tmp_path: Path, devices: list[SignedDevice]) -> Iterator[ConsortiumRig]:
    """A consortium of 4 ledger nodes and 3 etcd members (ledger_node.consortium.rig) with
    the test module's `devices` enrolled; stopped at the end."""
    from ledger_node.consortium.rig import start_rig

    r = start_rig(tmp_path, 4, {d.dev: d.signer.public_key_der() for d in devices})
    yield r
    r.stop()
