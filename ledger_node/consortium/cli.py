"""`trustfleet consortium set-nodes`: the operator's tool to change a consortium's node set.

It reads a node set file (the format of `node_set_file`, ledger_node.consortium.files:
{"nodes": [{"node": id, "cert": base64 DER}, ...]}), builds a `node_set_changed` operator
entry (ledger_node.admin, ledger_node.quorum), signs it with the operator's key like
`trustfleet device` does (`--rig DIR`, or `--operator-cert FILE` and `--operator-token`), and
submits it to a node (`--node URL`) or writes it to a file (`--out FILE`, submit it later with
`trustfleet device submit`). The new set is in force from the block after the one that takes
the entry; the node answers with the outcome (refused: `bad_node_set`, `node_cert_*`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ledger_node.admin import NODE_SET_CHANGED, build_operator_entry
from ledger_node.errors import ConfigError

OPERATOR_TOKEN = "operator"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `set-nodes` to the `trustfleet consortium` command (made here if not registered
    yet: ledger_node.cli registers it with `compare`)."""
    consortium = sub.choices.get("consortium")
    if consortium is None:
        consortium = sub.add_parser("consortium", help="a consortium of ledger nodes")
        consortium.add_subparsers(dest="consortium_command", required=True)
    csub = next(a for a in consortium._actions if isinstance(a, argparse._SubParsersAction))
    p = csub.add_parser("set-nodes", help="sign a node_set_changed entry: the new node set")
    p.add_argument("--node-set", required=True, type=Path, dest="node_set",
                   help='node set file: {"nodes": [{"node": id, "cert": base64 DER}]}')
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--node", help="node API URL to submit to, e.g. http://127.0.0.1:8080")
    where.add_argument("--out", type=Path, help="write the signed entry to this file")
    p.add_argument("--rig", type=Path, help="SoftHSM test rig (fleet-ca, operator tokens)")
    p.add_argument("--operator-token", default=OPERATOR_TOKEN, help="operator token label")
    p.add_argument("--operator-cert", type=Path, help="operator certificate (without --rig)")
    p.add_argument("--timeout", type=float, default=30, help="seconds to wait for the node")
    p.set_defaults(func=_set_nodes)


def node_set_body(path: Path) -> dict[str, Any]:
    """The `node_set_changed` payload (without v and t) for a node set file. Raises
    ConfigError naming what is wrong with the file."""
    from ledger_node.consortium.files import read_node_set

    listed = read_node_set(path)
    return {"type": NODE_SET_CHANGED, "nodes": [{"node": n, "cert": c} for n, c in listed]}


def _set_nodes(args: argparse.Namespace) -> int:
    from hsm.errors import HsmError
    from ledger_node.device_cli import Fail, operator_signer, post_entry

    try:
        body = node_set_body(args.node_set)
        signer, cert = operator_signer(args)
        try:
            entry = build_operator_entry({**body, "t": time.time_ns() // 1_000_000}, signer,
                                         cert)
        finally:
            signer.close()
        nodes = ", ".join(n["node"] for n in body["nodes"])
        if args.out is not None:
            args.out.write_bytes(entry)
            print(f"wrote signed {NODE_SET_CHANGED} entry ({nodes}) to {args.out}")
            return 0
        return int(post_entry(args.node, entry, args.timeout))
    except (Fail, ConfigError, HsmError, OSError, ValueError) as exc:
        print(f"trustfleet consortium set-nodes: {exc}", file=sys.stderr)
        return 2
