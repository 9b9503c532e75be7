"""The lab's designs side by side: each design's preconditions, scores over seeds and verdict.

A design is a set of LabSettings overrides (DESIGNS). For each one this runs the whole lab
(`run_lab`, resumable: a rerun reuses every finished stage) into OUT/<design>, then prints one
row: each precondition's mean value and on how many seeds it passed, the designated swap and
its rivals on target-language math (mean ± std over seeds), the margin and the verdict, as
Markdown tables (OUT/designs.md; the rows in OUT/designs.json). `--screen` measures the
preconditions of seed 0 only (base, experts, `analyze`, no merging or scoring), a few
minutes per design.

Usage: python bench/lab_designs.py OUT [--designs NAME ...] [--seeds 3] [--screen]
[--threads 1]. One design from the command line: `mergekit-layerswap lab OUT --seeds 3
--tokenizer subword --experts reverted`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from mergekit_layerswap import analysis
from mergekit_layerswap.lab import preconditions, run, testsets
from mergekit_layerswap.lab.settings import LabSettings
from mergekit_layerswap.lab.verdict import RIVALS, SWAP
from mergekit_layerswap.threads import torch_threads

DEFAULT_MIXTURE = LabSettings().mixture
DESIGNS = {
    "default": {},
    # more parallel and code-switched base text (alignment, transfer)
    "parallel": {
        "mixture": DEFAULT_MIXTURE
        | {"parallel": 0.25, "story_parallel": 0.15, "generic_en": 0.2, "arithmetic": 0.2}
    },
    # a target language the base barely sees, so the language expert has something to add
    "low-resource": {
        "mixture": DEFAULT_MIXTURE
        | {"generic_target": 0.02, "parallel": 0.06, "reading_target": 0.0}
    },
    # gentler experts: a third of the learning rate (smaller, more local updates)
    "gentle": {"expert_lr": 3e-4},
    # modular experts (Bandarkar & Peng 2025): math trains the middle, language the outside
    "frozen": {"experts": "frozen"},
    # both train everything, then revert what lies outside their part (Bandarkar & Peng 2025)
    "reverted": {"experts": "reverted"},
    # word pieces shared across the languages (the in-vitro study of generated languages)
    "subword": {"tokenizer": "subword"},
    "subword-reverted": {"tokenizer": "subword", "experts": "reverted"},
    # a deeper, narrower base: a middle to keep, and less room per layer to keep the
    # languages apart
    "deep": {"size": "deep"},
}


def screen(settings: LabSettings, folder: Path) -> dict:
    """Seed 0's preconditions, without merging or scoring."""
    test = testsets.build(settings.language, settings.n_test, settings.test_seed)
    quiet = lambda *_: lambda *_: None  # noqa: E731
    models = run.train_models(settings, 0, folder / "models", test.excludes, quiet)
    result = analysis.analyze(
        str(models["base"]),
        [("math", str(models["math"])), ("lang", str(models["lang"]))],
        folder / "analysis",
        host="math",
        donor="lang",
    )
    swap = run.designated_swap(result)
    change = {n: list(result.layer_change(n)) for n in ("math", "lang")}
    found = preconditions.measure(
        models,
        swap,
        change,
        target=settings.language,
        seed=0,
        excluded=test.excludes,
        max_tokens=settings.max_gen_toks,
    )
    return {"swap": swap, "preconditions": {"0": [p.record() for p in found]}}


def scored(data: dict) -> dict:
    """A lab run's row: preconditions per seed, target math of the swap and its rivals, the
    math expert's English math, the verdict."""
    target, english = data["columns"][0], data["columns"][1]
    means = {name: data["summary"][name][target]["flexible-extract"] for name in (SWAP, *RIVALS)}
    return {
        "preconditions": {s: v["preconditions"] for s, v in data["seeds"].items()},
        "swaps": [v["swap"] for v in data["seeds"].values()],
        "target_math": means,
        "math_english": data["summary"]["math"][english]["flexible-extract"],
        "verdict": {k: data["verdict"][k] for k in ("kind", "mean", "standard_error")},
    }


def _percent(stats: dict) -> str:
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


def tables(rows: dict) -> str:
    """designs.md: the preconditions per design (mean value, seeds passed), then the scores
    and verdict of the scored designs."""
    names = list(preconditions.MEANINGS)
    lines = ["| design | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for design, row in rows.items():
        found = preconditions.by_name(row["preconditions"].values())
        cells = []
        for name in names:
            if name not in found:  # measured before this precondition existed
                cells.append("-")
                continue
            records = found[name]
            value = statistics.fmean(r["value"] for r in records)
            cells.append(f"{value:.2f} ({sum(r['passed'] for r in records)}/{len(records)})")
        lines.append(f"| {design} | " + " | ".join(cells) + " |")
    scored_rows = {d: r for d, r in rows.items() if "target_math" in r}
    if scored_rows:
        heads = [f"{n} on target math" for n in (SWAP, *RIVALS)]
        lines += ["", "| design | " + " | ".join(heads) + " | math on English | margin | verdict |"]
        lines.append("|---|" + "---:|" * (len(heads) + 2) + "---|")
        for design, row in scored_rows.items():
            verdict = row["verdict"]
            se = verdict["standard_error"]
            margin = f"{100 * verdict['mean']:+.1f}" + (f" ± {100 * se:.1f}" if se else "")
            cells = [_percent(s) for s in row["target_math"].values()]
            cells += [_percent(row["math_english"]), margin, verdict["kind"]]
            lines.append(f"| {design} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--screen", action="store_true", help="seed 0's preconditions only")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rows = {}
    for name in args.designs:
        start = time.time()
        settings = LabSettings(seeds=1 if args.screen else args.seeds, **DESIGNS[name])
        folder = args.out / name
        if args.screen:
            with torch_threads(args.threads):
                rows[name] = screen(settings, folder)
        else:
            rows[name] = scored(run.run_lab(folder, settings, threads=args.threads))
        print(f"{name}: {time.time() - start:.0f} s", flush=True)
    (args.out / "designs.json").write_text(json.dumps(rows, indent=2))
    (args.out / "designs.md").write_text(tables(rows))
    print(tables(rows))


if __name__ == "__main__":
    main()
