"""A node checks its tip at start and refuses to run on a damaged store: exit 3 and a message
naming what is damaged. Real node process, real SoftHSM token, real broker, real SQLite."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from ledger_node.merkle import perfect_subtrees
from ledger_node.subtrees import MIN_STORED_LEVEL
from tests.chainkit import Device
from tests.fleet import NodeProcess, ca_path_for, cli, start_node, write_enrollments
from tests.mqttkit import TestClient
from trustfleet.broker import start_broker
from trustfleet.procs import free_port, stop_process, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, device_rig: object) -> tuple[Path, Path]:
    """A node's data folder after three blocks of readings, and its enrolment file. 20 entries
    in all, so that merkle_nodes holds a subtree (16 leaves or more) for edge_subtree."""
    tmp = tmp_path_factory.mktemp("start")
    port = free_port()
    broker = start_broker(tmp / "broker", port, tmp / "broker" / "mosquitto.log")
    dev = Device("truck-1")
    enroll = write_enrollments(tmp / "enroll.json", {dev.dev: dev.signer.public_key_der()})
    node = start_node(tmp / "node", device_rig.directory, port, enroll)  # type: ignore[attr-defined]
    try:
        with TestClient(port, "truck-1") as mq:
            for _ in range(3):  # one block each
                for _ in range(6):
                    mq.publish(dev.topic, dev.reading())
                wait_for(partial(_committed, node, dev.seq), 30, "readings", proc=node.proc,
                         log_file=node.log)
    finally:
        assert node.stop() == 0
        stop_process(broker)
    return tmp / "node", enroll


def _committed(node: NodeProcess, seq: int) -> bool:
    return bool(node.get("/v1/devices")[0]["contiguous_seq"] == seq)


def run_node(data: Path, enroll: Path, rig: object, token: str = "node-1"
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli("node", "run", "--data", str(data), "--rig", str(rig.directory),  # type: ignore[attr-defined]
            "--token", token, "--enroll", str(enroll),
            "--fleet-ca", str(ca_path_for(enroll)), "--broker-port", str(free_port()),
            "--api-port", str(free_port())),
        capture_output=True, text=True, timeout=120, check=False)


def _tip(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT MAX(height) FROM blocks").fetchone()[0])


def _flip(conn: sqlite3.Connection, table: str, column: str, where: str, at: int = -3) -> None:
    value = bytearray(conn.execute(f"SELECT {column} FROM {table} WHERE {where}").fetchone()[0])
    value[at] ^= 0x01
    conn.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", (bytes(value),))


def tip_header(conn: sqlite3.Connection) -> None:
    _flip(conn, "blocks", "header", f"height = {_tip(conn)}")


def tip_signature(conn: sqlite3.Connection) -> None:
    _flip(conn, "block_sigs", "sig", f"height = {_tip(conn)}", at=10)


def previous_header(conn: sqlite3.Connection) -> None:
    _flip(conn, "blocks", "header", f"height = {_tip(conn) - 1}")


def previous_hash(conn: sqlite3.Connection) -> None:
    _flip(conn, "blocks", "hash", f"height = {_tip(conn) - 1}", at=0)


def tip_frontier(conn: sqlite3.Connection) -> None:
    _flip(conn, "blocks", "frontier", f"height = {_tip(conn)}", at=-1)


def tip_entry(conn: sqlite3.Connection) -> None:
    _flip(conn, "entries", "data", "idx = (SELECT MAX(idx) FROM entries)", at=-10)


def edge_subtree(conn: sqlite3.Connection) -> None:
    size = conn.execute("SELECT size FROM blocks ORDER BY height DESC LIMIT 1").fetchone()[0]
    node = next(n for n in perfect_subtrees(0, size) if n.level >= MIN_STORED_LEVEL)
    _flip(conn, "merkle_nodes", "hash", f"level = {node.level} AND idx = {node.index}", at=0)


def extra_entry(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO entries SELECT idx + 1, height, kind, data FROM entries "
                 "WHERE idx = (SELECT MAX(idx) FROM entries)")


@pytest.mark.parametrize("tamper, named", [
    (tip_header, "(the tip): "),
    (tip_signature, "(the tip): signature of node 'node-1' does not verify"),
    (previous_header, ": its header no longer hashes to the tip's prev"),
    (previous_hash, "(the tip): prev does not match block"),
    (tip_frontier, "(the tip): stored frontier does not give the header's tree size and root"),
    (tip_entry, "(the tip): Merkle root recomputed from the stored entries does not match"),
    (edge_subtree, "merkle_nodes row (level 4, index 0)"),
    (extra_entry, "stored past the tip's tree size"),
])
def test_a_node_refuses_to_start_on_a_damaged_tip_and_says_why(
        pristine: tuple[Path, Path], tmp_path: Path, device_rig: object,
        tamper: Callable[[sqlite3.Connection], None], named: str) -> None:
    data = tmp_path / "node"
    shutil.copytree(pristine[0], data)
    with sqlite3.connect(data / "ledger.sqlite") as conn:
        tamper(conn)
    out = run_node(data, pristine[1], device_rig)
    assert out.returncode == 3, out.stderr
    assert "refusing to start: the store" in out.stderr and "is damaged" in out.stderr
    assert named in out.stderr
    assert f"trustfleet verify --data {data}" in out.stderr


def test_a_node_started_with_another_token_than_its_chain_names_exits_2(
        pristine: tuple[Path, Path], tmp_path: Path, device_rig: object) -> None:
    data = tmp_path / "node"
    shutil.copytree(pristine[0], data)
    out = run_node(data, pristine[1], device_rig, token="truck-a")
    assert out.returncode == 2, out.stderr
    assert "wrong token for this store?" in out.stderr


def test_an_intact_store_resumes(pristine: tuple[Path, Path], tmp_path: Path,
                                 device_rig: object, broker: object) -> None:
    data = tmp_path / "node"
    shutil.copytree(pristine[0], data)
    node = start_node(data, device_rig.directory, broker.port, pristine[1])  # type: ignore[attr-defined]
    try:
        assert node.get("/v1/devices")[0]["contiguous_seq"] == 18
    finally:
        assert node.stop() == 0
