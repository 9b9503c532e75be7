"""`KEY=VALUE` overrides of a loaded YAML mapping, as torchtune's command line takes them.

`models.lang=org/expert` sets a nested key, `merges.0.dtype=float16` a list item by its
index, and `evaluation.languages=[te,en]` shows that each value is parsed as YAML. Every key
on the path must exist, except the last key of a mapping, which may be new (an optional
setting the file leaves out); what the result means is for the file's own validation.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import yaml

from mergekit_layerswap.errors import InputError


def apply(raw: dict, overrides: Sequence[str]) -> dict:
    """A copy of `raw` with every override set, in order; InputError names each bad one."""
    result = copy.deepcopy(raw)
    problems = []
    for override in overrides:
        problem = _set(result, override)
        if problem is not None:
            problems.append(f"override {override!r}: {problem}")
    if problems:
        raise InputError(problems)
    return result


def _set(raw: dict, override: str) -> str | None:
    """Set one `KEY=VALUE` in `raw`; why it cannot be set, or None."""
    key, equals, text = override.partition("=")
    parts = key.split(".")
    if not equals or not all(parts):
        return "write KEY=VALUE with a dotted KEY, e.g. models.lang=your-org/expert"
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        return f"the value is not valid YAML ({str(error).splitlines()[0]})"
    container: Any = raw
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "the file"
        last = depth == len(parts) - 1
        if isinstance(container, list):
            if not (part.isdigit() and int(part) < len(container)):
                return f"{where} holds {len(container)} items: give an index below {len(container)}"
            index: int | str = int(part)
        elif isinstance(container, dict):
            if part not in container and not last:
                known = ", ".join(str(k) for k in container) or "none"
                return f"{where} has no key {part!r} (keys: {known})"
            index = part
        else:
            return f"{where} is a single value ({container!r}), not a mapping or a list"
        if last:
            container[index] = value
        else:
            container = container[index]
    return None
