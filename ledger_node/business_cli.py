"""`trustfleet shipment ...` and `trustfleet contract ...`: the operator's business entries.

Each changing command builds an operator entry (ledger_node.admin), signs it with the
operator's key in its HSM token, and submits it to a node (`--node URL`) or writes it to a file
(`--out FILE`, to submit later with `trustfleet device submit`) — the same keys, certificates
and transport as `trustfleet device` (see ledger_node.operator_client). A contract document is
parsed and checked here before it is signed, so an error is reported with its line and column
before anything reaches a node; the node checks it again when it takes the entry.

    trustfleet shipment create --file shipment.yaml | --shipment ID --party ORG:ROLE ...
                               [--unit SSCC] [--deadline T] [--route FILE]
                               [--geofence NAME=FILE] [--contract NAME]
    trustfleet shipment assign --shipment ID --device DEV --start T [--end T]
    trustfleet shipment state  --shipment ID --state in_transit|delivered|cancelled
    trustfleet shipment list | show ID          (reads the node's API with a token)
    trustfleet contract register FILE [--effective T] | upgrade FILE [--effective T] | retire NAME
    trustfleet contract list | show NAME        (reads the node's API with a token)
    trustfleet contract test FILE --scenario SCENARIO      (a dry run, no node needed)

Times (T) are ms since the Unix epoch or ISO 8601 with a zone (2026-11-21T08:00:00Z).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ledger_node.admin import (
    CONTRACT_REGISTERED,
    CONTRACT_RETIRED,
    CONTRACT_UPGRADED,
    MAX_CONTRACT_DOC,
    SHIPMENT_ASSIGNED,
    SHIPMENT_CREATED,
    SHIPMENT_STATE,
)
from ledger_node.operator_client import Fail, add_operator_arguments, run_delivery

Sub = argparse._SubParsersAction  # type: ignore[type-arg]
SHIPMENT_FIELDS = ("shipment", "parties", "units", "route", "geofences", "deadline", "contracts")


def register(sub: Sub) -> None:
    shipment = sub.add_parser("shipment", help="create shipments, assign devices, move state "
                              "(operator); list and show them")
    ssub = shipment.add_subparsers(dest="shipment_command", required=True)
    create = ssub.add_parser("create", help="create a shipment")
    add_operator_arguments(create)
    create.add_argument("--file", type=Path, help="YAML or JSON with the shipment's fields: "
                        f"{', '.join(SHIPMENT_FIELDS)}")
    create.add_argument("--shipment", help="shipment id")
    create.add_argument("--party", action="append", default=[], metavar="ORG:ROLE",
                        help="a party and its role (shipper, carrier, consignee, insurer, "
                        "customs); repeat")
    create.add_argument("--unit", action="append", default=[], metavar="SSCC",
                        help="a logistic unit's EPC URI (urn:epc:id:sscc:...); repeat")
    create.add_argument("--deadline", help="delivery deadline (ms or ISO 8601)")
    create.add_argument("--route", type=Path, help="GeoJSON LineString file (the planned route)")
    create.add_argument("--geofence", action="append", default=[], metavar="NAME=FILE",
                        help="a named GeoJSON Polygon file; repeat")
    create.add_argument("--contract", action="append", default=[], metavar="NAME",
                        help="attach a contract by name; repeat")
    create.set_defaults(func=_create)

    assign = ssub.add_parser("assign", help="assign a device to a shipment from a time")
    add_operator_arguments(assign)
    assign.add_argument("--shipment", required=True)
    assign.add_argument("--device", required=True)
    assign.add_argument("--start", required=True, help="device time from which it counts")
    assign.add_argument("--end", help="device time it stops counting (default: open)")
    assign.set_defaults(func=_assign)

    state = ssub.add_parser("state", help="move a shipment's state")
    add_operator_arguments(state)
    state.add_argument("--shipment", required=True)
    state.add_argument("--state", required=True,
                       choices=("in_transit", "delivered", "cancelled"))
    state.set_defaults(func=_state)

    for name, helptext in (("list", "shipments on a node"), ("show", "one shipment")):
        p = ssub.add_parser(name, help=helptext)
        _reading(p)
        if name == "show":
            p.add_argument("id")
        p.set_defaults(func=_shipment_read)

    contract = sub.add_parser("contract", help="register, upgrade, retire, list, show and "
                              "dry-run contracts")
    csub = contract.add_subparsers(dest="contract_command", required=True)
    for name, helptext in (("register", "register a new contract document"),
                           ("upgrade", "register a higher version of a live contract")):
        p = csub.add_parser(name, help=helptext)
        add_operator_arguments(p)
        p.add_argument("file", type=Path, help="the contract document (YAML or JSON)")
        p.add_argument("--effective", help="ledger time it takes effect (default: at once)")
        p.set_defaults(func=_register, entry_type=CONTRACT_REGISTERED if name == "register"
                       else CONTRACT_UPGRADED)
    retire = csub.add_parser("retire", help="retire a live contract")
    add_operator_arguments(retire)
    retire.add_argument("name")
    retire.set_defaults(func=_retire)
    for name, helptext in (("list", "contracts on a node"), ("show", "one contract's versions")):
        p = csub.add_parser(name, help=helptext)
        _reading(p)
        if name == "show":
            p.add_argument("id", metavar="NAME")
        p.set_defaults(func=_contract_read)
    from ledger_node.contracts.cli import add_test_parser

    add_test_parser(csub)


def _reading(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", required=True, help="node API URL")
    p.add_argument("--token", default=os.environ.get("TRUSTFLEET_TOKEN"),
                   help="API token (default: $TRUSTFLEET_TOKEN)")
    p.add_argument("--json", action="store_true", help="print the node's JSON")


def parse_time(text: str | None, what: str) -> int | None:
    """ms since the epoch from digits or ISO 8601 with a zone; None stays None."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Fail(f"{what}: {text!r} is neither ms since the epoch nor ISO 8601") from None
    if when.tzinfo is None:
        raise Fail(f"{what}: {text!r} has no time zone (add Z or +01:00)")
    return int(when.timestamp() * 1000)


def _load_json_or_yaml(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
        return yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise Fail(f"cannot read {what} {path}: {exc}") from None


def shipment_body(args: argparse.Namespace) -> dict[str, Any]:
    """The shipment_created payload from --file and the flags (flags win)."""
    base: dict[str, Any] = {}
    if args.file is not None:
        loaded = _load_json_or_yaml(args.file, "shipment file")
        if not isinstance(loaded, dict):
            raise Fail(f"{args.file}: a shipment file is a mapping of {', '.join(SHIPMENT_FIELDS)}")
        unknown = sorted(set(loaded) - set(SHIPMENT_FIELDS))
        if unknown:
            raise Fail(f"{args.file}: unknown field(s) {unknown}; known: {list(SHIPMENT_FIELDS)}")
        base = dict(loaded)
    if args.shipment:
        base["shipment"] = args.shipment
    if args.party:
        parties = []
        for item in args.party:
            org, sep, role = item.partition(":")
            if not sep or not org or not role:
                raise Fail(f"--party {item!r}: write ORG:ROLE, e.g. acme:shipper")
            parties.append({"org": org, "role": role})
        base["parties"] = parties
    if args.unit:
        base["units"] = list(args.unit)
    if args.deadline is not None:
        base["deadline"] = args.deadline
    if args.route is not None:
        base["route"] = _load_json_or_yaml(args.route, "route")
    for item in args.geofence:
        name, sep, file = item.partition("=")
        if not sep:
            raise Fail(f"--geofence {item!r}: write NAME=FILE")
        base.setdefault("geofences", {})[name] = _load_json_or_yaml(Path(file), "geofence")
    if args.contract:
        base["contracts"] = list(args.contract)
    if "shipment" not in base:
        raise Fail("give --shipment ID (or a file with a shipment field)")
    deadline = base.get("deadline")
    if isinstance(deadline, dt.datetime):  # YAML reads an unquoted timestamp itself
        base["deadline"] = int(deadline.timestamp() * 1000)
    elif deadline is not None and not isinstance(deadline, int):
        base["deadline"] = parse_time(str(deadline), "deadline")
    return {"type": SHIPMENT_CREATED, "shipment": base["shipment"],
            "parties": base.get("parties", []), "units": base.get("units", []),
            "route": base.get("route"), "geofences": base.get("geofences", {}),
            "deadline": base.get("deadline"), "contracts": base.get("contracts", [])}


def _deliver(args: argparse.Namespace, make_body: Callable[[], dict[str, Any]]) -> int:
    return run_delivery(args, make_body, lambda body: f"{body['type']} entry", "trustfleet")


def _create(args: argparse.Namespace) -> int:
    return _deliver(args, lambda: shipment_body(args))


def _assign(args: argparse.Namespace) -> int:
    return _deliver(args, lambda: {
        "type": SHIPMENT_ASSIGNED, "shipment": args.shipment, "dev": args.device,
        "start": parse_time(args.start, "--start"), "end": parse_time(args.end, "--end")})


def _state(args: argparse.Namespace) -> int:
    return _deliver(args, lambda: {"type": SHIPMENT_STATE, "shipment": args.shipment,
                                   "state": args.state})


def contract_body(path: Path, entry_type: str, effective: int | None) -> dict[str, Any]:
    """A contract entry's payload; the document is checked first (line:column errors)."""
    from ledger_node.contracts import ContractDocumentError, parse_contract

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise Fail(f"cannot read contract {path}: {exc}") from None
    if len(raw) > MAX_CONTRACT_DOC:
        raise Fail(f"{path}: {len(raw)} bytes; a contract document is at most "
                   f"{MAX_CONTRACT_DOC} bytes")
    try:
        text = raw.decode("utf-8")
        document = parse_contract(text, source=str(path))
    except UnicodeDecodeError as exc:
        raise Fail(f"{path}: not UTF-8 text: {exc}") from None
    except ContractDocumentError as exc:
        raise Fail(str(exc)) from None
    return {"type": entry_type, "name": document.name, "version": document.version,
            "doc": text, "effective": effective}


def _register(args: argparse.Namespace) -> int:
    return _deliver(args, lambda: contract_body(args.file, args.entry_type,
                                                parse_time(args.effective, "--effective")))


def _retire(args: argparse.Namespace) -> int:
    return _deliver(args, lambda: {"type": CONTRACT_RETIRED, "name": args.name})


def _get(args: argparse.Namespace, path: str) -> Any:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    req = urllib.request.Request(f"{args.node.rstrip('/')}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise Fail(f"node answered {exc.code} for {path}: {detail}") from None
    except (OSError, ValueError) as exc:
        raise Fail(f"cannot reach {args.node}: {exc}") from None


def _shipment_read(args: argparse.Namespace) -> int:
    try:
        if args.shipment_command == "show":
            item = _get(args, f"/v1/shipments/{urllib.parse.quote(args.id, safe='')}")
            print(json.dumps(item, indent=2))
            return 0
        items = _get(args, "/v1/shipments")
    except Fail as exc:
        print(f"trustfleet shipment: {exc}", file=sys.stderr)
        return 2
    rows = items.get("items", items) if isinstance(items, dict) else items
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'shipment':<20} {'state':<18} {'custodian':<14} parties")
    for s in rows:
        parties = ", ".join(f"{p['org']}:{p['role']}" for p in s.get("parties", []))
        print(f"{s['id']:<20} {s['state']:<18} {s.get('custodian') or '-':<14} {parties}")
    return 0


def _contract_read(args: argparse.Namespace) -> int:
    try:
        if args.contract_command == "show":
            found = _get(args, f"/v1/contracts/{urllib.parse.quote(args.id, safe='')}")
            if args.json:
                print(json.dumps(found, indent=2))
                return 0
            for r in found["versions"]:
                print(f"# {r['name']} v{r['version']}: {r['status']}, effective {r['effective']}"
                      f"{'' if r['until'] is None else ', until ' + str(r['until'])}, "
                      f"entry {r['entry']}")
                print(r["doc"].rstrip())
            return 0
        items = _get(args, "/v1/contracts")
    except Fail as exc:
        print(f"trustfleet contract: {exc}", file=sys.stderr)
        return 2
    rows = items["items"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'contract':<24} {'version':>7} {'status':<11} {'effective':>14}")
    for r in rows:
        print(f"{r['name']:<24} {r['version']:>7} {r['status']:<11} {r['effective']:>14}")
    return 0
