"""The lab's results across seeds: `lab.json` (programs), `lab.md` (people), `lab.png` (bars).

Per model and task: the mean and the sample standard deviation over seeds of each filter's
exact match. The verdict compares the designated layer swap (the one `analyze` suggested,
chosen before any score was seen) with both experts and the soup on target-language math,
seed by seed. The sweep's best variant is shown too, marked as chosen on the test set.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from mergekit_layerswap.files import write_atomic

FILTERS = (("flexible-extract", "exact_match"), ("strict-match", "other_exact_match"))
SWAP = "layer-swap"
RIVALS = ("math", "lang", "soup")


def _stats(values: list[float]) -> dict[str, float]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std}


def summarize(seeds: dict[int, dict], columns: list[str]) -> dict[str, dict]:
    """{model: {column: {filter: {mean, std}}}} over the seeds every model has."""
    names = sorted(set.intersection(*(set(s["models"]) for s in seeds.values())))
    summary = {}
    for name in names:
        summary[name] = {
            column: {
                label: _stats(
                    [s["models"][name]["columns"][column][key] or 0.0 for s in seeds.values()]
                )
                for label, key in FILTERS
            }
            for column in columns
        }
    return summary


def verdict(seeds: dict[int, dict], target_column: str) -> dict:
    """Does the designated swap beat both experts and the soup on target math, per seed?"""

    def score(seed: dict, name: str) -> float:
        return seed["models"][name]["columns"][target_column]["exact_match"]

    margins = [score(s, SWAP) - max(score(s, r) for r in RIVALS) for s in seeds.values()]
    wins = sum(margin > 0 for margin in margins)
    n = len(margins)
    mean = statistics.fmean(margins)
    if wins == n and mean > 0:
        outcome = "layer swap beats both experts and the soup"
    elif wins == 0:
        outcome = "no effect (layer swap does not beat the best of the experts and the soup)"
    else:
        outcome = "no clear effect (layer swap beats the experts and the soup in some seeds only)"
    spread = _stats(margins)
    text = (
        f"On {target_column} (flexible-extract), {outcome}: it won in {wins} of {n} seed(s); "
        f"its margin over the best of math expert, language expert and soup was "
        f"{100 * spread['mean']:+.1f} ± {100 * spread['std']:.1f} points."
    )
    return {"outcome": outcome, "wins": wins, "seeds": n, "margins": margins, "text": text}


def best_sweep(summary: dict, target_column: str) -> str | None:
    """The sweep variant with the highest mean target score (selected on the test set)."""
    variants = [n for n in summary if n.startswith("swap-")]
    if not variants:
        return None
    return max(variants, key=lambda n: summary[n][target_column]["flexible-extract"]["mean"])


def markdown(data: dict) -> str:
    columns = data["columns"]
    summary = data["summary"]
    best = best_sweep(summary, columns[0])
    lines = [
        "# Layer swapping in miniature",
        "",
        f"{data['settings']['seeds']} seed(s), size {data['settings']['size']}, target language "
        f"{data['settings']['language']}; exact match in %, mean ± std over seeds, "
        "flexible-extract (strict-match in brackets).",
        "",
        "| model | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, row in sorted(
        summary.items(), key=lambda kv: -kv[1][columns[0]]["flexible-extract"]["mean"]
    ):
        label = name + (" (designated)" if name == SWAP else "")
        label += " (best sweep variant, chosen on the test set)" if name == best else ""
        cells = []
        for column in columns:
            flex, strict = row[column]["flexible-extract"], row[column]["strict-match"]
            cells.append(
                f"{100 * flex['mean']:.1f} ± {100 * flex['std']:.1f} [{100 * strict['mean']:.1f}]"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    swaps = ", ".join(
        f"seed {seed}: {s['swap']['donor']} transition {s['swap']['transition']} "
        f"({s['swap']['source']})"
        for seed, s in data["seeds"].items()
    )
    verdict = data["verdict"]["text"]
    lines += ["", f"Designated swap per seed: {swaps}.", "", f"**Verdict.** {verdict}"]
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> Path:
    """Grouped bars (one group per model, one bar per task) with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns, summary = data["columns"], data["summary"]
    names = sorted(summary, key=lambda n: -summary[n][columns[0]]["flexible-extract"]["mean"])
    width = 0.8 / len(columns)
    figure, axes = plt.subplots(figsize=(max(8, 0.9 * len(names)), 4.5))
    for i, column in enumerate(columns):
        stats = [summary[n][column]["flexible-extract"] for n in names]
        axes.bar(
            [x + i * width for x in range(len(names))],
            [100 * s["mean"] for s in stats],
            width,
            yerr=[100 * s["std"] for s in stats],
            capsize=2,
            label=column,
        )
    axes.set_xticks(
        [x + 0.4 - width / 2 for x in range(len(names))], names, rotation=35, ha="right"
    )
    axes.set_ylabel("exact match, flexible-extract (%)")
    axes.set_title(f"Layer swapping in miniature ({data['settings']['seeds']} seeds, mean ± std)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write(data: dict, out: Path) -> list[Path]:
    """lab.json, lab.md and lab.png into `out`."""
    write_atomic(out / "lab.json", json.dumps(data, indent=2, sort_keys=True) + "\n")
    write_atomic(out / "lab.md", markdown(data))
    return [out / "lab.json", out / "lab.md", plot(data, out / "lab.png")]
