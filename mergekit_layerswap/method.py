"""`layer_swap` as a mergekit merge method: one declarative spec, one small function.

The host is the `base_model`; each donor's `bottom`/`top`/`layers` and the shared
`transition` are mergekit parameters. Per output tensor the function asks the swap rule
(`swap.tensor_weights`) which sources it takes: a single source is returned as is (bit for
bit), a transition layer is blended in float32 and cast back to the inputs' dtype.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Hashable
from typing import Literal

import torch
import yaml
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
from mergekit_layerswap.plan import compile_slices

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


def _rule_weights(group: TensorGroup, num_layers: int | None, **parameters) -> dict:
    """{input id: weight} for this tensor, from the swap rule and the per-donor claims."""
    bottom, top, layers = (parameters.pop(name) for name in ("bottom", "top", "layers"))
    config = swap.SwapConfig(
        host=group.base.id,
        claims=tuple(
            swap.Claim(e.id, bottom[e.id], top[e.id], layers[e.id]) for e in group.non_base
        ),
        **parameters,
    )
    position = checkpoint.tensor_position(group.metadata.name or "")
    return dict(swap.tensor_weights(position, _layer_count(group, num_layers), config))


@merge_method(
    name="layer_swap",
    pretty_name="Layer Swapping",
    reference_url=PAPER_URL,
    contract=InputContract(base=BasePolicy.REQUIRED),
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
    slice_weights: str = "",
) -> torch.Tensor:
    if slice_weights:  # a slice compiled by plan.compile_slices: its sources are its weights
        by_name = {str(e.id): e.id for e in group.entries}
        weights = {by_name[name]: w for name, w in json.loads(slice_weights).items()}
    else:
        weights = _rule_weights(
            group, num_layers, bottom=bottom, top=top, layers=layers, transition=transition,
            embed_source=embed_source, head_source=head_source,
        )  # fmt: skip
    tensors: dict[Hashable, torch.Tensor] = {e.id: e.tensor for e in group.entries}
    if len(weights) == 1:
        return tensors[next(iter(weights))]
    first = tensors[next(iter(weights))]
    blend = torch.zeros_like(first, dtype=torch.float32)
    for source, weight in weights.items():
        blend.add_(tensors[source].to(torch.float32), alpha=weight)
    return blend.to(first.dtype)


def compile_config(config, plan: validate.LayerSwapPlan) -> None:
    """Rewrite a `models:` layer_swap config into minimal-read slices, in place.

    Each slice lists only the models its layers use (`slice_weights` says how much of
    each); a slice without the host names its own donor as base_model, as mergekit's input
    contract wants a base in every slice.
    """
    from mergekit.config import InputSliceDefinition, OutputSliceDefinition

    references = {str(m.model): m.model for m in config.models}
    references.setdefault(str(config.base_model), config.base_model)
    slices = []
    for spec in compile_slices(plan.swap, plan.num_layers):
        sources = [
            InputSliceDefinition(model=references[name], layer_range=(spec.start, spec.end))
            for name in spec.weights
        ]
        base = plan.host if plan.host in spec.weights else next(iter(spec.weights))
        slices.append(
            OutputSliceDefinition(
                sources=sources,
                base_model=references[base],
                parameters={"slice_weights": json.dumps(spec.weights)},
            )
        )
    config.slices, config.models = slices, None


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
    """Check and compile every layer_swap config when mergekit's planner starts.

    mergekit silently ignores unknown parameter names and checks nothing across donors;
    `MergePlanner.normalize_config` is the first call that sees the whole configuration, so
    the check runs there, before any tensor is read, and a valid `models:` config is then
    compiled into minimal-read slices (pinned by tests/test_registration.py).
    """
    planner = plan_module.MergePlanner
    original = planner.normalize_config
    if getattr(original, "layerswap", False):
        return

    @functools.wraps(original)
    def normalize_config(self):
        if self.config.merge_method == layer_swap.spec.name:
            raw = self.config.model_dump(mode="json", exclude_none=True)
            plan, problems = validate.check_plan(raw)
            if problems:
                if not getattr(sys.excepthook, "layerswap", False):
                    sys.excepthook = _exit_on_config_error(sys.excepthook)
                raise validate.ConfigError(problems)
            compile_config(self.config, plan)
        return original(self)

    normalize_config.layerswap = True
    planner.normalize_config = normalize_config


def guard_card(merge_module) -> None:
    """Give layer_swap outputs our model card (layer map, sources, citation) instead of
    mergekit's generic one; `run_merge` calls `mergekit.merge.generate_card` (pinned by
    tests/test_registration.py)."""
    original = merge_module.generate_card
    if getattr(original, "layerswap", False):
        return

    @functools.wraps(original)
    def generate_card(config, config_yaml, name, *args, **kwargs):
        if config.merge_method != layer_swap.spec.name:
            return original(config, config_yaml, name, *args, **kwargs)
        from mergekit_layerswap import card

        raw = yaml.safe_load(config_yaml)
        host = validate.reference(raw["base_model"])
        layers = checkpoint.model_info(host).num_layers
        return card.render(raw, config_yaml, name=name, num_layers=layers)

    generate_card.layerswap = True
    merge_module.generate_card = generate_card
