"""`trustfleet contract` and `trustfleet shipment` against a real node, signing in the operator
token of a real SoftHSM rig: register, upgrade, retire, list, show; create, assign, move state;
and the errors an operator gets before anything is signed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ledger_node.contracts import template_text
from tests.fleet import NodeProcess, cli, operator_token, spawn
from trustfleet.procs import free_port, wait_for

pytestmark = pytest.mark.slow


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=120, check=False,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def node(tmp_path: Path, broker: Any) -> Any:
    from hsm import SoftHsmRig, ensure_ca

    rig_dir = tmp_path / "rig"
    rig = SoftHsmRig(rig_dir)
    for label in ("node-1", "operator"):
        rig.ensure_token(label)
    ensure_ca(rig)
    api, log = free_port(), tmp_path / "node.log"
    proc = spawn(cli("node", "run", "--data", str(tmp_path / "node"), "--rig", str(rig_dir),
                     "--token", "node-1", "--fleet-ca", str(rig_dir / "ca.pem"),
                     "--broker-port", str(broker.port), "--api-port", str(api),
                     "--block-interval-ms", "50"), log)
    n = NodeProcess(proc, tmp_path / "node", api, log, operator_token(tmp_path / "node"))
    wait_for(lambda: n.get("/v1/node/status")["broker_connected"], 60, "node", proc=proc,
             log_file=log)
    yield n, rig_dir
    assert n.stop() == 0


def test_contract_lifecycle_through_the_cli(node: Any, tmp_path: Path) -> None:
    n, rig = node
    sign = ("--rig", str(rig), "--node", n.api)
    v1 = tmp_path / "cold.yaml"
    v1.write_text(template_text("cold-chain-2-8"))
    out = run("contract", "register", str(v1), *sign)
    assert out.returncode == 0 and "accepted in block" in out.stdout, out.stdout + out.stderr
    again = run("contract", "register", str(v1), *sign)
    assert again.returncode == 1 and "contract_conflict" in again.stdout, again.stdout

    v2 = tmp_path / "cold-v2.yaml"
    v2.write_text(template_text("cold-chain-2-8").replace("version: 1", "version: 2")
                  .replace("hold: 15m", "hold: 10m"))
    out = run("contract", "upgrade", str(v2), *sign)
    assert out.returncode == 0 and "accepted" in out.stdout, out.stdout + out.stderr

    token = ("--node", n.api, "--token", str(n.token))
    listing = run("contract", "list", *token)
    assert listing.returncode == 0, listing.stderr
    lines = [line.split() for line in listing.stdout.splitlines()[1:]]
    assert lines[0][:3] == ["cold-chain-2-8", "1", "superseded"]
    assert lines[1][:3] == ["cold-chain-2-8", "2", "active"]
    show = run("contract", "show", "cold-chain-2-8", *token)
    assert "hold: 10m" in show.stdout and "hold: 15m" in show.stdout

    out = run("contract", "retire", "cold-chain-2-8", *sign)
    assert out.returncode == 0 and "accepted" in out.stdout, out.stdout + out.stderr
    listing = json.loads(run("contract", "list", *token, "--json").stdout)
    assert [r["status"] for r in listing] == ["superseded", "retired"]


def test_a_broken_contract_is_refused_before_it_is_signed(node: Any, tmp_path: Path) -> None:
    n, rig = node
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nversion: 1\nrules:\n  - id: r\n    on: {reading: temp}\n"
                   "    when: 'reading.d.nope > 1'\n    emit: x\n    colour: red\n")
    out = run("contract", "register", str(bad), "--rig", str(rig), "--node", n.api)
    assert out.returncode == 2
    assert f"{bad}:8:5" in out.stderr, out.stderr  # the unknown field, with line and column
    assert n.get("/v1/contracts")["items"] == []


def test_shipment_lifecycle_through_the_cli(node: Any, tmp_path: Path) -> None:
    n, rig = node
    sign = ("--rig", str(rig), "--node", n.api)
    route = tmp_path / "route.json"
    route.write_text(json.dumps({"type": "LineString",
                                 "coordinates": [[4.47, 51.92], [6.77, 51.43]]}))
    out = run("shipment", "create", *sign, "--shipment", "SHP-7", "--party", "acme:shipper",
              "--party", "fastfreight:carrier", "--unit", "urn:epc:id:sscc:0614141.1234567890",
              "--deadline", "2030-01-01T12:00:00Z", "--route", str(route))
    assert out.returncode == 0 and "accepted" in out.stdout, out.stdout + out.stderr
    out = run("shipment", "assign", *sign, "--shipment", "SHP-7", "--device", "truck-7",
              "--start", "2026-11-21T00:00:00Z")
    assert out.returncode == 0 and "accepted" in out.stdout, out.stdout + out.stderr
    out = run("shipment", "state", *sign, "--shipment", "SHP-7", "--state", "in_transit")
    assert out.returncode == 0 and "accepted" in out.stdout, out.stdout + out.stderr

    token = ("--node", n.api, "--token", str(n.token))
    shown = json.loads(run("shipment", "show", "SHP-7", *token).stdout)
    assert shown["state"] == "in_transit"
    assert shown["deadline"] == 1_893_499_200_000
    assert shown["assignments"][0]["dev"] == "truck-7"
    assert shown["route"]["type"] == "LineString"
    listing = run("shipment", "list", *token).stdout
    assert "SHP-7" in listing and "acme:shipper" in listing

    moved_back = run("shipment", "state", *sign, "--shipment", "SHP-7", "--state",
                     "in_transit")
    assert moved_back.returncode == 1 and "rejected" in moved_back.stdout


@pytest.mark.parametrize(("args", "message"), [
    (("--shipment", "S", "--party", "acme"), "ORG:ROLE"),
    (("--shipment", "S", "--deadline", "2030-01-01T12:00:00"), "no time zone"),
    (("--shipment", "S", "--deadline", "next tuesday"), "neither ms"),
    (("--party", "acme:shipper"), "give --shipment"),
])
def test_bad_shipment_arguments_are_refused_before_signing(tmp_path: Path, args: tuple[str, ...],
                                                           message: str) -> None:
    out = run("shipment", "create", "--out", str(tmp_path / "x.cose"), "--rig",
              str(tmp_path / "no-rig"), *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert not (tmp_path / "x.cose").exists()


def test_a_partners_queries_land_on_the_ledger_as_audit_entries(node: Any) -> None:
    from tests.fleet import api_token, http_json_auth

    n, _ = node
    partner = api_token(n.data, "partner", org="acme", name="acme-clerk")
    assert http_json_auth(f"{n.api}/v1/shipments?state=in_transit", partner)["items"] == []

    def audited() -> list[dict[str, Any]]:
        return [i for i in n.get("/v1/audit")["items"] if i["record"]["who"] == "acme-clerk"]

    wait_for(lambda: audited(), 30, "the audit entry", proc=n.proc, log_file=n.log)
    item = audited()[0]
    assert item["record"]["path"] == "/v1/shipments" and item["record"]["org"] == "acme"
    assert item["record"]["query"] == "state=in_transit" and item["record"]["status"] == 200
    assert n.get(f"/v1/entries/{item['entry']}")["kind"] == "audit"
