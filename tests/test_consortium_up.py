"""`trustfleet up --nodes 4`: a local consortium with TLS, started, run and stopped by itself;
afterwards the four stores hold the same chain, with the trucks' readings, and verify."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ledger_node.consortium.rig import block_hashes, committed_seqs
from trustfleet.procs import free_port

pytestmark = pytest.mark.slow


def test_up_with_four_nodes_runs_a_consortium(tmp_path: Path) -> None:
    data = tmp_path / "var"
    run = subprocess.run(
        [sys.executable, "-m", "trustfleet.cli", "up", "--data", str(data), "--nodes", "4",
         "--trucks", "1", "--duration", "30", "--api-port", str(free_port()), "--mqtt-port",
         str(free_port())], capture_output=True, text=True, timeout=400)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "etcd cluster of 3 members" in out and "4 ledger nodes (node-1, node-2, node-3, " \
        "node-4)" in out, out
    assert "| final " in out and "nodes 4/4" in out, out
    nodes = [data / f"node-{i}" for i in range(1, 5)]
    chains = [block_hashes(n / "ledger.sqlite") for n in nodes]
    assert all(c == chains[0] for c in chains[1:]), [len(c) for c in chains]
    assert len(chains[0]) > 3
    seqs = [committed_seqs(n / "ledger.sqlite").get("truck-1", set()) for n in nodes]
    assert seqs[0] and all(s == seqs[0] for s in seqs), [len(s) for s in seqs]
    node_set = json.loads((data / "node-set.json").read_text())
    assert [n["node"] for n in node_set["nodes"]] == ["node-1", "node-2", "node-3", "node-4"]
    for n in nodes:
        peers = n / "peers.json"
        assert stat.S_IMODE(peers.stat().st_mode) == 0o600
        assert {p["node"] for p in json.loads(peers.read_text())["peers"]} == \
            {m.name for m in nodes} - {n.name}
        verify = subprocess.run([sys.executable, "-m", "trustfleet.cli", "verify", "--data",
                                 str(n), "-q"], capture_output=True, text=True, timeout=300)
        assert verify.returncode == 0, verify.stdout + verify.stderr
