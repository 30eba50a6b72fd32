"""`trustfleet device`: the operator's tools to enrol, revoke and rotate devices.

Each command builds an operator entry (ledger_node.admin), signs it with the operator's key
in its HSM token, and submits it to a node (`--node URL`, POST /v1/admin/entries), or writes
it to a file (`--out FILE`) to be submitted later with `trustfleet device submit`. The node
checks it at the ledger time of the block that takes it and answers with the outcome.

Keys and certificates: with `--rig DIR` (a SoftHSM test rig) the operator token `operator`
and the certificates come from the rig's fleet CA. Otherwise give `--operator-cert FILE`,
`--operator-token LABEL` and the PIN in TRUSTFLEET_OPERATOR_PIN or TRUSTFLEET_OPERATOR_PIN_FILE
(ledger_node.operator_client signs and submits, for every operator CLI).

Submitting needs no API token (an operator entry authenticates itself by its signature);
reading the device list does (`device list`, and `rotate` asking the node for the current
key): an operator or auditor API token in --api-token (on `list` also --token), else the
environment variable TRUSTFLEET_TOKEN.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ledger_node.admin import DEVICE_ENROLLED, DEVICE_REVOKED, DEVICE_ROTATED
from ledger_node.operator_client import (
    Fail,
    add_operator_arguments,
    post_entry,
    read_cert,
    run_delivery,
)

API_TOKEN_ENV = "TRUSTFLEET_TOKEN"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    device = sub.add_parser("device", help="enrol, revoke, rotate and list devices (operator)")
    dsub = device.add_subparsers(dest="device_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", required=True, help="device id (the certificate's CN)")
        add_operator_arguments(p)

    enroll = dsub.add_parser("enroll", help="enrol a device with its certificate")
    common(enroll)
    enroll.add_argument("--fleet", default="demo", help="fleet id (demo)")
    enroll.add_argument("--cert", type=Path, help="device certificate (DER or PEM); with --rig "
                        "it is issued for the token named like the device")
    enroll.set_defaults(func=_enroll)

    revoke = dsub.add_parser("revoke", help="revoke a device: its later readings are refused")
    common(revoke)
    revoke.add_argument("--reason", required=True, help="why, in a few words")
    revoke.set_defaults(func=_revoke)

    rotate = dsub.add_parser("rotate", help="move a device to a new key")
    common(rotate)
    rotate.add_argument("--cert", type=Path, help="certificate of the new key")
    rotate.add_argument("--token", help="with --rig: the token holding the new key")
    rotate.add_argument("--replaces", help="kid (hex) of the key it replaces; default: asked "
                        "from --node")
    rotate.add_argument("--api-token", dest="api_token",
                        help=f"API token (operator or auditor) to ask --node for the current "
                             f"key (default: ${API_TOKEN_ENV})")
    rotate.set_defaults(func=_rotate)

    submit = dsub.add_parser("submit", help="submit signed entries written with --out")
    submit.add_argument("files", nargs="+", type=Path)
    submit.add_argument("--node", required=True)
    submit.add_argument("--timeout", type=float, default=30)
    submit.set_defaults(func=_submit)

    lst = dsub.add_parser("list", help="devices enrolled on a node")
    lst.add_argument("--node", required=True)
    lst.add_argument("--token", "--api-token", dest="api_token",
                     help=f"API token, operator or auditor (default: ${API_TOKEN_ENV})")
    lst.set_defaults(func=_list)


def _device_cert(args: argparse.Namespace, token: str | None) -> bytes:
    if args.cert is not None:
        return read_cert(args.cert)
    if args.rig is None:
        raise Fail("give --cert, or --rig to issue one from the test rig's CA")
    from hsm import SoftHsmRig, ensure_ca, issue_for_token

    rig = SoftHsmRig(args.rig)
    ensure_ca(rig)
    label = token or args.device
    rig.ensure_token(label)
    return issue_for_token(rig, label, "device", subject_id=args.device)


def _api_token(args: argparse.Namespace) -> str | None:
    return getattr(args, "api_token", None) or os.environ.get(API_TOKEN_ENV) or None


def _get_devices(node: str, token: str | None) -> Any:
    """GET /v1/devices (needs an operator or auditor API token)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"{node.rstrip('/')}/v1/devices", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise OSError(f"HTTP {exc.code}: the node wants an operator or auditor API token "
                          f"(--api-token, or ${API_TOKEN_ENV})") from None
        raise


def _current_kid(node: str, dev: str, token: str | None = None) -> bytes:
    try:
        devices = _get_devices(node, token)
    except (OSError, ValueError) as exc:
        raise Fail(f"cannot ask {node} for the current key: {exc}; give --replaces") from None
    for d in devices:
        if d.get("id") == dev:
            return bytes.fromhex(d["kid"])
    raise Fail(f"{dev!r} is not enrolled on {node}")


def _run(args: argparse.Namespace, body_of: Callable[[], dict[str, Any]]) -> int:
    return run_delivery(args, body_of, lambda body: f"{body['type']} entry for {body['dev']}",
                        "trustfleet device")


def _enroll(args: argparse.Namespace) -> int:
    return _run(args, lambda: {"type": DEVICE_ENROLLED, "dev": args.device, "fleet": args.fleet,
                               "cert": _device_cert(args, None)})


def _revoke(args: argparse.Namespace) -> int:
    return _run(args, lambda: {"type": DEVICE_REVOKED, "dev": args.device,
                               "reason": args.reason})


def _rotate(args: argparse.Namespace) -> int:
    def body() -> dict[str, Any]:
        if args.replaces:
            replaces = bytes.fromhex(args.replaces)
        elif args.node:
            replaces = _current_kid(args.node, args.device, _api_token(args))
        else:
            raise Fail("give --replaces KID when writing to --out")
        return {"type": DEVICE_ROTATED, "dev": args.device,
                "cert": _device_cert(args, args.token), "replaces": replaces}

    return _run(args, body)


def _submit(args: argparse.Namespace) -> int:
    worst = 0
    for path in args.files:
        try:
            worst = max(worst, post_entry(args.node, path.read_bytes(), args.timeout))
        except (Fail, OSError) as exc:
            print(f"trustfleet device submit: {path}: {exc}", file=sys.stderr)
            worst = 2
    return worst


def _list(args: argparse.Namespace) -> int:
    try:
        devices = _get_devices(args.node, _api_token(args))
    except (OSError, ValueError) as exc:
        print(f"trustfleet device list: cannot reach {args.node}: {exc}", file=sys.stderr)
        return 2
    print(f"{'device':<20} {'fleet':<10} {'state':<8} {'last seq':>9} {'gaps':>5}  kid")
    for d in devices:
        state = "revoked" if d.get("revoked") else "active"
        print(f"{d['id']:<20} {d['fleet']:<10} {state:<8} {d['last_seq']:>9} {d['gaps']:>5}  "
              f"{d['kid'][:16]}…")
    return 0

