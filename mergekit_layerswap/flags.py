"""Command-line flags generated from a pydantic settings model, as mergekit's `options.py`
builds `mergekit-yaml`'s from `MergeOptions`: one `--field-name` per field, its help the
field's description, its default and choices read from the model, never restated by hand. A
flag not given stays None, so the model's own default (and validation) applies."""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable
from typing import Any

if typing.TYPE_CHECKING:
    from pydantic import BaseModel


def _kinds(annotation: Any) -> tuple:
    """The types an annotation allows (`int | None` -> (int, NoneType); Annotated unwrapped)."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _kinds(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(kind for arg in typing.get_args(annotation) for kind in _kinds(arg))
    return (annotation,)


def flag(field: str) -> str:
    """A settings field's command-line flag: `max_gen_toks` -> `--max-gen-toks`."""
    return "--" + field.replace("_", "-")


def add_flags(
    parser: argparse.ArgumentParser | argparse._ActionsContainer,
    model: type[BaseModel],
    names: Iterable[str],
) -> None:
    """A flag on `parser` for each of `model`'s fields `names`."""
    from pydantic_core import PydanticUndefined

    for name in names:
        info = model.model_fields[name]
        kinds = [kind for kind in _kinds(info.annotation) if kind is not type(None)]
        text = (info.description or "").replace("%", "%%")
        default = info.default
        shown = not (default is PydanticUndefined or default is None or default == ())
        if shown and not isinstance(default, bool) and "default" not in text:
            text += f" [default: {default}]"
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": text}
        if kinds == [bool]:
            kwargs["action"] = "store_true"
        elif len(kinds) == 1 and typing.get_origin(kinds[0]) is typing.Literal:
            kwargs["choices"] = typing.get_args(kinds[0])
        elif kinds in ([int], [float]):
            kwargs["type"] = kinds[0]
        parser.add_argument(flag(name), **kwargs)


def given(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The values of `model`'s flags that were given."""
    values = {name: getattr(args, name, None) for name in model.model_fields}
    return {name: value for name, value in values.items() if value is not None}
