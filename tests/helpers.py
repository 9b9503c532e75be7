"""Small helpers shared by the tests: layer_swap configs and reading merged tensors."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def layer_swap(host: Path | str, donors: dict, **parameters) -> dict:
    """A layer_swap mergekit config: `donors` maps each donor to its bottom/top/layers."""
    raw = {
        "merge_method": "layer_swap",
        "base_model": str(host),
        "models": [{"model": str(host)}]
        + [{"model": str(d), "parameters": claim} for d, claim in donors.items()],
        "dtype": "bfloat16",
    }
    if parameters:
        raw["parameters"] = parameters
    return raw


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors model folder (single file or shards)."""
    found: dict[str, torch.Tensor] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        found.update(load_file(path))
    return found


def suite_swap(name: str = "swap", **parameters) -> dict:
    """A suite's layer_swap merge of the `aliases` fixture: swahili's bottom 2 layers into
    math, with the top-level `parameters` given."""
    return {
        "name": name,
        "merge_method": "layer_swap",
        "base_model": "math",
        "models": [{"model": "math"}, {"model": "swahili", "parameters": {"bottom": 2}}],
        **({"parameters": parameters} if parameters else {}),
    }
