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

    merge = sub.add_parser("merge", help="run a mergekit config (layer_swap or any) atomically")
    merge.add_argument("config", help="mergekit YAML config")
    merge.add_argument("out", help="output folder (must not already hold a model)")
    merge.add_argument("--cuda", action="store_true", help="do the arithmetic on the GPU")
    merge.add_argument(
        "--no-copy-tokenizer", dest="copy_tokenizer", action="store_false",
        help="do not copy the host's tokenizer",
    )  # fmt: skip
    merge.add_argument("--random-seed", type=int, help="seed for randomized methods (DARE)")
    merge.add_argument("--quiet", action="store_true", help="no progress bars")
    merge.set_defaults(handler=_merge)

    check = sub.add_parser("validate", help="report every problem of a layer_swap config")
    check.add_argument("config", help="mergekit YAML config with merge_method: layer_swap")
    check.set_defaults(handler=_validate)
    # --- subcommands: each adds its parser here and sets `handler` ---
    return parser


def _problems(path: str, error: Exception) -> UsageError:
    lines = getattr(error, "problems", None) or [str(error)]
    return UsageError(
        f"{path}: " + "\n  ".join(lines)
        if len(lines) == 1
        else f"{path} is invalid:\n  " + "\n  ".join(lines)
    )


def _validate(args: argparse.Namespace) -> int:
    from mergekit_layerswap import swap, validate

    try:
        plan = validate.plan(validate.load(args.config))
    except validate.ConfigError as error:
        raise _problems(args.config, error) from None
    print(f"{args.config}: OK ({plan.num_layers} layers, host {plan.host})")
    rows = [("embeddings", "pre")]
    rows += [(f"layer {index:>3}", index) for index in range(plan.num_layers)]
    rows += [("norm + head", "post")]
    for label, position in rows:
        weights = swap.tensor_weights(position, plan.num_layers, plan.swap)
        print(f"  {label:>11}: " + " + ".join(f"{w:.3g} {src}" for src, w in weights.items()))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from mergekit_layerswap import merge, validate

    try:
        out = merge.run(
            validate.load(args.config), args.out, cuda=args.cuda,
            copy_tokenizer=args.copy_tokenizer, quiet=args.quiet, random_seed=args.random_seed,
        )  # fmt: skip
    except (validate.ConfigError, merge.OutputError) as error:
        raise _problems(args.config, error) from None
    print(f"merged into {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except UsageError as error:
        print(f"mergekit-layerswap {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
