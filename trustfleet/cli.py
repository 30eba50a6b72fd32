"""The `trustfleet` command: one entry point, one subcommand per part.

    trustfleet up             a whole local fleet (broker, SoftHSM rig, node, trucks)
    trustfleet node run       a ledger node          trustfleet verify   check a node's store
    trustfleet agent run      an edge agent          trustfleet hsm ...  SoftHSM rigs, tokens
    trustfleet device ...     enrol, revoke, rotate devices (operator-signed ledger entries)
    trustfleet shipment ...   create shipments, assign devices, move state (operator-signed)
    trustfleet contract ...   register, upgrade, retire contracts; dry-run one on a scenario
    trustfleet token ...      API tokens: operator, partner (one organisation), auditor
    trustfleet proof, verify-bundle, verify-consistency   proofs anyone can check offline
    trustfleet quarantine ... what the ledger refused, and why
    trustfleet shim truck     emulated truck hardware (GPS pty, 1-wire tree, RFID, door)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from trustfleet import __version__


def build_parser() -> argparse.ArgumentParser:
    from edge_agent import cli as agent_cli
    from firmware_shims import truck as shim_cli
    from hsm import cli as hsm_cli
    from ledger_node import business_cli, device_cli, token_cli
    from ledger_node import cli as node_cli
    from ledger_node.consortium import cli as consortium_cli
    from trustfleet import launcher

    parser = argparse.ArgumentParser(
        prog="trustfleet",
        description="TrustFleet: HSM-signed logistics readings on a verifiable ledger.")
    parser.add_argument("--version", action="version", version=f"trustfleet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    launcher.register(sub)
    node_cli.register(sub)
    device_cli.register(sub)
    business_cli.register(sub)
    consortium_cli.register(sub)
    token_cli.add_token_parser(sub)
    agent_cli.register(sub)
    hsm_cli.register(sub)
    shim_cli.register(sub)
    agent_cli.register_tools(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
