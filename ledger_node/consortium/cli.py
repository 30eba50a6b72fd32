"""`trustfleet consortium`: `compare` (the nodes' blocks, height by height, fetched with the
block sync API) and `set-nodes`, the operator's tool to change a consortium's node set.

`set-nodes` reads a node set file (the format of `node_set_file`, ledger_node.consortium.files:
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
from pathlib import Path
from typing import Any

from ledger_node.admin import NODE_SET_CHANGED
from ledger_node.errors import ConfigError, LedgerError
from ledger_node.operator_client import add_operator_arguments, run_delivery


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `trustfleet consortium` command: `compare` and `set-nodes`."""
    consortium = sub.add_parser(
        "consortium", help="a consortium of ledger nodes (docs/consortium.md)")
    csub = consortium.add_subparsers(dest="consortium_command", required=True)
    compare = csub.add_parser(
        "compare", help="compare the nodes' blocks height by height (cross-node check)",
        description="Fetch the blocks of every node named in the peers files (block sync API, "
                    "auditor tokens) and compare them height by height: a node whose header "
                    "or entries differ from what most nodes hold is named. Exit 0 if all "
                    "agree, 1 naming every difference, 2 if a node cannot be read.")
    compare.add_argument("--peers", type=Path, action="append", required=True,
                         help="peers file (JSON: node, url, token); repeat to name more nodes")
    compare.add_argument("--from", dest="from_height", type=int, default=0,
                         help="first height (0)")
    compare.add_argument("--to", dest="to_height", type=int, default=None,
                         help="last height (default: the lowest tip of the nodes)")
    compare.set_defaults(func=_compare)

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


def _compare(args: argparse.Namespace) -> int:
    from ledger_node.block_sync import compare_blocks, fetch_blocks, fetch_page
    from ledger_node.consortium.files import Peer, read_peers

    peers: dict[str, Peer] = {}
    try:
        for path in args.peers:
            for p in read_peers(path):
                peers.setdefault(p.node, p)
        to = args.to_height
        if to is None:
            to = min(fetch_page(p, 0, 1).tip for p in peers.values())
        held = {n: fetch_blocks(p, args.from_height, to) for n, p in sorted(peers.items())}
    except LedgerError as exc:
        print(f"trustfleet consortium compare: {exc}", file=sys.stderr)
        return 2
    differences = compare_blocks(held)
    for d in differences:
        print(f"DIFFERS: {d.node}: {d.what}: {d.detail}")
    if not differences:
        print(f"OK: {len(held)} nodes ({', '.join(held)}) hold the same blocks "
              f"{args.from_height}..{to}, header and entries")
    return 1 if differences else 0
