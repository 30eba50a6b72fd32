"""``python -m firmware_shims shim truck ...``: the shims' commands without the umbrella CLI."""

from __future__ import annotations

import argparse
import sys

from firmware_shims.truck import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firmware_shims")
    commands = parser.add_subparsers(dest="command", required=True)
    register(commands)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
