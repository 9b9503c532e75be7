"""`mergekit-layerswap`: one argparse command line over the package's rooms.

Each subcommand imports what it needs inside its handler, so `--help` and `validate`
never import torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mergekit-layerswap",
        description="Layer swapping for mergekit, scored on MGSM with lm-evaluation-harness.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # --- subcommands: each adds its parser here and sets `handler` ---
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except UsageError as error:
        print(f"mergekit-layerswap {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
