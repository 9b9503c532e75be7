"""The swap rule: which model (or blend of models) each output layer comes from.

Pure Python, no torch. For a `swap.SwapConfig` (a host and the donors' claims), `plan_layers`
turns it into one `{source: weight}` mapping per layer, and `problems` lists everything wrong
with a configuration (each `Problem` names the field and the fix) without raising.

Semantics (Bandarkar et al., ICLR 2025, generalised):
- a donor claims layers with `bottom` (the first N), `top` (the last N) and `layers`
  (inclusive ranges such as ``"0-4,30-31"``); claimed layers are the donor's, bit for bit;
- claims must not overlap, neither between donors nor within one donor's own fields;
- with ``transition = t``, the t unclaimed layers next to each inner edge of a swapped block
  are blends: the i-th layer away from the block (i = 1..t) takes donor weight 1 - i/(t+1)
  and host weight i/(t+1); an edge that touches another block or the model edge has no
  transition; a zone that would reach another block, another zone or past the model edge is
  an error (the gap is too small);
- every other layer is the host's;
- outside the stack, the embeddings follow layer 0 and the final norm and head follow the
  last layer (a copy or the same blend), unless `embed_source`/`head_source` is ``"base"``.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from mergekit_layerswap.swap import Claim, SwapConfig

LayerWeights = Mapping[Hashable, float]

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration: `field` is `bottom`, `top`, `layers`,
    `transition` or `models`; `donor` is None for configuration-wide problems."""

    field: str
    message: str
    donor: Hashable | None = None


class SwapError(ValueError):
    """A configuration the rule cannot apply; carries every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(p.message for p in problems))


def parse_ranges(text: str) -> list[tuple[int, int]]:
    """Parse ``"0-4,30-31"`` or ``"7"`` into inclusive (start, end) pairs, in order.

    Raises ValueError naming the malformed part.
    """
    if not text.strip():
        return []
    ranges = []
    for part in text.split(","):
        match = _RANGE.match(part)
        if not match:
            raise ValueError(
                f"{part.strip()!r} is not a layer range; write inclusive ranges like '0-4,30-31'"
            )
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) is not None else start
        if end < start:
            raise ValueError(f"range {start}-{end} runs backwards; write {end}-{start}")
        ranges.append((start, end))
    return ranges


def format_ranges(layers: list[int]) -> str:
    """Compress sorted layer indices into ``"0-4,30-31"``."""
    parts, start = [], None
    for i, layer in enumerate(layers):
        if start is None:
            start = layer
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            parts.append(f"{start}" if start == layer else f"{start}-{layer}")
            start = None
    return ",".join(parts)


def _claimed_layers(claim: Claim, num_layers: int, problems: list[Problem]) -> dict[int, str]:
    """Map each layer this claim takes to the field that claims it; record problems."""
    pieces: list[tuple[str, int, int]] = []
    for name in ("bottom", "top"):
        count = getattr(claim, name)
        if count > num_layers:
            problems.append(
                Problem(
                    name,
                    f"{name}={count} exceeds the model's {num_layers} layers; "
                    f"use at most {num_layers}",
                    claim.donor,
                )
            )
        elif count:
            start = 0 if name == "bottom" else num_layers - count
            pieces.append((f"{name}={count}", start, start + count - 1))
    try:
        ranges = parse_ranges(claim.layers)
    except ValueError as error:
        problems.append(Problem("layers", f"layers: {error}", claim.donor))
        ranges = []
    for start, end in ranges:
        if end >= num_layers:
            problems.append(
                Problem(
                    "layers",
                    f"layers range {start}-{end} is out of bounds: "
                    f"the model has layers 0-{num_layers - 1}",
                    claim.donor,
                )
            )
        else:
            pieces.append((f"layers {start}-{end}", start, end))

    owned: dict[int, str] = {}
    for label, start, end in pieces:
        clash = sorted(layer for layer in range(start, end + 1) if layer in owned)
        if clash:
            other = owned[clash[0]]
            problems.append(
                Problem(
                    "layers" if label.startswith("layers") else label.split("=")[0],
                    f"{label} overlaps {other} (layers {format_ranges(clash)} claimed twice); "
                    "make the claims disjoint",
                    claim.donor,
                )
            )
        for layer in range(start, end + 1):
            owned.setdefault(layer, label)
    return owned


def _blocks(owner: list[Hashable | None]) -> list[tuple[Hashable, int, int]]:
    """Maximal runs of consecutive layers claimed by the same donor."""
    blocks: list[tuple[Hashable, int, int]] = []
    for layer, donor in enumerate(owner):
        if donor is None:
            continue
        if blocks and blocks[-1][0] == donor and blocks[-1][2] == layer - 1:
            blocks[-1] = (donor, blocks[-1][1], layer)
        else:
            blocks.append((donor, layer, layer))
    return blocks


def _zone_conflict(
    zone: list[int], owner: list[Hashable | None], zone_of: dict[int, str]
) -> str | None:
    """Why a transition zone cannot be placed, or None if it fits."""
    for layer in zone:
        if not 0 <= layer < len(owner):
            return "runs past the model edge"
        if owner[layer] is not None:
            return f"runs into donor {owner[layer]}'s block"
        if layer in zone_of:
            return f"runs into the {zone_of[layer]}"
    return None


def _analyse(
    config: SwapConfig, num_layers: int
) -> tuple[list[Problem], list[dict[Hashable, float]]]:
    problems: list[Problem] = []
    if not isinstance(num_layers, int) or num_layers < 1:
        return [
            Problem("models", f"layer count must be a positive integer, got {num_layers!r}")
        ], []
    if not config.claims:
        problems.append(
            Problem("models", "no donor: add a model with bottom, top or layers parameters")
        )
    donors = [claim.donor for claim in config.claims]
    for donor in {d for d in donors if donors.count(d) > 1}:
        problems.append(Problem("models", f"donor {donor} is listed twice; list it once", donor))
    if config.host in donors:
        problems.append(
            Problem(
                "models",
                "the host (base_model) cannot also be a donor; claim layers only on other models",
                config.host,
            )
        )

    owner: list[Hashable | None] = [None] * num_layers
    claimed_by: dict[int, tuple[Hashable, str]] = {}
    for claim in config.claims:
        owned = _claimed_layers(claim, num_layers, problems)
        if claim.claims_nothing:
            problems.append(
                Problem(
                    "models",
                    f"donor {claim.donor} claims no layers; set bottom, top or layers "
                    "(or remove the model)",
                    claim.donor,
                )
            )
        clash = sorted(layer for layer in owned if layer in claimed_by)
        if clash:
            other_donor, other_label = claimed_by[clash[0]]
            problems.append(
                Problem(
                    "layers",
                    f"donor {claim.donor} ({owned[clash[0]]}) overlaps donor {other_donor} "
                    f"({other_label}) on layers {format_ranges(clash)}; each layer has one donor",
                    claim.donor,
                )
            )
        for layer, label in owned.items():
            if layer not in claimed_by:
                claimed_by[layer] = (claim.donor, label)
                owner[layer] = claim.donor

    t = config.transition
    weights: list[dict[Hashable, float]] = [
        {config.host: 1.0} if donor is None else {donor: 1.0} for donor in owner
    ]
    zone_of: dict[int, str] = {}
    for donor, start, end in _blocks(owner) if t else []:
        for side, edge, step in (("below", start, -1), ("above", end, 1)):
            neighbour = edge + step
            if not 0 <= neighbour < num_layers or owner[neighbour] is not None:
                continue  # touching the model edge or another block: no transition
            zone = [edge + step * i for i in range(1, t + 1)]
            label = f"transition {side} donor {donor}'s block {start}-{end}"
            conflict = _zone_conflict(zone, owner, zone_of)
            if conflict:
                problems.append(
                    Problem(
                        "transition",
                        f"transition={t}: the {label} (layers {format_ranges(sorted(zone))}) "
                        f"{conflict}; lower transition or widen the gap",
                        donor,
                    )
                )
                continue
            for i, layer in enumerate(zone, start=1):
                zone_of[layer] = label
                weights[layer] = {donor: 1 - i / (t + 1), config.host: i / (t + 1)}
    return problems, weights


def problems(config: SwapConfig, num_layers: int) -> list[Problem]:
    """Everything wrong with `config` for a model of `num_layers` layers (empty if valid)."""
    return _analyse(config, num_layers)[0]


@lru_cache(maxsize=256)
def plan_layers(config: SwapConfig, num_layers: int) -> tuple[LayerWeights, ...]:
    """Per layer, the source weights ``{model: weight}`` (weights sum to 1).

    Raises SwapError listing every problem if the configuration is invalid.
    """
    found, weights = _analyse(config, num_layers)
    if found:
        raise SwapError(found)
    return tuple(weights)


def layer_weights(index: int, num_layers: int, config: SwapConfig) -> LayerWeights:
    """The source weights of layer `index` (0-based) in a model of `num_layers` layers."""
    if not 0 <= index < num_layers:
        raise IndexError(f"layer {index} is outside 0-{num_layers - 1}")
    return plan_layers(config, num_layers)[index]


def outer_weights(position: str, num_layers: int, config: SwapConfig) -> LayerWeights:
    """Weights of the tensors outside the layer stack: ``"pre"`` (embeddings) follows layer 0
    and ``"post"`` (final norm, head) the last layer, unless the config says ``"base"``."""
    source = config.embed_source if position == "pre" else config.head_source
    if source == "base":
        return {config.host: 1.0}
    return layer_weights(0 if position == "pre" else num_layers - 1, num_layers, config)


def tensor_weights(position: int | str, num_layers: int, config: SwapConfig) -> LayerWeights:
    """Weights of a tensor at `position`: a layer index, ``"pre"`` or ``"post"``."""
    if isinstance(position, int):
        return layer_weights(position, num_layers, config)
    return outer_weights(position, num_layers, config)
