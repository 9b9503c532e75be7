"""The figures as pictures: a heatmap per expert (relative change per parameter type and
layer) and one plot of every expert's per-layer change, with the suggested donor layers."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

from mergekit_layerswap.analysis.figures import Analysis, row_label
from mergekit_layerswap.files import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _save(figure: Figure, path: Path) -> None:
    """The figure as a PNG at `path`, written atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    write_atomic(path, buffer.getvalue())


def plot_heatmaps(analysis: Analysis, out: Path) -> list[Path]:
    """``heatmap-EXPERT.png`` for each expert, on one colour scale."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure

    columns = [*analysis.parameters, "total"]
    grids = {}
    for expert in analysis.experts:
        grid = np.full((len(analysis.order), len(columns)), np.nan)
        for r in analysis.rows:
            if r.expert == expert:
                y = analysis.order.index((r.layer, "total" if r.layer is not None else r.parameter))
                grid[y, columns.index(r.parameter) if r.layer is not None else -1] = (
                    r.relative_change
                )
        grids[expert] = grid
    values = np.concatenate([g[np.isfinite(g) & (g > 0)] for g in grids.values()])
    norm = LogNorm(values.min(), values.max()) if values.size else Normalize(0, 1)
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    files = []
    for expert, grid in grids.items():
        fig = Figure(figsize=(2.5 + 0.6 * len(columns), 1.5 + 0.25 * len(analysis.order)))
        ax = fig.subplots()
        image = ax.imshow(
            np.ma.masked_invalid(grid),
            aspect="auto",
            norm=norm,
            cmap=cmap,
            interpolation="nearest",
        )
        ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
        ax.set_yticks(range(len(analysis.order)), [row_label(*o) for o in analysis.order])
        ax.set_title(f"{expert}: relative change per tensor (grey: no change)")
        fig.colorbar(image, ax=ax, label="‖ΔW‖_F / ‖W_base‖_F")
        path = out / f"heatmap-{expert}.png"
        _save(fig, path)
        files.append(path)
    return files


def plot_layers(analysis: Analysis, out: Path) -> Path:
    """``layers.png``: each expert's relative change per layer; the suggested donor layers
    shaded."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    changes = {expert: analysis.layer_change(expert) for expert in analysis.experts}
    for expert, change in changes.items():
        ax.plot(range(analysis.num_layers), change, marker="o", label=expert)
    if all(0 < v < math.inf for change in changes.values() for v in change):
        ax.set_yscale("log")
    s = analysis.suggestion
    if s is not None:
        label: str | None = f"suggested: {s.donor}'s layers into {s.host}"
        for start, end in ((0, s.bottom), (analysis.num_layers - s.top, analysis.num_layers)):
            if end > start:
                ax.axvspan(start - 0.5, end - 0.5, color="tab:orange", alpha=0.15, label=label)
                label = None
    ax.set_xlabel("layer")
    ax.set_ylabel("‖ΔW‖_F / ‖W_base‖_F (whole layer)")
    ax.set_title("Where each expert changed: relative change per layer")
    ax.grid(alpha=0.3)
    ax.legend()
    path = out / "layers.png"
    _save(fig, path)
    return path
