"""mergekit's merge options (`mergekit-yaml --help`) on an argparse parser, and back.

The flags are read from the click options that mergekit's own `add_merge_options` builds from
`MergeOptions`, so every option is accepted and spelled as mergekit spells it (`--cuda`,
`--copy-tokenizer/--no-copy-tokenizer`, `--out-shard-size 5B`, `-j`, ...). mergekit's options
module imports torch: `LazyParser` adds them only when the `merge` parser is used.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from mergekit_layerswap.errors import InputError

if TYPE_CHECKING:
    import click
    from mergekit.options import MergeOptions


class LazyParser(argparse.ArgumentParser):
    """An ArgumentParser whose `later` adds arguments when it first parses: for arguments
    whose definitions import torch, so that no other command (nor `--help`) does."""

    later: Callable[[argparse.ArgumentParser], None] | None = None

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self.later is not None:
            add, self.later = self.later, None
            add(self)
        return super().parse_known_args(args, namespace)


class _Switch(argparse.Action):
    """A flag spelled two ways, as click spells mergekit's: `--x` sets True, `--no-x` False."""

    def __init__(self, option_strings: list[str], dest: str, off: list[str], **kwargs) -> None:
        self.off = set(off)
        super().__init__([*option_strings, *off], dest, nargs=0, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, option_string not in self.off)


#: mergekit-yaml options that `merge` accepts but does not list: only their default works
#: there (`merge.check` refuses the other value in one line: safetensors only).
UNLISTED = frozenset({"safe_serialization"})


def add_merge_options(parser: argparse.ArgumentParser) -> None:
    """mergekit-yaml's options, spelled, explained and grouped as mergekit declares them (read
    from the click options its `add_merge_options` builds from `MergeOptions`), except that
    `-h` does not list those in UNLISTED."""
    import click
    from mergekit.options import OPTION_CATEGORIES
    from mergekit.options import add_merge_options as click_options

    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in click.command()(click_options(lambda **_: None)).params:
        assert isinstance(option, click.Option)
        category = OPTION_CATEGORIES.get(option.name or "", "other")
        if category not in groups:
            groups[category] = parser.add_argument_group(f"mergekit: {category}")
        kwargs: dict = {"dest": option.name, "default": option.default}
        if option.is_flag and option.secondary_opts:
            kwargs |= {"action": _Switch, "off": option.secondary_opts}
        elif option.is_flag:
            kwargs["action"] = "store_true"
        elif option.count:
            kwargs["action"] = "count"
        else:
            kwargs |= {"type": _converter(option), "metavar": option.type.name.upper()}
        text = (option.help or "").replace("%", "%%")
        if option.show_default and option.default is not None and option.default is not False:
            text += f" [default: {option.opts[0] if option.default is True else option.default}]"
        if option.name in UNLISTED:
            text = argparse.SUPPRESS
        groups[category].add_argument(*option.opts, help=text, **kwargs)


def _converter(option: click.Option) -> Callable[[str], object]:
    """argparse's `type` for a click option: click's own conversion and message."""
    import click

    def convert(text: str) -> object:
        try:
            return option.type.convert(text, option, None)
        except click.BadParameter as error:
            raise argparse.ArgumentTypeError(error.message) from None

    convert.__name__ = option.type.name  # argparse names it in "invalid size value: 'x'"
    return convert


#: Options whose values torch or numpy refuse with a traceback: flag -> (name, lowest, highest).
_RANGES = {
    "--random-seed": ("random_seed", 0, 2**32 - 1),  # numpy's seed range
    "-j/--num-threads": ("num_threads", 1, None),
    "--write-threads": ("write_threads", 1, None),
}


def merge_options(args: argparse.Namespace) -> MergeOptions:
    """The MergeOptions that `add_merge_options`' flags parsed into `args`; InputError, one
    line per option, for a value out of its range."""
    from mergekit.options import MergeOptions

    problems = []
    for flag, (name, low, high) in _RANGES.items():
        value = getattr(args, name)
        if value is not None and not (low <= value and (high is None or value <= high)):
            allowed = f"{low}..{high}" if high is not None else f"at least {low}"
            problems.append(f"{flag}: got {value}; give {allowed}")
    if problems:
        raise InputError(problems)
    return MergeOptions(**{name: getattr(args, name) for name in MergeOptions.model_fields})
