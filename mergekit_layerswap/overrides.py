"""`KEY=VALUE` overrides of a loaded YAML mapping, as torchtune's command line takes them.

`models.lang=org/expert` sets a nested key, `merges.0.dtype=float16` a list item by its
index, and `evaluation.languages=[te,en]` shows that each value is parsed as YAML (strictly:
a key given twice is an error). A key holding a dot is written in double quotes:
`models."llama3.1"=org/x`. Every key on the path must exist, except the last key of a
mapping, which may be new (an optional setting the file leaves out); what the result means
is for the file's own validation. An override changes its own path only, never another
place that shares a value with it through a YAML anchor.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

import yaml

from mergekit_layerswap import config_files
from mergekit_layerswap.errors import InputError

_PART = r'"[^"]+"|[^."=]+'
#: KEY=VALUE: dotted parts, each bare (no dot, quote or equals sign) or in double quotes.
_OVERRIDE = re.compile(rf"((?:{_PART})(?:\.(?:{_PART}))*)=(.*)", re.S)
_PARTS = re.compile(r'"([^"]+)"|([^."=]+)')


def apply(raw: dict, overrides: Sequence[str]) -> dict:
    """A copy of `raw` with every override set, in order; InputError names each bad one.
    `raw`, and every value it shares through YAML anchors, stays as it was: each override
    copies the mappings and lists on its own path before it changes one."""
    result = copy.copy(raw)
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
    match = _OVERRIDE.fullmatch(override)
    if match is None:
        return (
            "write KEY=VALUE with a dotted KEY, e.g. models.lang=your-org/expert "
            '(a key holding a dot in double quotes: models."llama3.1"=your-org/expert)'
        )
    parts = [quoted or bare for quoted, bare in _PARTS.findall(match[1])]
    try:
        value = config_files.parse_yaml(match[2])
    except yaml.YAMLError as error:
        return f"the value is not valid YAML ({str(error).splitlines()[0]})"
    container: Any = raw
    for depth, part in enumerate(parts):
        where = ".".join(f'"{p}"' if "." in p else p for p in parts[:depth]) or "the file"
        last = depth == len(parts) - 1
        if isinstance(container, list):
            if not (part.isdigit() and int(part) < len(container)):
                return f"{where} holds {len(container)} items: give an index below {len(container)}"
            index: int | str = int(part)
        elif isinstance(container, dict):
            if part not in container and not last:
                known = ", ".join(str(k) for k in container) or "none"
                problem = f"{where} has no key {part!r} (keys: {known})"
                dotted = [k for k in container if str(k).startswith(f"{part}.")]
                if dotted:
                    path = "" if depth == 0 else f"{where}."
                    problem += f'; a key holding a dot goes in double quotes: {path}"{dotted[0]}"'
                return problem
            index = part
        else:
            return f"{where} is a single value ({container!r}), not a mapping or a list"
        if last:
            container[index] = value
        else:  # a copy: the value may be shared through a YAML anchor
            container[index] = copy.copy(container[index])
            container = container[index]
    return None
