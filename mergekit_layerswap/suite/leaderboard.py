"""The leaderboard: one row per model, the headline score per column (MGSM language or lm-eval
task). No average is taken: the columns measure different things.

Rows are ranked by the first column (the target language, or the first task), then by name.
Written as `leaderboard.md` (best per column in bold), `leaderboard.csv`, `leaderboard.json`
(a list of rows; the per-column headline scores under `scores`) and `leaderboard.png` (see
`picture`: one panel and colour per column, one row per model, grouped by kind). `picture`
also draws the lab's `lab.png`.
"""

from __future__ import annotations

import csv
import io
import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mergekit_layerswap.evaluate.results import columns_json
from mergekit_layerswap.files import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: The leaderboard picture's groups: row kind -> heading.
KINDS = {"input": "inputs", "merge": "merges", "sweep": "sweep variants (layer_swap)"}
#: Merge methods whose rows the picture marks (besides the inputs): the swap and the soup.
MARKED_METHODS = ("layer_swap", "linear")


@dataclass(frozen=True)
class Columns:
    """The score columns (MGSM language codes, or lm-eval task names) and what they hold."""

    names: list[str]
    mgsm: bool = True

    @property
    def score(self) -> str:
        """What a cell holds."""
        if self.mgsm:
            return "MGSM exact match (%)"
        return "headline score (%)"

    @property
    def caption(self) -> str:
        ranked = f"rows ranked by {self.names[0]}; no average across columns"
        if self.mgsm:
            return f"MGSM exact match (%), lm-eval flexible-extract; best in bold; {ranked}."
        return (
            "lm-eval headline score (%) per task: exact_match with flexible-extract where the "
            "task has it, else its first metric and filter (results/NAME.json names them); "
            f"best in bold; {ranked}."
        )


def rows(records: list[dict], columns: list[str]) -> list[dict]:
    """Leaderboard rows from stored results (`columns`: the column names), ranked by the
    first column, then by name."""
    table = []
    for record in records:
        scored = columns_json(record)
        row = {key: record[key] for key in ("name", "kind", "method")}
        table.append({**row, "scores": {column: scored[column]["score"] for column in columns}})
    return sorted(table, key=lambda row: (-row["scores"][columns[0]], row["name"]))


def markdown(table: list[dict], columns: Columns) -> str:
    """A Markdown table; the best score of each column is bold."""
    if not table:
        return "(no scored models)"
    names = columns.names
    best = {column: max(row["scores"][column] for row in table) for column in names}

    def cell(row: dict, column: str) -> str:
        value = row["scores"][column]
        text = f"{100 * value:.1f}"
        return f"**{text}**" if value == best[column] else text

    lines = [
        "| model | kind | method | " + " | ".join(names) + " |",
        "|---|---|---|" + "---:|" * len(names),
    ]
    for row in table:
        scores = " | ".join(cell(row, column) for column in names)
        lines.append(f"| {row['name']} | {row['kind']} | {row['method']} | {scores} |")
    return "\n".join(lines) + f"\n\n{columns.caption}"


@dataclass(frozen=True)
class Bar:
    """One model's row in a picture: its label, and per column its score and spread (%)."""

    label: str
    scores: dict[str, float]
    spread: dict[str, float] = field(default_factory=dict)
    marked: bool = False  # drawn in bold, on a shaded band


def picture(groups: dict[str, list[Bar]], columns: list[str], title: str, note: str) -> Figure:
    """A figure: one panel per column (its own colour and scale), one row per model under its
    group's heading, the value printed at each bar's end (a zero bar shows as a thin line
    and `0.0`); `note` goes under the panels (each of its lines a paragraph), with a word on
    the scales."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slots: list[tuple[str, Bar | None]] = []  # (tick label, bar); None for a heading
    for heading, bars in groups.items():
        if bars:
            slots += [(heading, None)] + [(bar.label, bar) for bar in bars]
    width = 2.0 + max(1.4, min(2.1, 7.0 / len(columns))) * len(columns)  # inches
    first, *paragraphs = note.split("\n")
    paragraphs = [f"{first} Each panel has its own scale.", *paragraphs]
    lines = [line for text in paragraphs for line in textwrap.wrap(text, int(13 * width))]
    figure, panels = plt.subplots(
        1,
        len(columns),
        sharey=True,
        squeeze=False,
        figsize=(width, 0.9 + 0.15 * len(lines) + 0.24 * len(slots)),
        layout="constrained",
    )
    for index, (axes, column) in enumerate(zip(panels[0], columns, strict=True)):
        colour = f"C{index % 10}"
        top = max(
            [bar.scores[column] + bar.spread.get(column, 0.0) for _, bar in slots if bar] + [5.0]
        )
        axes.set_xlim(0, 1.3 * top)
        axes.set_xticks([tick for tick in axes.get_xticks() if 0 <= tick <= min(100, 1.3 * top)])
        axes.set_title(column, color=colour, fontweight="bold", fontsize=10)
        for y, (_, bar) in enumerate(slots):
            if bar is None:
                continue
            value, spread = bar.scores[column], bar.spread.get(column, 0.0)
            if bar.marked:
                axes.axhspan(y - 0.5, y + 0.5, color="0.9", zorder=0)
            axes.barh(y, value, 0.7, color=colour, edgecolor=colour, linewidth=0.8)
            if spread:
                axes.errorbar(value, y, xerr=spread, color="0.2", capsize=2, linewidth=0.8)
            axes.text(value + spread + 0.02 * top, y, f"{value:.1f}", va="center", fontsize=7)
        axes.tick_params(axis="y", length=0)
        axes.tick_params(axis="x", labelsize=7)
        axes.grid(axis="x", color="0.85", linewidth=0.5)
        axes.set_axisbelow(True)
        for side in ("top", "right"):
            axes.spines[side].set_visible(False)
    first = panels[0][0]
    first.set_yticks(range(len(slots)), [label for label, _ in slots], fontsize=8)
    first.set_ylim(len(slots) - 0.5, -0.5)
    for tick, (_, bar) in zip(first.get_yticklabels(), slots, strict=True):
        if bar is None:
            tick.set_fontstyle("italic")
            tick.set_color("0.35")
        elif bar.marked:
            tick.set_fontweight("bold")
    figure.suptitle(title, fontsize=11)
    figure.supxlabel("\n".join(lines), fontsize=8, color="0.3")
    return figure


def png(figure: Figure) -> bytes:
    """The figure as PNG bytes (100 dpi); the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def plot(table: list[dict], board: Columns) -> Figure:
    """The leaderboard's picture: rows grouped by kind (inputs, merges, sweep variants),
    ranked by the first column within each group; inputs, swaps and soups marked."""
    groups: dict[str, list[Bar]] = {heading: [] for heading in KINDS.values()}
    for row in table:
        method = "" if row["kind"] != "merge" else f"  ({row['method']})"
        groups[KINDS[row["kind"]]].append(
            Bar(
                row["name"] + method,
                {c: 100 * row["scores"][c] for c in board.names},
                marked=row["kind"] == "input"
                or (row["kind"] == "merge" and row["method"] in MARKED_METHODS),
            )
        )
    what = "MGSM exact match (%) by language" if board.mgsm else "lm-eval headline score (%)"
    note = (
        f"Ranked by {board.names[0]} within each group. Bold and shaded: the inputs (experts, "
        "base), the layer_swap merges and the linear merges (soups). No average across columns."
    )
    return picture(groups, board.names, what, note)


def write(table: list[dict], columns: Columns, out_dir: Path) -> None:
    """Write leaderboard.md, .csv, .json and .png into `out_dir`."""
    names = columns.names
    write_atomic(out_dir / "leaderboard.md", markdown(table, columns) + "\n")
    write_atomic(out_dir / "leaderboard.json", json.dumps(table, indent=2))
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["name", "kind", "method", *names])
    for row in table:
        writer.writerow(
            [row["name"], row["kind"], row["method"]] + [f"{row['scores'][c]:.6f}" for c in names]
        )
    write_atomic(out_dir / "leaderboard.csv", text.getvalue())
    if table:
        write_atomic(out_dir / "leaderboard.png", png(plot(table, columns)))
