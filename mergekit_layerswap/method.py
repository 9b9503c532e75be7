"""`layer_swap` as a mergekit merge method: one declarative spec, one small function.

The host is the `base_model`; the kernel's parameters are the swap's (`swap.Claim`'s per
donor, `swap.SwapConfig`'s for the whole merge; written out below and pinned to those fields
by tests/test_registration.py). Per output tensor the kernel asks the swap rule
(`swap_rule.tensor_weights`) which sources it takes: a single source is returned as is (bit
for bit), a transition layer is blended in float32 and cast back to the inputs' dtype.
`plugin.install()` registers `layer_swap` with mergekit's public `register`.
"""

from __future__ import annotations

import warnings
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
from mergekit.merge_methods.base import FunctionalGroupMergeMethod
from pydantic import NonNegativeInt, PositiveInt

from mergekit_layerswap import checkpoint, swap, swap_rule
from mergekit_layerswap.swap import METHOD

PAPER_URL = "https://arxiv.org/abs/2410.01335"


def combine(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """One source: itself (bit for bit); several: their weighted sum in float32, cast back
    to the first one's dtype (the streamed writer computes transitions with this too)."""
    if len(tensors) == 1:
        return tensors[0]
    blend = torch.zeros_like(tensors[0], dtype=torch.float32)
    for tensor, weight in zip(tensors, weights, strict=True):
        blend.add_(tensor.to(torch.float32), alpha=weight)
    return blend.to(tensors[0].dtype)


def _layer_count(group: TensorGroup, num_layers: int | None) -> int:
    if num_layers is not None:
        return num_layers
    if isinstance(group.base.id, ModelReference):
        return checkpoint.model_info(str(group.base.id)).num_layers
    raise ValueError(
        "layer_swap: pass parameters={'num_layers': N} when merging in-memory state dicts "
        "(with mergekit configs the layer count comes from the models' config.json)"
    )


def _rule_weights(group: TensorGroup, num_layers: int | None, parameters: dict) -> dict:
    """{input id: weight} for this tensor, from the swap rule. When no donor claims anything
    (e.g. a generic call with default parameters, as mergekit's own tests make), the host is
    returned unchanged, with a warning; mergekit configs never get here that way (validation
    refuses a donor that claims nothing)."""
    donors = [entry.id for entry in group.non_base]
    config = swap.SwapConfig.from_parameters(group.base.id, donors, parameters)
    if all(claim.claims_nothing for claim in config.claims):
        warnings.warn(
            "layer_swap: no donor claims any layer (bottom, top and layers are unset); "
            "the result is the base model unchanged",
            stacklevel=2,
        )
        return {group.base.id: 1.0}
    position = checkpoint.tensor_position(group.metadata.name or "")
    return dict(swap_rule.tensor_weights(position, _layer_count(group, num_layers), config))


@merge_method(
    name=METHOD,
    pretty_name="Layer Swapping",
    reference_url=PAPER_URL,
    contract=InputContract(base=BasePolicy.REQUIRED),
    uses_accelerator=False,
)
def _kernel(
    group: TensorGroup,
    *,
    bottom: PerNonBase[NonNegativeInt] = 0,
    top: PerNonBase[NonNegativeInt] = 0,
    layers: PerNonBase[str] = "",
    transition: NonNegativeInt = 0,
    embed_source: Literal["auto", "base"] = "auto",
    head_source: Literal["auto", "base"] = "auto",
    num_layers: PositiveInt | None = None,
) -> torch.Tensor:
    """`num_layers`: only for in-memory merges (configs take it from the host's config.json)."""
    parameters = {"bottom": bottom, "top": top, "layers": layers, "transition": transition}
    parameters |= {"embed_source": embed_source, "head_source": head_source}
    weights = _rule_weights(group, num_layers, parameters)
    tensors = {e.id: e.tensor for e in group.entries}
    return combine([tensors[source] for source in weights], list(weights.values()))


class LayerSwapMethod(FunctionalGroupMergeMethod):
    """The layer_swap method object. In-memory merges (`merge_state_dicts`, which calls
    the method on all tensor groups at once) are checked against the layers present: a
    wrong `num_layers` would place the top/transition layers wrongly, or not at all.
    mergekit's planner calls `_execute_resolved` instead, with validated configs."""

    def __call__(self, groups, /, *, parameters=None, **options) -> tuple[torch.Tensor, ...]:
        groups = tuple(groups)
        num_layers = (parameters or {}).get("num_layers")
        positions = (checkpoint.tensor_position(g.metadata.name or "") for g in groups)
        present = sorted({p for p in positions if isinstance(p, int)})
        if isinstance(num_layers, int) and present and present[-1] + 1 != num_layers:
            raise ValueError(
                f"layer_swap: num_layers={num_layers}, but the state dicts hold layers "
                f"{swap_rule.format_ranges(present)}; pass num_layers={present[-1] + 1}"
            )
        return super().__call__(groups, parameters=parameters, **options)


layer_swap = LayerSwapMethod(_kernel.spec, _kernel.implementation)
