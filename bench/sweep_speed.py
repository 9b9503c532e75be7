"""A K-variant layer-swap sweep: total suite time against the evaluations alone.

Runs one suite (tiny local experts, a sweep of K variants, MGSM sw + en on the local data)
twice in one process: with variants built in memory (the default) and written to disk
(`in_memory: false`). For each it prints the total `run_suite` wall time, the time spent
inside lm-eval's evaluation of the models, and their ratio (target <= 1.15 in memory).

Usage: MGSM_DATA_DIR=FULL_MGSM_COPY python bench/sweep_speed.py [--limit 20] [--layers 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _support import tiny

from mergekit_layerswap.evaluate import run as evaluate_run
from mergekit_layerswap.suite import in_memory as in_memory_sweep
from mergekit_layerswap.suite import runner
from mergekit_layerswap.suite.schema import parse_suite

EVAL_SECONDS: list[float] = []


def timed(function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            EVAL_SECONDS.append(time.perf_counter() - start)

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--data-dir", default=os.environ.get("MGSM_DATA_DIR"))
    args = parser.parse_args()
    # measure only what lm-eval spends evaluating, on both paths
    in_memory_sweep.evaluate_lm = timed(in_memory_sweep.evaluate_lm)
    evaluate_run.evaluate_lm = timed(evaluate_run.evaluate_lm)

    work = Path(tempfile.mkdtemp(prefix="sweep-speed-"))
    tokenizer = tiny.train_tokenizer(work / "tokenizer")
    host = tiny.build_model(work / "math", num_layers=args.layers, seed=1, tokenizer_dir=tokenizer)
    donor = tiny.build_model(work / "sw", num_layers=args.layers, seed=2, tokenizer_dir=tokenizer)
    grid = {"bottom": [1, 2], "top": [1, 2], "transition": [0, 1]}
    print(
        f"{len(grid['bottom']) * len(grid['top']) * len(grid['transition'])} variants, "
        f"{args.layers}-layer tiny experts, MGSM sw+en, first {args.limit} problems"
    )
    for in_memory in (True, False):
        suite = parse_suite(
            {
                "models": {"math": str(host), "sw": str(donor)},
                "sweep": {"base_model": "math", "donor": "sw", "in_memory": in_memory, **grid},
                "evaluation": {
                    "languages": ["sw", "en"],
                    "limit": args.limit,
                    "max_gen_toks": 64,
                    **({"data_dir": args.data_dir} if args.data_dir else {}),
                },
            }
        )
        EVAL_SECONDS.clear()
        start = time.perf_counter()
        runner.run_suite(suite, work / f"out-{in_memory}")
        total = time.perf_counter() - start
        evals = sum(EVAL_SECONDS)
        label = "in memory" if in_memory else "written "
        print(
            f"RESULT {label}: total {total:6.1f} s, evaluations {evals:6.1f} s, "
            f"ratio {total / evals:.3f}"
        )


if __name__ == "__main__":
    main()
