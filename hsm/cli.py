"""`trustfleet hsm ...`: create and inspect SoftHSM2 test rigs.

The umbrella CLI calls `register(subparsers)`. This is an entry point: it reads
TRUSTFLEET_PKCS11_MODULE (the PKCS#11 module path; default the SoftHSM2 one).
Run standalone with `python -m hsm.cli hsm list --dir DIR`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hsm.errors import HsmError
from hsm.rig import MODULE_ENV, SoftHsmRig, TokenInfo, module_path_from_env


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `hsm` command (subcommands `init-rig` and `list`) to an argparse CLI."""
    hsm = subparsers.add_parser(
        "hsm",
        help="manage SoftHSM2 test rigs (tokens with P-256 signing keys)",
        description=(
            "Manage SoftHSM2 test rigs: a folder with a SoftHSM config, its tokens and "
            f"their PINs (pins.json, mode 0600). The PKCS#11 module is taken from {MODULE_ENV} "
            "(default /usr/lib/softhsm/libsofthsm2.so)."
        ),
    )
    commands = hsm.add_subparsers(dest="hsm_command", required=True, metavar="COMMAND")

    init = commands.add_parser(
        "init-rig",
        help="create a rig with one token (and P-256 key) per device; idempotent",
        description=(
            "Create (or complete) a rig in DIR with tokens PREFIX1..PREFIXN and, with --node, "
            "a token for a ledger node. Each token gets a P-256 signing key generated inside "
            "it. Running it again creates only what is missing. Prints each label and kid."
        ),
    )
    init.add_argument("--devices", type=int, required=True, metavar="N", help="device count")
    init.add_argument("--dir", type=Path, required=True, metavar="DIR", help="rig folder")
    init.add_argument(
        "--prefix", default="truck-", help="device token label prefix (default: %(default)s)"
    )
    init.add_argument("--node", metavar="LABEL", help="also create a node token, e.g. node-1")
    init.set_defaults(func=cmd_init_rig)

    show = commands.add_parser(
        "list",
        help="list a rig's tokens: label, serial, key label, kid",
        description="List every initialised token in the rig at DIR with its signing key's kid.",
    )
    show.add_argument("--dir", type=Path, required=True, metavar="DIR", help="rig folder")
    show.set_defaults(func=cmd_list)


def cmd_init_rig(args: argparse.Namespace) -> int:
    if args.devices < 0:
        print("error: --devices must be 0 or more", file=sys.stderr)
        return 2
    labels = [f"{args.prefix}{n}" for n in range(1, args.devices + 1)]
    if args.node:
        labels.append(args.node)
    try:
        rig = SoftHsmRig(args.dir, module_path_from_env())
        for info in rig.ensure_tokens(labels):
            print(f"{info.label}\t{info.kid}")
    except (HsmError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"rig ready in {rig.directory}; SOFTHSM2_CONF={rig.conf_path}", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if not (args.dir / "softhsm2.conf").is_file():
        print(f"error: {args.dir} is not a rig (no softhsm2.conf); run init-rig", file=sys.stderr)
        return 1
    try:
        tokens = SoftHsmRig(args.dir, module_path_from_env()).tokens()
    except HsmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(_table(tokens))
    return 0


def _table(tokens: list[TokenInfo]) -> str:
    rows = [("LABEL", "SERIAL", "KEY", "KID")]
    rows += [(t.label, t.serial, t.key_label if t.has_key else "-", t.kid or "-") for t in tokens]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        + "  "
        + row[3]
        for row in rows
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hsm.cli")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
