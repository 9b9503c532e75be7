"""The leaderboard: rows of models, the headline score per column (MGSM language or lm-eval
task) and on average.

Written as `leaderboard.md` (best per column in bold), `leaderboard.csv`,
`leaderboard.json` (a list of rows; the per-column scores under `exact_match`, the headline
key of results files) and `leaderboard.png` (grouped bars per column).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from mergekit_layerswap.files import write_atomic


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
        if self.mgsm:
            return "MGSM exact match (%), lm-eval flexible-extract; best in bold."
        return (
            "lm-eval headline score (%) per task: exact_match with flexible-extract where the "
            "task has it, else its first metric and filter (results/NAME.json names them); "
            "best in bold."
        )


def rows(records: list[dict], languages: list[str]) -> list[dict]:
    """Leaderboard rows from stored results (`languages`: the column names), best average
    first."""
    table = []
    for record in records:
        scores = {code: record["languages"][code]["exact_match"] for code in languages}
        table.append(
            {
                "name": record["name"],
                "kind": record["kind"],
                "method": record["method"],
                "exact_match": scores,
                "average": sum(scores.values()) / len(scores),
            }
        )
    return sorted(table, key=lambda row: (-row["average"], row["name"]))


def _best(table: list[dict], languages: list[str]) -> dict[str, float]:
    best = {code: max(row["exact_match"][code] for row in table) for code in languages}
    best["average"] = max(row["average"] for row in table)
    return best


def markdown(table: list[dict], columns: Columns) -> str:
    """A Markdown table; the best score of each column is bold."""
    if not table:
        return "(no scored models)"
    languages = columns.names
    best = _best(table, languages)

    def cell(value: float, column: str) -> str:
        text = f"{100 * value:.1f}"
        return f"**{text}**" if value == best[column] else text

    lines = [
        "| model | kind | method | " + " | ".join(languages) + " | average |",
        "|---|---|---|" + "---:|" * (len(languages) + 1),
    ]
    for row in table:
        scores = [cell(row["exact_match"][code], code) for code in languages]
        lines.append(
            f"| {row['name']} | {row['kind']} | {row['method']} | "
            + " | ".join(scores)
            + f" | {cell(row['average'], 'average')} |"
        )
    return "\n".join(lines) + f"\n\n{columns.caption}"


def plot(table: list[dict], board: Columns, path: Path) -> None:
    """Grouped bars: one group per column (plus the average), one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    languages = board.names
    columns = [*languages, "average"]
    width = 0.8 / max(len(table), 1)
    figure, axes = plt.subplots(figsize=(max(6, 1.2 * len(columns) * max(1, len(table) / 3)), 4))
    for i, row in enumerate(table):
        values = [100 * row["exact_match"][c] for c in languages] + [100 * row["average"]]
        positions = [j + (i - (len(table) - 1) / 2) * width for j in range(len(columns))]
        axes.bar(positions, values, width, label=row["name"])
    top = max(
        [100 * row["average"] for row in table]
        + [100 * v for row in table for v in row["exact_match"].values()]
    )
    axes.set_ylim(0, max(5.0, 1.15 * top))
    axes.set_xticks(range(len(columns)), columns)
    axes.set_ylabel(board.score)
    axes.set_title("MGSM by language" if board.mgsm else "lm-eval tasks")
    axes.legend(fontsize="small", ncols=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write(table: list[dict], columns: Columns, out_dir: Path) -> None:
    """Write leaderboard.md, .csv, .json and .png into `out_dir`."""
    languages = columns.names
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "leaderboard.md", markdown(table, columns) + "\n")
    write_atomic(out_dir / "leaderboard.json", json.dumps(table, indent=2))
    with (out_dir / "leaderboard.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "kind", "method", *languages, "average"])
        for row in table:
            writer.writerow(
                [row["name"], row["kind"], row["method"]]
                + [f"{row['exact_match'][c]:.6f}" for c in languages]
                + [f"{row['average']:.6f}"]
            )
    if table:
        plot(table, columns, out_dir / "leaderboard.png")
