"""`trustfleet contract test FILE --scenario SCENARIO`: the operator's dry run.

Parses the contract FILE exactly as registration does (errors as FILE:line:column), replays
the SCENARIO (scenario.py: a scripted stream, or exported readings as JSON lines) through a
fresh engine and prints the events the contract would emit: one human-readable line each,
or one JSON object per line with --json. Exit status: 0 ran (whatever it emitted), 2 the
contract or the scenario is invalid or unreadable.

The lead wires it into the `trustfleet contract` group:

    test = add_test_parser(contract_subparsers)   # sets func=run_test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ledger_node.contracts.document import parse_contract
from ledger_node.contracts.errors import ContractError
from ledger_node.contracts.scenario import format_event, parse_scenario, run_scenario

MAX_FILE_BYTES = 64 * 1024 * 1024


def add_test_parser(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "test", help="dry run: replay a scenario through a contract and print its events",
        description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("file", type=Path, metavar="FILE", help="contract document (YAML or JSON)")
    p.add_argument("--scenario", type=Path, required=True,
                   help="scenario (YAML/JSON) or exported readings (JSON lines)")
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.set_defaults(func=run_test)
    return p


def _read(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None


def run_test(args: argparse.Namespace) -> int:
    try:
        doc = parse_contract(_read(args.file), str(args.file))
        scenario = parse_scenario(_read(args.scenario), str(args.scenario))
        result = run_scenario(scenario, doc)
    except (ContractError, ValueError) as exc:
        print(f"trustfleet contract test: {exc}", file=sys.stderr)
        return 2
    for _, ev in result.events:
        if args.json:
            print(json.dumps(ev.to_map(), sort_keys=True, separators=(",", ":")))
        else:
            print(format_event(ev))
    if not args.json:
        print(f"-- {len(result.events)} event(s) from {result.readings} reading(s), "
              f"{result.ticks} tick(s)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m ledger_node.contracts.cli test FILE --scenario S` (until wired)."""
    parser = argparse.ArgumentParser(prog="trustfleet contract")
    sub = parser.add_subparsers(dest="contract_command", required=True)
    add_test_parser(sub)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
