"""`include:` in a suite file, as in lm-eval's task YAMLs: the named files' keys, then the
including file's own, which win key by key.

`include` is a path or a list of paths, each relative to the folder of the file that names it
(absolute paths too); an included file may include others. A file that is missing, cannot be
read, is not a mapping or includes itself (directly or not) is one problem line naming it and
the fix, reported with the suite's other problems; the files that could be read still count.
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


def expand(
    raw: dict[str, Any], folder: Path, problems: list[str], seen: tuple[Path, ...] = ()
) -> dict[str, Any]:
    """`raw` with its `include:` resolved, relative to `folder`; `seen`: the files being
    included, outermost first. Each file that cannot be included adds a line to `problems`."""
    names = raw.get("include")
    if names is None:
        return raw
    own = {key: value for key, value in raw.items() if key != "include"}
    listed = [names] if isinstance(names, str) else names
    if not (isinstance(listed, list) and all(isinstance(name, str) for name in listed)):
        problems.append(f"include: {names!r} is not a path; give a YAML file's path or a list")
        return own
    merged: dict[str, Any] = {}
    for name in listed:
        path = (folder / Path(name).expanduser()).resolve()
        if path in seen:
            circle = " -> ".join(p.name for p in (*seen[seen.index(path) :], path))
            problems.append(
                f"include: {name} includes itself ({circle}); remove one of these includes"
            )
        elif not path.is_file():
            problems.append(
                f"include: {name}: no such file ({path}); give a path relative to the "
                "file that includes it"
            )
        else:
            try:
                merged |= expand(validate.load(path), path.parent, problems, (*seen, path))
            except InputError as error:
                problems += [f"include: {line}" for line in error.problems]
    return merged | own
