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
from pathlib import Path
from typing import Any

from ledger_node.admin import NODE_SET_CHANGED
from ledger_node.errors import ConfigError
from ledger_node.operator_client import add_operator_arguments, run_delivery


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
    add_operator_arguments(p)
    p.set_defaults(func=_set_nodes)


def node_set_body(path: Path) -> dict[str, Any]:
    """The `node_set_changed` payload (without v and t) for a node set file. Raises
    ConfigError naming what is wrong with the file."""
    from ledger_node.consortium.files import read_node_set

    listed = read_node_set(path)
    return {"type": NODE_SET_CHANGED, "nodes": [{"node": n, "cert": c} for n, c in listed]}


def _set_nodes(args: argparse.Namespace) -> int:
    def describe(body: dict[str, Any]) -> str:
        return f"{NODE_SET_CHANGED} entry ({', '.join(n['node'] for n in body['nodes'])})"

    return run_delivery(args, lambda: node_set_body(args.node_set), describe,
                        "trustfleet consortium set-nodes", errors=(ConfigError, OSError))
