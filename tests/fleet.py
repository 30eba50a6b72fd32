"""Helpers for tests that start real processes: broker, ledger node, shims, agents.

Everything runs on free loopback ports in temporary folders and is stopped by the fixture
that started it. Logs go to files next to the data, and are shown when a start fails.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustfleet.procs import free_port, stop_process, wait_for


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "trustfleet.cli", *args]


def run_verify(db: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`trustfleet verify` on the node data folder holding the store `db`."""
    return subprocess.run(cli("verify", "--data", str(db.parent), *extra), capture_output=True,
                          text=True, timeout=60, check=False)


def damage(db: Path, tamper: Callable[[sqlite3.Connection], object]) -> None:
    """Change the store `db` behind the node's back: `tamper` in one committed transaction."""
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        tamper(conn)


def verify_fails_naming(db: Path, named: str) -> subprocess.CompletedProcess[str]:
    """`trustfleet verify` on `db`, which must fail (exit 1) with "FAILED: {named}"."""
    out = run_verify(db)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"FAILED: {named}" in out.stdout, out.stdout
    return out


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
    token: str | None = None
    """API token `get` sends (an operator token: see operator_token)."""

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def get(self, path: str) -> Any:
        return http_json_auth(self.api + path, self.token)

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
    node = NodeProcess(proc, data, api_port, log, operator_token(data))
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


def api_token(data: Path, kind: str, org: str | None = None, name: str | None = None) -> str:
    """A new API token of `kind` for the node whose data folder is `data` (tokens.db beside
    its ledger.sqlite; the node need not be running: tokens count at its next request)."""
    import secrets

    from ledger_node.auth import TokenBook, tokens_path, wall_clock_ms

    name = name or f"tests-{kind}-{secrets.token_hex(4)}"
    return TokenBook(tokens_path(data / "ledger.sqlite")).create(name, kind, org,
                                                                now_ms=wall_clock_ms())


def operator_token(data: Path) -> str:
    """A new operator API token for the node with data folder `data`."""
    return api_token(data, "operator")


def http_json_auth(url: str, token: str | None) -> Any:
    """GET `url` as JSON, with `Authorization: Bearer <token>` when a token is given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                timeout=5) as resp:
        return json.loads(resp.read())


# -- partner API test data: a real chain, shipments written into the store's derived tables ----

T0 = 1_763_700_000_000
"""Device time of the chainkit devices' readings: reading n of a device has t = T0 + n."""


@dataclass
class ShipmentStore:
    """A real store (blocks, readings, proofs) with three devices and three shipments.

    Entries: 0 genesis, 1-3 enrolments of truck-1..3, then four blocks of one reading each of
    truck-1, truck-2, truck-3 (entries 4..15; truck-1 = 4, 7, 10, 13). Until contract events
    come from the chain itself, `events` rows name existing entries of other kinds.

        SHP-ACME   parties acme (shipper), insureco (insurer); truck-1 in [T0+1, T0+3) and
                   [T0+2, T0+5) (overlapping), truck-2 from T0+3 (open); operator entry 1;
                   events: 2 custody_transfer, 3 temperature_excursion
        SHP-GLOBEX party globex; truck-3 from 0 (open); event 5 door_opened
        SHP-DONE   party acme, state delivered, nothing assigned
    """

    folder: Path
    db: Path
    ca_cert: bytes
    tc: Any
    """the ChainUnderTest (tests.chainkit) that wrote it"""
    trucks: list[Any]
    """its chainkit Devices truck-1..3"""

    def insert_shipment(self, sid: str, state: str, parties: list[tuple[str, str]],
                        devices: list[tuple[str, int, int | None]], entries: list[int],
                        height: int = 0) -> None:
        doc: dict[str, Any] = {"id": sid, "state": state,
               "parties": [{"org": o, "role": r} for o, r in parties],
               "units": ["urn:epc:id:sscc:0614141.1234567890"],
               "assignments": [{"dev": d, "start": s, "end": e} for d, s, e in devices],
               "route": None, "geofences": {}, "deadline": T0 + 86_400_000,
               "contracts": ["cold-chain"], "custodian": parties[0][0], "created": T0,
               "history": [{"at": T0, "state": state, "cause": entries[0] if entries else 0}],
               "entries": entries}
        c = self.tc.store.conn
        with c:
            c.execute("INSERT INTO shipments VALUES (?, ?, ?, ?, ?)",
                      (sid, state, json.dumps(doc), height, height))
            c.executemany("INSERT INTO shipment_parties VALUES (?, ?, ?)",
                          [(sid, o, r) for o, r in parties])
            c.executemany("INSERT INTO shipment_devices VALUES (?, ?, ?, ?)",
                          [(sid, d, s, e) for d, s, e in devices])

    def insert_event(self, idx: int, shipment: str | None, event: str, *, height: int = 4,
                     state: str | None = None, dev: str | None = None) -> None:
        doc = {"idx": idx, "contract": "cold-chain", "version": 1, "event": event,
               "shipment": shipment, "dev": dev, "at": T0 + idx, "state": state,
               "cause": [4], "data": {"note": f"event at {idx}"}}
        c = self.tc.store.conn
        with c:
            c.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (idx, height, T0 + 5000, "cold-chain", 1, event, shipment, dev, T0 + idx,
                       state, json.dumps(doc)))


def shipment_store(folder: Path) -> ShipmentStore:
    """Build the store of ShipmentStore in `folder` (ledger.sqlite); the writer stays open in
    `.tc.store` (tests append blocks with `.tc.apply`); close it with `.tc.store.close()`."""
    from tests.chainkit import ChainUnderTest, Device

    trucks = [Device("truck-1"), Device("truck-2"), Device("truck-3")]
    tc = ChainUnderTest(folder / "ledger.sqlite", trucks)
    for _ in range(4):
        tc.apply([d.message(d.reading()) for d in trucks])
    s = ShipmentStore(folder, folder / "ledger.sqlite", tc.pki.ca_cert, tc, trucks)
    s.insert_shipment("SHP-ACME", "in_transit", [("acme", "shipper"), ("insureco", "insurer")],
                      [("truck-1", T0 + 1, T0 + 3), ("truck-1", T0 + 2, T0 + 5),
                       ("truck-2", T0 + 3, None)], [1])
    s.insert_shipment("SHP-GLOBEX", "in_transit", [("globex", "shipper")],
                      [("truck-3", 0, None)], [])
    s.insert_shipment("SHP-DONE", "delivered", [("acme", "consignee")], [], [])
    s.insert_event(2, "SHP-ACME", "custody_transfer", height=0, dev="truck-1")
    s.insert_event(3, "SHP-ACME", "temperature_excursion", height=0, state="out_of_compliance",
                   dev="truck-1")
    s.insert_event(5, "SHP-GLOBEX", "door_opened", height=1, dev="truck-3")
    return s


@contextlib.contextmanager
def serve_api(app: Any) -> Iterator[str]:
    """Serve an ASGI app (ledger_node.api.create_app) with uvicorn in a thread on a free
    loopback port; yields its base URL and stops the server on exit."""
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, name="api-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
