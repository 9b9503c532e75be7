"""The figures: the streaming pass's per-tensor sums, added up per cell (a layer's parameter
type, a layer's total, a tensor outside the layer stack) and per expert."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergekit_layerswap.analysis.inputs import Item, Model
from mergekit_layerswap.analysis.layout import Layout
from mergekit_layerswap.analysis.measure import Sums, ratio
from mergekit_layerswap.analysis.suggest import Suggestion


@dataclass(frozen=True)
class Row:
    """One expert's figures for one cell: a layer's parameter type, a layer's total
    (``parameter == "total"``), or a tensor outside the layer stack (``layer is None``)."""

    expert: str
    layer: int | None
    parameter: str
    elements: int
    relative_change: float  # inf where the base is all zeros and the expert is not
    mean_abs_change: float
    top_share: float


@dataclass(frozen=True)
class Analysis:
    """Everything `analyze` measured; `rows` holds every figure of every expert."""

    base: str
    experts: dict[str, str]  # name -> model, as given
    architecture: str
    num_layers: int
    parameters: list[str]  # the layers' parameter types
    order: list[tuple[int | None, str]]  # display rows: outside rows and (layer, "total")
    rows: list[Row]
    summary: dict[str, dict[str, Any]]  # per expert: dtype, elements, totals, top-set facts
    suggestion: Suggestion | None = None
    files: list[Path] = field(default_factory=list)

    def cell(self, expert: str, layer: int | None, parameter: str) -> Row:
        return next(
            r for r in self.rows if (r.expert, r.layer, r.parameter) == (expert, layer, parameter)
        )

    def layer_change(self, expert: str) -> list[float]:
        """Per-layer relative change of `expert` (whole layer, every parameter type)."""
        return [self.cell(expert, i, "total").relative_change for i in range(self.num_layers)]


def row_label(layer: int | None, name: str) -> str:
    """A display row's label: ``layer 3``, or the name of a row outside the layer stack."""
    return name if layer is None else f"layer {layer}"


def _rows(expert: str, items: Sequence[Item], sums: Sums, shares: Sequence[float]) -> list[Row]:
    """Sum the per-tensor figures into cells: (layer, type), (layer, "total"), outside rows."""
    cells: dict[tuple[int | None, str], list[float]] = {}
    for i, item in enumerate(items):
        cell_keys = [(item.role.layer, item.role.parameter)]
        if item.role.layer is not None:
            cell_keys.append((item.role.layer, "total"))
        values = (
            math.prod(item.shape),
            sums.base_square[i],
            sums.square[i],
            sums.absolute[i],
            shares[i],
        )
        for key in cell_keys:
            cell = cells.setdefault(key, [0.0] * len(values))
            for j, value in enumerate(values):
                cell[j] += value
    return [
        Row(
            expert,
            layer,
            parameter,
            int(numel),
            ratio(math.sqrt(square), math.sqrt(base)),
            absolute / numel,
            share,
        )
        for (layer, parameter), (numel, base, square, absolute, share) in cells.items()
    ]


def tabulate(
    base: str,
    experts: Sequence[tuple[str, str]],
    layout: Layout,
    models: Sequence[Model],
    items: Sequence[Item],
    sums: Sequence[Sums],
) -> Analysis:
    """Every row and per-expert summary from the sums of `stream` (one per expert, in order)."""
    rows: list[Row] = []
    summary = {}
    elements = sum(math.prod(item.shape) for item in items)
    for i, (model, expert) in enumerate(zip(models[1:], sums, strict=True), start=1):
        shares, top_facts = expert.top.result()
        rows += _rows(model.name, items, expert, shares)
        summary[model.name] = {
            "dtype": model.dtype([item.keys[i] for item in items]),
            "elements": elements,
            "relative_change": ratio(
                math.sqrt(sum(expert.square)), math.sqrt(sum(expert.base_square))
            ),
            "mean_abs_change": sum(expert.absolute) / elements,
            **top_facts,
        }
    order = list(
        dict.fromkeys(
            (None, i.role.parameter) if i.role.layer is None else (i.role.layer, "total")
            for i in items
        )
    )
    parameters = list(dict.fromkeys(i.role.parameter for i in items if i.role.layer is not None))
    return Analysis(
        base,
        dict(experts),
        layout.architecture,
        layout.num_layers,
        parameters,
        order,
        rows,
        summary,
    )
