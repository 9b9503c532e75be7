"""What transformers assumes for a config.json key the file leaves out, read from
transformers' source: importing a config class imports torch, and validation stays
torch-free.
"""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path

_CLASS = re.compile(r"^class ", re.M)
_TIE_DEFAULT = re.compile(r"^    tie_word_embeddings: [^=\n]+= *(\w+)", re.M)


@cache
def tied(model_type: object) -> bool:
    """Whether transformers ties the head to the embeddings when a config.json of
    `model_type` leaves tie_word_embeddings out: the default its config class declares
    (False for a class without one: transformers then ties nothing). Types transformers does
    not know, and configs without a model_type, count as tied (the key's old default)."""
    spec = importlib.util.find_spec("transformers")
    if not isinstance(model_type, str) or spec is None or not spec.submodule_search_locations:
        return True
    declared = f'    model_type = "{model_type}"\n'
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    guess = folder / model_type / f"configuration_{model_type}.py"
    for path in [guess, *sorted(folder.glob("*/configuration_*.py"))]:
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        for block in _CLASS.split(text) if declared in text else ():
            if declared in block:
                default = _TIE_DEFAULT.search(block)
                return default is not None and default[1] == "True"
    return True
