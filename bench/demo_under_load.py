"""The demo on a busy machine: its wall time alone, then with one busy process per core.

Runs `mergekit-layerswap demo` twice into fresh folders, the second time beside `os.cpu_count()`
processes that spin on the CPU (what another user's job does), and prints both wall times
and their ratio (target: at most 2.0 on a 2-core machine). Pass `--threads N` to time another
thread count than the demo's default; `--threads default` runs the demo as a user would.

`--steps N` instead times N training steps of the demo's base (batch 32) with 1 and with 2
torch threads, alone and beside the busy processes: wall and CPU seconds per step, which
show where the time goes (CPU per step far above wall: threads spinning, not computing).

Usage: python bench/demo_under_load.py [--threads default|N] [--workdir DIR] [--steps N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPIN = "while True: pass"
STEPS = """
import sys, tempfile, time
from pathlib import Path
import torch
from mergekit_layerswap.lab import samplers, train
from mergekit_layerswap.lab.settings import LabSettings
threads, steps = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
base, _, _ = samplers.samplers(LabSettings(), frozenset())
tokenizer = train.build_tokenizer(Path(tempfile.mkdtemp()))
model = train.new_model("tiny", len(tokenizer), 0)
train.train(model, tokenizer, base, train.Schedule(5, 1e-3), seed=0)  # warm-up
wall, cpu = time.perf_counter(), time.process_time()
train.train(model, tokenizer, base, train.Schedule(steps, 1e-3), seed=0)
print((time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps)
"""


def run_demo(out: Path, threads: str) -> float:
    """Wall seconds of one demo into `out` (its output goes to `out`.log)."""
    argv = [sys.executable, "-m", "mergekit_layerswap.cli", "demo", str(out)]
    if threads != "default":
        argv += ["--threads", threads]
    start = time.perf_counter()
    with open(f"{out}.log", "w") as log:
        subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def busy(cores: int) -> list[subprocess.Popen]:
    """One process spinning on the CPU per core."""
    return [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(cores)]


def step_times(steps: int, cores: int) -> None:
    """Seconds per training step (wall, CPU) by thread count, alone and beside busy cores."""
    for load in (False, True):
        spinners = busy(cores) if load else []
        try:
            for threads in (1, 2):
                argv = [sys.executable, "-c", STEPS, str(threads), str(steps)]
                done = subprocess.run(argv, capture_output=True, text=True, check=True)
                wall, cpu = map(float, done.stdout.split())
                where = f"beside {cores} busy" if load else "alone"
                print(f"{threads} thread(s), {where:>13}: {wall:.3f} s/step wall, {cpu:.3f} CPU")
        finally:
            for spinner in spinners:
                spinner.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="default", help="the demo's --threads (or default)")
    parser.add_argument("--workdir", help="where the demos write (default: a new temp folder)")
    parser.add_argument("--steps", type=int, help="time N training steps instead of the demo")
    args = parser.parse_args()
    if args.steps:
        step_times(args.steps, os.cpu_count() or 1)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="demo-load-"))
    work.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    print(
        f"{cores} cores, demo --threads {args.threads}, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, load before: {os.getloadavg()[0]:.2f}"
    )

    quiet = run_demo(work / "quiet", args.threads)
    print(f"demo alone:                  {quiet:7.1f} s", flush=True)
    spinners = busy(cores)
    try:
        loaded = run_demo(work / "busy", args.threads)
    finally:
        for spinner in spinners:
            spinner.kill()
    print(f"demo beside {cores} busy processes: {loaded:7.1f} s")
    print(f"busy / alone = {loaded / quiet:.2f} (target <= 2.0); outputs in {work}")
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
