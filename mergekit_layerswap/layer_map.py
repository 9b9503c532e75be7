"""The swap as runs of consecutive layers with the same sources, and as text.

`runs` groups the layers of a swap by their sources and weights, with zero-length first and
last runs for the embeddings and for the final norm and head; `text_map` prints them as
`validate` shows them, and the model card's layer table is built from them. Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from mergekit_layerswap import swap, swap_rule


@dataclass(frozen=True)
class Run:
    """Layers [start, end) taking `weights` ({source: weight}, weights > 0)."""

    start: int
    end: int
    weights: dict


def runs(config: swap.SwapConfig, num_layers: int) -> list[Run]:
    """The runs of a valid swap, including the two zero-length outer ones."""
    layers = swap_rule.plan_layers(config, num_layers)
    found: list[Run] = []
    for index, weights in enumerate(layers):
        if found and found[-1].weights == dict(weights):
            found[-1] = Run(found[-1].start, index + 1, found[-1].weights)
        else:
            found.append(Run(index, index + 1, dict(weights)))
    pre = Run(0, 0, dict(swap_rule.outer_weights("pre", num_layers, config)))
    post = Run(num_layers, num_layers, dict(swap_rule.outer_weights("post", num_layers, config)))
    return [pre, *found, post]


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
    slices = runs(config, num_layers)
    lines = [f"{'embeddings':<11} {_share(slices[0].weights, symbols)}"]
    for spec in slices[1:-1]:
        count = spec.end - spec.start
        span = f"{spec.start}" if count == 1 else f"{spec.start}-{spec.end - 1}"
        share = _share(spec.weights, symbols)
        shown = [share] * count if count <= 5 else [share] * 3 + ["…", share]
        lines.append(f"{'layer ' + f'{span:>4}':<11} {' '.join(shown)}")
    lines.append(f"{'norm + head':<11} {_share(slices[-1].weights, symbols)}")
    return lines
