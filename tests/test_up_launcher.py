"""`trustfleet up` (what `make demo` runs): starts a whole fleet, stops cleanly on SIGTERM,
keeps the data, and resumes the same chain when started again."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.fleet import cli, http_json, http_json_auth, operator_token
from trustfleet.procs import free_port, wait_for

pytestmark = pytest.mark.slow


def up(data: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(cli("up", "--data", str(data), "--trucks", "2", "--api-port",
                                str(free_port()), "--mqtt-port", str(free_port()), *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_up_runs_a_fleet_stops_on_sigterm_and_resumes_the_same_chain(tmp_path: Path) -> None:
    data = tmp_path / "var"
    proc = up(data)
    try:
        wait_for(lambda: (data / "ports.json").exists(), 30, "ports.json", proc=proc)  # type: ignore[arg-type]
        api = f"http://127.0.0.1:{json.loads((data / 'ports.json').read_text())['api']}"
        token = operator_token(data / "node-1")

        def trucks_committed() -> bool:
            devices = http_json_auth(api + "/v1/devices", token)
            return len(devices) == 2 and all(d["contiguous_seq"] >= 5 for d in devices)

        wait_for(trucks_committed, 120, "readings from both trucks", proc=proc,  # type: ignore[arg-type]
                 log_file=data / "logs" / "node-1.log")
        genesis = http_json(api + "/v1/blocks/0")["hash"]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "MQTT broker mqtts://127.0.0.1:" in out and "dashboard http://127.0.0.1:" in out
    assert "stopped; data kept in" in out
    check = subprocess.run(cli("verify", "--data", str(data / "node-1")), capture_output=True,
                           text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    height = int(check.stdout.split("(height ")[1].split(")")[0])

    again = up(data, "--duration", "8")
    out2, _ = again.communicate(timeout=120)
    assert again.returncode == 0, out2
    check2 = subprocess.run(cli("verify", "--data", str(data / "node-1")), capture_output=True,
                            text=True, timeout=60, check=False)
    assert check2.returncode == 0, check2.stdout
    assert int(check2.stdout.split("(height ")[1].split(")")[0]) > height
    import sqlite3

    with sqlite3.connect(data / "node-1" / "ledger.sqlite") as conn:
        assert bytes(conn.execute("SELECT hash FROM blocks WHERE height = 0").fetchone()[0]
                     ).hex() == genesis
        assert conn.execute("SELECT COUNT(*) FROM entries WHERE kind = 'genesis'"
                            ).fetchone()[0] == 1
