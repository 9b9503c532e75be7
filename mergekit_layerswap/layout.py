"""A checkpoint's own layer structure: which of its tensors are the embeddings, which belong
to each layer and which are the final norm and head, read from the tensor names alone.

A swap needs nothing but each tensor's place, and the checkpoint says it: a layer's tensors
carry its index (`model.layers.3.…`, `transformer.h.3.…`), and the names mergekit's
architecture definitions give the weights before and after the layers place the rest.
mergekit's per-layer templates are not consulted: they can disagree with what transformers
writes (Mixtral's per-expert tensors, GPT-NeoX without its old buffers, Llama's optional
biases), and a merge planned from them would miss or drop tensors. Pure Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mergekit_layerswap import checkpoint


@dataclass(frozen=True)
class Layout:
    """A checkpoint's tensor names by place: before the layers, per layer, after them."""

    pre: tuple[str, ...]
    layers: tuple[tuple[str, ...], ...]
    post: tuple[str, ...]

    def places(self) -> list[tuple[int | str, tuple[str, ...]]]:
        """(place, names) in model order: ``"pre"``, each layer index, ``"post"``."""
        return [("pre", self.pre), *enumerate(self.layers), ("post", self.post)]


def read(names: Iterable[str], num_layers: int) -> tuple[Layout, list[str]]:
    """The layout of a checkpoint holding the tensors `names` with `num_layers` layers, and
    a line for each kind of tensor no merge could place (a layer past the config's count, a
    tensor outside the layers that no mergekit definition names)."""
    pre, post, past, unplaced = [], [], [], []
    layers: list[list[str]] = [[] for _ in range(num_layers)]
    for name in sorted(names):
        place = checkpoint.tensor_position(name)
        if isinstance(place, int):
            (layers[place] if place < num_layers else past).append(name)
        elif checkpoint.outer_place(name) is None:
            unplaced.append(name)
        else:
            (pre if place == "pre" else post).append(name)
    problems = []
    if past:
        problems.append(
            f"has tensor {past[0]}{_more(past)} in a layer past the {num_layers} layers its "
            "config.json gives; layer_swap writes the layers the config describes, so it "
            "cannot account for it (mergekit would drop it)"
        )
    if unplaced:
        problems.append(
            f"has tensor {unplaced[0]}{_more(unplaced)} outside the layers that no mergekit "
            "0.1.5 architecture places before or after them; layer_swap cannot tell whether "
            "it goes with the embeddings or the head"
        )
    return Layout(tuple(pre), tuple(tuple(layer) for layer in layers), tuple(post)), problems


def _more(items: list[str]) -> str:
    return f" ({len(items) - 1} more such)" if len(items) > 1 else ""
