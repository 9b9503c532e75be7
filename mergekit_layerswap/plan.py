"""Compile a swap into runs of layers that read only the models they use.

mergekit's `models:` form gathers every input model's tensor for every output tensor, so a
swap would read both experts in full. `compile_slices` groups consecutive layers with the
same source weights into one slice whose sources are exactly those models; mergekit then
reads, for each output tensor, only what it needs. Zero-length first and last slices carry
the sources of the embeddings and of the final norm / head (mergekit takes those from the
first and the last slice). Pure Python: mergekit glue lives in `method.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from mergekit_layerswap import swap


@dataclass(frozen=True)
class SliceSpec:
    """Layers [start, end) taking `weights` ({source: weight}, weights > 0)."""

    start: int
    end: int
    weights: dict


def compile_slices(config: swap.SwapConfig, num_layers: int) -> list[SliceSpec]:
    """The minimal-read slices of a valid swap, including the two zero-length outer ones."""
    layers = swap.plan_layers(config, num_layers)
    runs: list[SliceSpec] = []
    for index, weights in enumerate(layers):
        if runs and runs[-1].weights == dict(weights):
            runs[-1] = SliceSpec(runs[-1].start, index + 1, runs[-1].weights)
        else:
            runs.append(SliceSpec(index, index + 1, dict(weights)))
    pre = SliceSpec(0, 0, dict(swap.outer_weights("pre", num_layers, config)))
    post = SliceSpec(num_layers, num_layers, dict(swap.outer_weights("post", num_layers, config)))
    return [pre, *runs, post]
