"""`mergekit-layerswap analyze`: where each expert moved away from the shared base.

For every expert E and every tensor the base B has (ΔW = W_E − W_B, computed in float32):

- relative change ``‖ΔW‖_F / ‖W_B‖_F``;
- mean ``|ΔW|``;
- top-1 % share: the fraction of E's largest 1 % ``|ΔW|`` (all analysed tensors pooled) that
  lies in the tensor.

Tensors are named by mergekit's architecture definitions: per layer and parameter type
(``q_proj``, ``input_layernorm``, ...), plus rows of their own for the tensors outside the layer
stack (embeddings, final norm, head).

The steps, one module each: `inputs` (options, headers, the tensors to stream; `layout`
names them), `measure` (one streaming pass), `figures` (cells and per-expert summary),
`suggest` (the suggested layer swap), `report` and `plots` (the output files).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from mergekit_layerswap.analysis.figures import Analysis, Row, tabulate
from mergekit_layerswap.analysis.inputs import check_options, load_models, parse_expert, plan
from mergekit_layerswap.analysis.layout import read_layout
from mergekit_layerswap.analysis.measure import (
    TOP_FRACTION,
    bytes_read,
    check_finite,
    stream,
)
from mergekit_layerswap.analysis.plots import plot_heatmaps, plot_layers
from mergekit_layerswap.analysis.report import write_report, write_tables
from mergekit_layerswap.analysis.suggest import (
    SUGGESTION_FILE,
    Suggestion,
    suggest,
    suggestion_yaml,
)
from mergekit_layerswap.errors import InputError
from mergekit_layerswap.files import write_atomic

__all__ = [
    "SUGGESTION_FILE",
    "TOP_FRACTION",
    "Analysis",
    "Row",
    "Suggestion",
    "analyze",
    "parse_expert",
    "read_layout",
    "suggest",
    "suggestion_yaml",
]


def analyze(
    base: str,
    experts: Sequence[tuple[str, str]],
    output: str | Path,
    *,
    host: str | None = None,
    donor: str | None = None,
    ratio: float = 1.0,
    progress: bool = False,
) -> Analysis:
    """Measure how far each expert moved from `base` and write every output into `output`.

    `experts` are (name, model) pairs; a model is a local directory or a Hub id. With `host`
    and `donor` (two expert names) a `layer_swap` config is suggested. Every input is checked
    before any tensor is read; bad input raises InputError.
    """
    from tqdm import tqdm

    check_options([name for name, _ in experts], host, donor, ratio)
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise InputError(f"--output {output} is a file, not a folder")
    models, layout = load_models(base, experts)
    items = plan(models[0], models[1:], layout)
    total = bytes_read(models, items)
    with tqdm(total=total, unit="B", unit_scale=True, disable=not progress) as bar:
        sums = stream(models, items, bar.update)
    check_finite(models, items, sums)
    analysis = tabulate(base, experts, layout, models, items, sums)
    if host is not None and donor is not None:
        analysis = replace(
            analysis,
            suggestion=suggest(
                host, donor, analysis.layer_change(host), analysis.layer_change(donor), ratio
            ),
        )

    out.mkdir(parents=True, exist_ok=True)
    files = [*write_tables(analysis, out), *plot_heatmaps(analysis, out)]
    files.append(plot_layers(analysis, out))
    s = analysis.suggestion
    if s is not None and s.donor_layers:
        by_name = {m.name: m for m in models}
        dtype = analysis.summary[s.host]["dtype"]
        write_atomic(
            out / SUGGESTION_FILE, suggestion_yaml(s, by_name[s.host], by_name[s.donor], dtype)
        )
        files.append(out / SUGGESTION_FILE)
    else:  # no stale suggestion from an earlier run
        (out / SUGGESTION_FILE).unlink(missing_ok=True)
    files.append(write_report(analysis, out))
    return replace(analysis, files=files)
