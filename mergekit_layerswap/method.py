"""`layer_swap` as a mergekit merge method: one declarative spec, one small function.

The host is the `base_model`; each donor's `bottom`/`top`/`layers` and the shared
`transition` are mergekit parameters. Per output tensor the function asks the swap rule
(`swap.tensor_weights`) which sources it takes: a single source is returned as is (bit for
bit), a transition layer is blended in float32 and cast back to the inputs' dtype.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Hashable
from typing import Literal

import torch
from mergekit.common import ModelReference
from mergekit.merge_methods import (
    BasePolicy,
    InputContract,
    PerNonBase,
    TensorGroup,
    merge_method,
)
from pydantic import NonNegativeInt, PositiveInt

from mergekit_layerswap import checkpoint, swap, validate

PAPER_URL = "https://arxiv.org/abs/2410.01335"


def _layer_count(group: TensorGroup, num_layers: int | None) -> int:
    if num_layers is not None:
        return num_layers
    host = group.base.id
    if isinstance(host, ModelReference):
        return checkpoint.model_info(str(host)).num_layers
    raise ValueError(
        "layer_swap: pass parameters={'num_layers': N} when merging in-memory state dicts "
        "(with mergekit configs the layer count comes from the models' config.json)"
    )


@merge_method(
    name="layer_swap",
    pretty_name="Layer Swapping",
    reference_url=PAPER_URL,
    contract=InputContract(base=BasePolicy.REQUIRED, min_inputs=2, min_non_base=1),
    uses_accelerator=False,
)
def layer_swap(
    group: TensorGroup,
    bottom: PerNonBase[NonNegativeInt] = 0,
    top: PerNonBase[NonNegativeInt] = 0,
    layers: PerNonBase[str] = "",
    transition: NonNegativeInt = 0,
    embed_source: Literal["auto", "base"] = "auto",
    head_source: Literal["auto", "base"] = "auto",
    num_layers: PositiveInt | None = None,
) -> torch.Tensor:
    host = group.base
    config = swap.SwapConfig(
        host=host.id,
        claims=tuple(
            swap.Claim(e.id, bottom[e.id], top[e.id], layers[e.id]) for e in group.non_base
        ),
        transition=transition,
        embed_source=embed_source,
        head_source=head_source,
    )
    position = checkpoint.tensor_position(group.metadata.name or "")
    weights = swap.tensor_weights(position, _layer_count(group, num_layers), config)
    tensors: dict[Hashable, torch.Tensor] = {e.id: e.tensor for e in group.entries}
    if len(weights) == 1:
        return tensors[next(iter(weights))]
    blend = torch.zeros_like(host.tensor, dtype=torch.float32)
    for source, weight in weights.items():
        blend.add_(tensors[source].to(torch.float32), alpha=weight)
    return blend.to(host.tensor.dtype)


def register() -> None:
    """Make `layer_swap` available by name to mergekit (idempotent)."""
    from mergekit import merge_methods

    try:
        existing = merge_methods.get(layer_swap.spec.name)
    except RuntimeError:
        merge_methods.register(layer_swap)
        return
    if existing is not layer_swap:
        raise RuntimeError("another merge method named 'layer_swap' is already registered")


def _exit_on_config_error(hook):
    """An uncaught ConfigError (e.g. from the stock mergekit-yaml) prints its lines, not a
    traceback, and exits 2; every other exception keeps the previous hook."""

    def excepthook(kind, error, traceback):
        if isinstance(error, validate.ConfigError):
            for line in error.problems:
                print(f"layer_swap config error: {line}", file=sys.stderr)
            sys.exit(2)
        hook(kind, error, traceback)

    excepthook.layerswap = True
    return excepthook


def guard_planner(plan_module) -> None:
    """Check every layer_swap config when mergekit's planner starts, before any tensor is read.

    mergekit silently ignores unknown parameter names and checks nothing across donors;
    `MergePlanner.normalize_config` is the first call that sees the whole configuration, so
    the check runs there (pinned by tests/test_registration.py).
    """
    planner = plan_module.MergePlanner
    original = planner.normalize_config
    if getattr(original, "layerswap", False):
        return

    @functools.wraps(original)
    def normalize_config(self):
        if self.config.merge_method == layer_swap.spec.name:
            raw = self.config.model_dump(mode="json", exclude_none=True)
            problems = validate.check(raw)
            if problems:
                if not getattr(sys.excepthook, "layerswap", False):
                    sys.excepthook = _exit_on_config_error(sys.excepthook)
                raise validate.ConfigError(problems)
        return original(self)

    normalize_config.layerswap = True
    planner.normalize_config = normalize_config
