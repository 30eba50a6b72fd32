"""Signing an operator entry and handing it to a node: shared by the operator CLIs.

`trustfleet device` (ledger_node.device_cli), `trustfleet shipment` / `trustfleet contract`
(ledger_node.business_cli) and `trustfleet consortium set-nodes` (ledger_node.consortium.cli)
all take the same arguments (`add_operator_arguments`), sign with the operator's key in its
HSM token (`operator_signer`, `sign_operator_entry`) and either write the entry to `--out` or
POST it to `--node` (`deliver`, `post_entry`); `run_delivery` does all of it for a command and
reports a failure on stderr. Their own mistakes they report as `Fail`.

Keys and certificates: with `--rig DIR` (a SoftHSM test rig) the operator token and its
certificate come from the rig's fleet CA. Otherwise give `--operator-cert FILE`,
`--operator-token LABEL` and the PIN in TRUSTFLEET_OPERATOR_PIN or
TRUSTFLEET_OPERATOR_PIN_FILE; the PKCS#11 module is TRUSTFLEET_PKCS11_MODULE (SoftHSM's
by default). The environment is read here, at the entry point, and nowhere else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger_node.admin import build_operator_entry

if TYPE_CHECKING:
    from hsm import Pkcs11Signer

__all__ = [
    "OPERATOR_TOKEN",
    "Fail",
    "add_operator_arguments",
    "deliver",
    "operator_signer",
    "post_entry",
    "read_cert",
    "run_delivery",
    "sign_operator_entry",
]

OPERATOR_TOKEN = "operator"
PKCS11_MODULE_ENV = "TRUSTFLEET_PKCS11_MODULE"
DEFAULT_PKCS11_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
OPERATOR_PIN_ENV = "TRUSTFLEET_OPERATOR_PIN"
OPERATOR_PIN_FILE_ENV = "TRUSTFLEET_OPERATOR_PIN_FILE"


class Fail(Exception):
    """An operator CLI cannot go on; the message says why (printed, exit status 2)."""


def add_operator_arguments(p: argparse.ArgumentParser) -> None:
    """Where the entry goes (`--node` or `--out`, one required), the operator's key and
    certificate (`--rig`, `--operator-token`, `--operator-cert`) and `--timeout`."""
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--node", help="node API URL to submit to, e.g. http://127.0.0.1:8080")
    where.add_argument("--out", type=Path, help="write the signed entry to this file")
    p.add_argument("--rig", type=Path, help="SoftHSM test rig (fleet-ca, operator tokens)")
    p.add_argument("--operator-token", default=OPERATOR_TOKEN, help="operator token label")
    p.add_argument("--operator-cert", type=Path, help="operator certificate (without --rig)")
    p.add_argument("--timeout", type=float, default=30, help="seconds to wait for the node")


def read_cert(path: Path) -> bytes:
    """A certificate file (PEM or DER) as DER; Fail if it cannot be read."""
    from hsm.x509 import pem_or_der_to_der

    try:
        return pem_or_der_to_der(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise Fail(f"cannot read certificate {path}: {exc}") from None


def operator_signer(args: argparse.Namespace) -> tuple[Pkcs11Signer, bytes]:
    """The operator's signer and certificate from `add_operator_arguments`' arguments.
    The caller closes the signer. Raises Fail, or HsmError from the token."""
    from hsm import signer_from_settings

    if args.rig is not None:
        from hsm import SoftHsmRig, ensure_ca, ensure_certificates

        rig = SoftHsmRig(args.rig)
        ensure_ca(rig)
        rig.ensure_token(args.operator_token)
        cert = ensure_certificates(rig, {args.operator_token: "operator"})[args.operator_token]
    elif args.operator_cert is not None:
        cert = read_cert(args.operator_cert)
    else:
        raise Fail("give --rig, or --operator-cert with the operator's token")
    signer = signer_from_settings(os.environ.get(PKCS11_MODULE_ENV, DEFAULT_PKCS11_MODULE),
                                  args.operator_token, rig_dir=args.rig,
                                  pin_env=OPERATOR_PIN_ENV, pin_file_env=OPERATOR_PIN_FILE_ENV)
    return signer, cert


def sign_operator_entry(args: argparse.Namespace, body: dict[str, Any]) -> bytes:
    """`body` stamped with the time now (ms) and signed as an operator entry."""
    signer, cert = operator_signer(args)
    try:
        return build_operator_entry({**body, "t": time.time_ns() // 1_000_000}, signer, cert)
    finally:
        signer.close()


def deliver(args: argparse.Namespace, body: dict[str, Any], what: str) -> int:
    """Sign `body`; write it to `args.out` (saying "wrote signed {what} to ...") or post it
    to `args.node`. The exit status: 0 written or taken, 1 refused; Fail otherwise."""
    entry = sign_operator_entry(args, body)
    if args.out is not None:
        args.out.write_bytes(entry)
        print(f"wrote signed {what} to {args.out}")
        return 0
    return post_entry(args.node, entry, args.timeout)


def run_delivery(args: argparse.Namespace, make_body: Callable[[], dict[str, Any]],
                 describe: Callable[[dict[str, Any]], str], prog: str,
                 errors: tuple[type[Exception], ...] = ()) -> int:
    """A command's whole job: `deliver` the body `make_body()` builds (`describe(body)` says
    what it is). Fail, HsmError, ValueError and any of `errors` are printed on stderr as
    "prog: message" with exit status 2."""
    from hsm.errors import HsmError

    caught: tuple[type[Exception], ...] = (Fail, HsmError, ValueError, *errors)
    try:
        body = make_body()
        return deliver(args, body, describe(body))
    except caught as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2


def post_entry(node: str, entry: bytes, timeout: float) -> int:
    """POST a signed operator entry to `node` and print the outcome. The exit status: 0
    accepted (or a duplicate), 1 rejected; Fail if the node cannot be reached or answers
    something other than an outcome."""
    req = urllib.request.Request(f"{node.rstrip('/')}/v1/admin/entries?wait={timeout}",
                                 data=entry, method="POST",
                                 headers={"Content-Type": "application/cose"})
    try:
        with urllib.request.urlopen(req, timeout=timeout + 5) as resp:
            outcome = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            outcome = json.loads(body) if exc.code == 422 else None
        except ValueError:
            outcome = None
        if not isinstance(outcome, dict) or "status" not in outcome:
            detail = body.decode(errors="replace")[:500]
            raise Fail(f"node answered {exc.code}: {detail}") from None
    except (OSError, ValueError) as exc:
        raise Fail(f"cannot reach node {node}: {exc}") from None
    status = outcome.get("status")
    where = f" in block {outcome['height']}" if outcome.get("height") is not None else ""
    print(f"{outcome.get('kind', 'entry')} for {outcome.get('device')}: {status}{where}"
          + (f" — {outcome.get('reason')}: {outcome.get('detail')}"
             if status == "rejected" else ""))
    return 0 if status in ("accepted", "duplicate") else 1
