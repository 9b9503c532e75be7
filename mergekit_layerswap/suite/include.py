"""`include:` in a suite file, as in lm-eval's task YAMLs: the named files' keys, then the
including file's own, which win key by key.

`include` is a path or a list of paths, each relative to the folder of the file that names it
(absolute paths too); an included file may include others. A file that cannot be read, is
not a mapping or includes itself (directly or not) is one problem line naming it.
`baselines.yml` in the recipes folder holds the usual merges every layer-swap suite compares
against (soup, task arithmetic, TIES, DARE-TIES), as `baselines:` over the aliases `base`,
`math` and `lang`; the recipes and the lab's suite include it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mergekit_layerswap
from mergekit_layerswap import validate
from mergekit_layerswap.errors import InputError

_PACKAGE = Path(mergekit_layerswap.__file__).parent
#: The suite files this package ships: inside the package in a wheel, at the top of a clone of
#: the repository (an editable install).
RECIPES = _PACKAGE / "recipes" if (_PACKAGE / "recipes").is_dir() else _PACKAGE.parent / "recipes"
BASELINES = RECIPES / "baselines.yml"


def expand(raw: dict[str, Any], folder: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """`raw` with its `include:` resolved (relative to `folder`; `seen`: the files being
    included, the including file's own first); InputError lists every file that could not be
    included."""
    names = raw.get("include")
    if names is None:
        return raw
    problems: list[str] = []
    merged: dict[str, Any] = {}
    for name in [names] if isinstance(names, str) else names:
        if not isinstance(name, str):
            problems.append(f"include: {name!r} is not a path; give a YAML file's path")
            continue
        path = (folder / Path(name).expanduser()).resolve()
        if path in seen:
            problems.append(f"include: {name} includes itself (through {seen[-1].name})")
            continue
        try:
            merged |= expand(validate.load(path), path.parent, (*seen, path))
        except InputError as error:
            problems += [
                line if line.startswith("include: ") else f"include: {line}"
                for line in error.problems
            ]
    if problems:
        raise InputError(problems)
    return merged | {key: value for key, value in raw.items() if key != "include"}
