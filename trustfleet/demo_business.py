"""What `trustfleet up` sets up on top of the fleet: API tokens, demo shipments and contracts.

Tokens (made once, kept in DATA/tokens/NAME.token, mode 0600, shown by `trustfleet up`):
  operator       sees and does everything (the dashboard's operator login)
  acme-pharma    a partner token: the shipper of the odd-numbered trucks' shipments
  nordic-foods   a partner token: the shipper of the even-numbered trucks' shipments
  auditor        reads everything, every request audited on the ledger

Business entries (submitted once, on the chain's first run, through the node's API like any
operator would, signed by the operator token of the SoftHSM rig):
  contracts   cold-chain-2-8, shock, device-silent and unit-tracking (shipped templates)
  shipments   SHP-N for truck-N: shipper (as above), carrier fastfreight, consignee
              city-hospital, insurer safe-cargo; the truck assigned from now on; a deadline
              eight hours ahead; all four contracts attached; state in_transit
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CONTRACTS = ("cold-chain-2-8", "shock", "device-silent", "unit-tracking")
PARTNERS = ("acme-pharma", "nordic-foods")
DONE_MARK = "demo-business.json"


def ensure_tokens(data: Path, node_db: Path) -> dict[str, str]:
    """The demo's API tokens, made on the first run and read back afterwards."""
    from ledger_node.auth import TokenBook, tokens_path, wall_clock_ms

    folder = data / "tokens"
    folder.mkdir(mode=0o700, exist_ok=True)
    book = TokenBook(tokens_path(node_db))
    wanted = {"operator": ("operator", None), "auditor": ("auditor", None),
              **{p: ("partner", p) for p in PARTNERS}}
    out: dict[str, str] = {}
    for name, (kind, org) in wanted.items():
        path = folder / f"{name}.token"
        if path.exists():
            out[name] = path.read_text().strip()
            continue
        token = book.create(name, kind, org, now_ms=wall_clock_ms())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        out[name] = token
    return out


def shipper_of(index: int) -> str:
    return PARTNERS[(index - 1) % len(PARTNERS)]


def demo_bodies(trucks: list[str], now_ms: int) -> list[dict[str, Any]]:
    """The payloads of the demo's business entries, in the order they are submitted."""
    from ledger_node.admin import (
        CONTRACT_REGISTERED,
        SHIPMENT_ASSIGNED,
        SHIPMENT_CREATED,
        SHIPMENT_STATE,
    )
    from ledger_node.contracts import parse_contract, template_text

    bodies: list[dict[str, Any]] = []
    for name in CONTRACTS:
        text = template_text(name)
        doc = parse_contract(text, source=name)
        bodies.append({"type": CONTRACT_REGISTERED, "name": doc.name, "version": doc.version,
                       "doc": text, "effective": None})
    for i, truck in enumerate(trucks, start=1):
        sid = f"SHP-{i}"
        bodies.append({"type": SHIPMENT_CREATED, "shipment": sid,
                       "parties": [{"org": shipper_of(i), "role": "shipper"},
                                   {"org": "fastfreight", "role": "carrier"},
                                   {"org": "city-hospital", "role": "consignee"},
                                   {"org": "safe-cargo", "role": "insurer"}],
                       "units": [f"urn:epc:id:sscc:0614141.{1234567890 + i - 1}"],
                       "route": None, "geofences": {}, "deadline": now_ms + 8 * 3_600_000,
                       "contracts": list(CONTRACTS)})
        bodies.append({"type": SHIPMENT_ASSIGNED, "shipment": sid, "dev": truck,
                       "start": now_ms - 60_000, "end": None})
        bodies.append({"type": SHIPMENT_STATE, "shipment": sid, "state": "in_transit"})
    return bodies


def submit_demo_business(data: Path, api: str, trucks: list[str], operator: str) -> int:
    """Sign and submit the demo's entries once per data folder; returns how many were taken."""
    from hsm import SoftHsmRig, ensure_certificates, open_signer
    from ledger_node.admin import build_operator_entry

    mark = data / DONE_MARK
    if mark.exists():
        return 0
    rig = SoftHsmRig(data / "hsm")
    os.environ.update(rig.env())
    cert = ensure_certificates(rig, {operator: "operator"})[operator]
    now = time.time_ns() // 1_000_000
    signer = open_signer(rig, operator)
    try:
        entries = [build_operator_entry({**b, "t": now}, signer, cert)
                   for b in demo_bodies(trucks, now)]
    finally:
        signer.close()
    taken = 0
    outcomes: list[dict[str, Any]] = []
    for entry in entries:
        req = urllib.request.Request(f"{api}/v1/admin/entries?wait=30", data=entry,
                                     method="POST",
                                     headers={"Content-Type": "application/cose"})
        try:
            with urllib.request.urlopen(req, timeout=40) as resp:
                outcome = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            outcome = {"status": "rejected", "detail": exc.read().decode(errors="replace")}
        outcomes.append(outcome)
        taken += outcome.get("status") in ("accepted", "duplicate")
    mark.write_text(json.dumps(outcomes, indent=1))
    return taken
