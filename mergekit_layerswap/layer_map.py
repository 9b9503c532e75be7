"""Compile a swap into runs of layers that read only the models they use.

mergekit's `models:` form gathers every input model's tensor for every output tensor, so a
swap would read both experts in full. `compile_slices` groups consecutive layers with the
same source weights into one slice whose sources are exactly those models; mergekit then
reads, for each output tensor, only what it needs. Zero-length first and last slices carry
the sources of the embeddings and of the final norm / head (mergekit takes those from the
first and the last slice). `text_map` prints the same runs as `validate` shows them. Pure
Python: mergekit glue lives in `patches.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

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


_FRACTIONS = {(1, 2): "½", (1, 3): "⅓", (2, 3): "⅔", (1, 4): "¼", (3, 4): "¾"}


def _share(weights: dict, symbols: dict) -> str:
    """``D``, or a blend such as ``⅓D+⅔H`` (weights without a vulgar fraction as 0.4D)."""
    if len(weights) == 1:
        return symbols[next(iter(weights))]
    parts = []
    for source, weight in weights.items():
        fraction = Fraction(weight).limit_denominator(100)
        text = _FRACTIONS.get((fraction.numerator, fraction.denominator), f"{weight:.3g}")
        parts.append(text + symbols[source])
    return "+".join(parts)


def text_map(config: swap.SwapConfig, num_layers: int, symbols: dict) -> list[str]:
    """The swap as compact text lines, one per run of layers with the same sources (the
    embeddings and the final norm + head first and last); `symbols` names each source,
    e.g. {host: "H", donor: "D"}. Runs longer than 5 layers are elided (``H H H … H``)."""
    slices = compile_slices(config, num_layers)
    lines = [f"{'embeddings':<11} {_share(slices[0].weights, symbols)}"]
    for spec in slices[1:-1]:
        count = spec.end - spec.start
        span = f"{spec.start}" if count == 1 else f"{spec.start}-{spec.end - 1}"
        share = _share(spec.weights, symbols)
        shown = [share] * count if count <= 5 else [share] * 3 + ["…", share]
        lines.append(f"{'layer ' + f'{span:>4}':<11} {' '.join(shown)}")
    lines.append(f"{'norm + head':<11} {_share(slices[-1].weights, symbols)}")
    return lines
