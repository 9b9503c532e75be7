"""The figures as text: ``analysis.json`` (every figure, the formulas, the suggestion),
``analysis.csv`` (the rows) and ``report.md`` (per-layer table, summary, plots, suggestion)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mergekit_layerswap.analysis.figures import Analysis, Row, row_label
from mergekit_layerswap.analysis.measure import TOP_FRACTION
from mergekit_layerswap.analysis.suggest import SUGGESTION_FILE
from mergekit_layerswap.files import write_atomic


def _json_safe(value: Any) -> Any:
    """inf/nan -> null, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_tables(analysis: Analysis, out: Path) -> list[Path]:
    """``analysis.json`` and ``analysis.csv``."""
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(Row.__dataclass_fields__)
    for row in analysis.rows:
        writer.writerow(["" if v is None else v for v in asdict(row).values()])
    write_atomic(out / "analysis.csv", table.getvalue())
    data = {
        "base": analysis.base,
        "experts": analysis.experts,
        "architecture": analysis.architecture,
        "num_layers": analysis.num_layers,
        "parameters": analysis.parameters,
        "top_fraction": TOP_FRACTION,
        "formulas": {
            "relative_change": "||W_expert - W_base||_F / ||W_base||_F (null: base all zeros)",
            "mean_abs_change": "mean of |W_expert - W_base|",
            "top_share": f"share of the expert's largest {TOP_FRACTION:.0%} "
            "|W_expert - W_base| (all analysed tensors pooled) that lies in the cell",
        },
        "summary": analysis.summary,
        "rows": [asdict(row) for row in analysis.rows],
        "suggestion": asdict(analysis.suggestion) if analysis.suggestion else None,
    }
    write_atomic(out / "analysis.json", json.dumps(_json_safe(data), indent=1) + "\n")
    return [out / "analysis.json", out / "analysis.csv"]


def write_report(analysis: Analysis, out: Path) -> Path:
    """``report.md``."""
    experts = list(analysis.experts)
    head = ["row", *(f"{e}: rel. change" for e in experts), *(f"{e}: top-1 %" for e in experts)]
    lines = [
        "# Layer analysis",
        "",
        f"Base `{analysis.base}`; experts "
        + ", ".join(f"{e} (`{ref}`)" for e, ref in analysis.experts.items())
        + f"; {analysis.architecture}, {analysis.num_layers} layers.",
        "",
        "Rel. change = ‖W_expert − W_base‖_F / ‖W_base‖_F over the row's tensors; top-1 % = the "
        "share of the expert's largest 1 % absolute changes that lies in the row. Per parameter "
        "type: `analysis.csv`, `analysis.json` and the heatmaps.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for layer, parameter in analysis.order:
        cells = [analysis.cell(e, layer, parameter) for e in experts]
        lines.append(
            f"| {row_label(layer, parameter)} | "
            + " | ".join(f"{c.relative_change:.4g}" for c in cells)
            + " | "
            + " | ".join(f"{100 * c.top_share:.1f} %" for c in cells)
            + " |"
        )
    lines += [
        "",
        "| expert | dtype | rel. change (model) | mean abs. change | top 1 % = abs. change ≥ |",
        "|---|---|---|---|---|",
    ]
    for expert, facts in analysis.summary.items():
        lines.append(
            f"| {expert} | {facts['dtype']} | {facts['relative_change']:.4g} | "
            f"{facts['mean_abs_change']:.4g} | {facts['top_threshold']:.4g} |"
        )
    lines += ["", "![per-layer change](layers.png)", ""]
    lines += [f"![heatmap {e}](heatmap-{e}.png)" for e in experts]
    lines += ["", "## Suggested layer swap", ""]
    s = analysis.suggestion
    if s is None:
        lines.append("Pass `--host` and `--donor` for a suggested `layer_swap` config.")
    else:
        sentence = s.describe()
        lines.append(f"{sentence[0].upper()}{sentence[1:]}.")
        if s.donor_layers:
            lines.append(f"`{SUGGESTION_FILE}` runs as is: `mergekit-yaml {SUGGESTION_FILE} OUT`.")
        lines += ["", "Rule: " + s.rule(), "", "```", *s.table(), "```"]
    path = out / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path
