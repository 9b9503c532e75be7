"""`layer_swap` as a mergekit merge method: one declarative spec, one small function.

The host is the `base_model`; the swap parameters (`swap.Claim`'s per donor, `swap.SwapConfig`'s
for the whole merge) become the kernel's mergekit parameters. Per output tensor the kernel asks
the swap rule (`swap.tensor_weights`) which sources it takes: a single source is returned as is
(bit for bit), a transition layer is blended in float32 and cast back to the inputs' dtype.
Importing this module registers the method with mergekit (the import hook does so as soon as
mergekit's `merge_methods` is imported).
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Callable

import torch
from mergekit.common import ModelReference
from mergekit.merge_methods import (
    BasePolicy,
    InputContract,
    PerNonBase,
    TensorGroup,
    merge_method,
    register,
)
from mergekit.merge_methods.base import FunctionalGroupMergeMethod
from pydantic import PositiveInt

from mergekit_layerswap import checkpoint, swap
from mergekit_layerswap.validate import METHOD

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


def _with_swap_parameters(kernel: Callable) -> Callable:
    """Give `kernel(group, **parameters)` the signature mergekit reads a method's parameters
    from: the swap parameters as declared in `swap` (per donor: `PerNonBase`), plus
    `num_layers` (in-memory merges) and `slice_weights` (compiled slices)."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [inspect.Parameter("group", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    annotations: dict = {"group": TensorGroup, "return": torch.Tensor}
    declared = [(swap.donor_parameters(), PerNonBase), (swap.shared_parameters(), None)]
    for fields, scope in declared:
        for name, info in fields.items():
            annotation = info.rebuild_annotation()
            annotations[name] = scope[annotation] if scope else annotation
            parameters.append(inspect.Parameter(name, keyword, default=info.default))
    annotations |= {"num_layers": PositiveInt | None, "slice_weights": str}
    parameters += [
        inspect.Parameter("num_layers", keyword, default=None),
        inspect.Parameter("slice_weights", keyword, default=""),
    ]
    kernel.__signature__ = inspect.Signature(parameters)
    kernel.__annotations__ = annotations
    return kernel


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
    """{input id: weight} for this tensor, from the swap rule and the per-donor claims.
    When no donor claims anything (e.g. a generic call with default parameters, as
    mergekit's own tests make), the host is returned unchanged, with a warning; mergekit
    configs never get here that way (validation refuses a donor that claims nothing)."""
    per_donor = {name: parameters.pop(name) for name in swap.donor_parameters()}
    claims = tuple(
        swap.Claim(e.id, **{name: values[e.id] for name, values in per_donor.items()})
        for e in group.non_base
    )
    if all(claim.claims_nothing for claim in claims):
        warnings.warn(
            "layer_swap: no donor claims any layer (bottom, top and layers are unset); "
            "the result is the base model unchanged",
            stacklevel=2,
        )
        return {group.base.id: 1.0}
    config = swap.SwapConfig(group.base.id, claims, **parameters)
    position = checkpoint.tensor_position(group.metadata.name or "")
    return dict(swap.tensor_weights(position, _layer_count(group, num_layers), config))


@merge_method(
    name=METHOD,
    pretty_name="Layer Swapping",
    reference_url=PAPER_URL,
    contract=InputContract(base=BasePolicy.REQUIRED),
    uses_accelerator=False,
)
@_with_swap_parameters
def _kernel(group, *, num_layers=None, slice_weights="", **parameters):
    if slice_weights:  # a slice compiled by patches.compile_config: its sources are its weights
        by_name = {str(e.id): e.id for e in group.entries}
        weights = {by_name[name]: w for name, w in json.loads(slice_weights).items()}
    else:
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
                f"{swap.format_ranges(present)}; pass num_layers={present[-1] + 1}"
            )
        return super().__call__(groups, parameters=parameters, **options)


layer_swap = LayerSwapMethod(_kernel.spec, _kernel.implementation)

register(layer_swap)  # the one registration: the import hook imports this module with mergekit
