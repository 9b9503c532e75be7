"""A suite of independent tasks on a 2-CPU Ray cluster: wall time against the sum of its
task times.

N tiny local models are scored as the suite's inputs (N independent evaluation tasks, MGSM
sw + en on the local data), once with `--executor ray` on a local Ray cluster of `--cpus`
CPUs (one CPU per task) and once with the local executor (one process, for reference). For
the Ray run it prints the wall time of the task graph, the sum of the tasks' own times (both
from OUT_DIR/ray-run.json, measured in that one run) and their ratio: below 1 means the
tasks overlapped (1/CPUs is the ideal).

Usage: MGSM_DATA_DIR=FULL_MGSM_COPY python bench/ray_speed.py [--models 4] [--limit 32]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import ray
from _support import tiny

from mergekit_layerswap.suite import ray_run, runner
from mergekit_layerswap.suite.schema import parse_suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=4, help="independent evaluations")
    parser.add_argument("--limit", type=int, default=32, help="MGSM problems per language")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--data-dir", default=os.environ.get("MGSM_DATA_DIR"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ray-speed-"))
    tokenizer = tiny.train_tokenizer(work / "tokenizer")
    models = {
        f"m{i}": str(
            tiny.build_model(work / f"m{i}", num_layers=6, seed=i, tokenizer_dir=tokenizer)
        )
        for i in range(args.models)
    }
    evaluation = {"languages": ["sw", "en"], "limit": args.limit, "max_gen_toks": 64}
    if args.data_dir:
        evaluation["data_dir"] = args.data_dir
    suite = parse_suite(
        {"models": models, "evaluate_inputs": list(models), "evaluation": evaluation}
    )
    print(
        f"{args.models} independent evaluations (6-layer tiny models, MGSM sw+en, first "
        f"{args.limit} problems), Ray cluster of {args.cpus} CPUs"
    )
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    runner.run_suite(suite, work / "out-ray", executor="ray")
    ray.shutdown()
    summary = json.loads((work / "out-ray" / ray_run.RUN_FILE).read_text())
    wall, busy = summary["wall_seconds"], summary["task_seconds"]

    start = time.perf_counter()
    runner.run_suite(suite, work / "out-local")
    local = time.perf_counter() - start
    print(
        f"RESULT ray: wall {wall:.1f} s, sum of task times {busy:.1f} s, "
        f"wall / sum = {wall / busy:.2f} ({summary['run']} tasks); "
        f"local executor: {local:.1f} s"
    )


if __name__ == "__main__":
    main()
