"""The lab's verdict, in one of three kinds: "effect", "no effect" or "cannot judge".

- **cannot judge** when a precondition (`preconditions`) fails on more than half of the
  seeds (named with its mean value against its threshold), or with one seed: one seed never
  claims a win;
- **effect** when the designated swap's margin over the best of its rivals (both experts
  and the soup) on target-language math is beyond noise across seeds: its mean is above
  twice its standard error (the sample standard deviation over seeds / sqrt(seeds));
- **no effect** otherwise.

The margin a test of `n` items per task over `s` seeds can detect is stated with it: twice
the standard error of a difference of two accuracies near 50 %, sqrt(2 · 0.25 / (n · s)).
"""

from __future__ import annotations

import math
import statistics

from mergekit_layerswap.lab.preconditions import by_name

SWAP = "layer-swap"
RIVALS = ("math", "lang", "soup")


def detectable(n_items: int, seeds: int) -> float:
    """The smallest margin (as a fraction) that 2 standard errors can tell from 0."""
    return 2 * math.sqrt(2 * 0.25 / (n_items * seeds))


def failing(seeds: dict) -> list[str]:
    """'NAME (mean value vs threshold, failed on K of S seeds)' for each precondition that
    fails on more than half of the seeds (each seed's records under "preconditions")."""
    lines = []
    for name, records in by_name(s["preconditions"] for s in seeds.values()).items():
        failed = sum(not r["passed"] for r in records)
        if failed * 2 > len(records):
            value = statistics.fmean(r["value"] for r in records)
            threshold = statistics.fmean(r["threshold"] for r in records)
            seeds = "the seed" if len(records) == 1 else f"{failed} of {len(records)} seeds"
            lines.append(f"{name} fails ({value:.2f} vs {threshold:.2f}; on {seeds})")
    return lines


def judge(seeds: dict, target_column: str, n_items: int) -> dict:
    """The verdict of the seeds' scores (`seeds`: seed -> {"models": {name: {"columns":
    ...}}, "preconditions": [record, ...]}) on `target_column` (flexible-extract)."""

    def score(seed: dict, name: str) -> float:
        return seed["models"][name]["columns"][target_column]["score"] or 0.0

    margins = [score(s, SWAP) - max(score(s, r) for r in RIVALS) for s in seeds.values()]
    n = len(margins)
    mean = statistics.fmean(margins)
    se = statistics.stdev(margins) / math.sqrt(n) if n > 1 else math.inf
    smallest = detectable(n_items, n)
    failed = failing(seeds)
    if failed:
        kind, reason = "cannot judge", "; ".join(failed)
    elif n == 1:
        kind, reason = "cannot judge", "one seed (a win needs its margin across 2 or more seeds)"
    elif mean > 2 * se:
        kind, reason = "effect", "the mean margin is above twice its standard error"
    else:
        kind, reason = "no effect", "the mean margin is not above twice its standard error"
    spread = f" ± {100 * se:.1f} (standard error)" if n > 1 else ""
    text = (
        f"{kind}: {reason}. On {target_column} (flexible-extract) the designated swap's margin "
        f"over the best of math expert, language expert and soup was {100 * mean:+.1f}"
        f"{spread} points over {n} seed{'s' if n > 1 else ''}; with {n_items} problems per "
        f"task this test detects margins of about {100 * smallest:.0f} points or more."
    )
    return {
        "kind": kind,
        "reason": reason,
        "margins": margins,
        "mean": mean,
        "standard_error": None if n == 1 else se,
        "detectable": smallest,
        "test": "mean margin over seeds > 2 x its standard error (stdev / sqrt(seeds))",
        "text": text,
    }
