"""`trustfleet token`: API tokens of a node (ledger_node.auth).

    trustfleet token create --data DIR --kind operator|partner|auditor [--org ORG] --name NAME
    trustfleet token list   --data DIR [--json]
    trustfleet token revoke NAME --data DIR

`--data` is the node's data folder (the one holding ledger.sqlite); the tokens live in
`tokens.db` beside it. `create` prints the token once, on stdout, and nothing else there (so
`TOKEN=$(trustfleet token create ...)` works); it cannot be shown again, only revoked and
replaced. Changes count at the API's next request: no restart. Exit 0; 1 the book refused
(name taken, no such token, bad kind or organisation); 2 the token store cannot be used.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ledger_node.auth import (
    KINDS,
    TokenBook,
    TokenError,
    TokenInfo,
    TokenStoreError,
    tokens_path,
    wall_clock_ms,
)
from ledger_node.quarantine_query import iso

__all__ = ["add_token_parser", "main", "run_token"]


def add_token_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `token create|list|revoke` to a `trustfleet`-style subcommand parser."""
    token = sub.add_parser("token", help="create, list and revoke API tokens of a node",
                           description="API tokens for the node's partner API: operator "
                           "(everything), auditor (reads everything), partner (its "
                           "organisation's shipments only).")
    tsub = token.add_subparsers(dest="token_command", required=True)

    def data(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", type=Path, required=True,
                       help="node data folder (holding ledger.sqlite); tokens go in tokens.db")

    create = tsub.add_parser("create", help="create a token and print it (once)")
    data(create)
    create.add_argument("--kind", required=True, choices=KINDS, help="what the token may do")
    create.add_argument("--org", help="the partner's organisation (partner tokens only)")
    create.add_argument("--name", required=True,
                        help="a unique name for the token (who holds it), e.g. alice@acme")
    listing = tsub.add_parser("list", help="the tokens (names, kinds, dates; never secrets)")
    data(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    revoke = tsub.add_parser("revoke", help="revoke a token: refused from the next request on")
    revoke.add_argument("name", help="the token's name")
    data(revoke)
    token.set_defaults(func=run_token)


def _book(data: Path) -> TokenBook:
    folder = data.parent if data.is_file() else data
    return TokenBook(tokens_path(folder / "ledger.sqlite"))


def _row(t: TokenInfo) -> str:
    state = f"revoked {iso(t.revoked)}" if t.revoked is not None else "active"
    return f"{t.name:<24} {t.kind:<9} {t.org or '-':<16} {iso(t.created):<26} {state}"


def run_token(args: argparse.Namespace) -> int:
    book = _book(args.data)
    try:
        if args.token_command == "create":
            token = book.create(args.name, args.kind, args.org, now_ms=wall_clock_ms())
            print(token)
            who = f"{args.kind}" + (f" of {args.org}" if args.org else "")
            print(f"trustfleet token: created {args.name!r} ({who}) in {book.path}; this is "
                  f"the only time the token is shown", file=sys.stderr)
        elif args.token_command == "list":
            tokens = book.list()
            if args.json:
                print(json.dumps([t.__dict__ for t in tokens], indent=1))
            elif not tokens:
                print(f"no tokens in {book.path}")
            else:
                print(f"{'NAME':<24} {'KIND':<9} {'ORG':<16} {'CREATED (UTC)':<26} STATE")
                print("\n".join(_row(t) for t in tokens))
        else:
            info = book.revoke(args.name, now_ms=wall_clock_ms())
            print(f"revoked {info.name!r} ({info.kind}) at {iso(info.revoked)}")
    except TokenStoreError as exc:
        print(f"trustfleet token: {exc}", file=sys.stderr)
        return 2
    except TokenError as exc:
        print(f"trustfleet token: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ledger_node.token_cli token ...`, until `trustfleet token` is wired."""
    parser = argparse.ArgumentParser(prog="trustfleet")
    add_token_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
