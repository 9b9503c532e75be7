"""The demo on a busy machine: its wall time alone, then with one busy process per core.

Runs `mergekit-layerswap demo` twice into fresh folders, the second time beside `os.cpu_count()`
processes that spin on the CPU (what another user's job does), and prints both wall times
and their ratio (target: at most 2.0 on a 2-core machine). Pass `--threads N` to time another
thread count than the demo's default; `--threads default` runs the demo as a user would.

Usage: python bench/demo_under_load.py [--threads default|N] [--workdir DIR]
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


def run_demo(out: Path, threads: str) -> float:
    """Wall seconds of one demo into `out` (its output goes to `out`.log)."""
    argv = [sys.executable, "-m", "mergekit_layerswap.cli", "demo", str(out)]
    if threads != "default":
        argv += ["--threads", threads]
    start = time.perf_counter()
    with open(f"{out}.log", "w") as log:
        subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="default", help="the demo's --threads (or default)")
    parser.add_argument("--workdir", help="where the demos write (default: a new temp folder)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="demo-load-"))
    work.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    print(
        f"{cores} cores, demo --threads {args.threads}, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, load before: {os.getloadavg()[0]:.2f}"
    )

    quiet = run_demo(work / "quiet", args.threads)
    print(f"demo alone:                  {quiet:7.1f} s", flush=True)
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(cores)]
    try:
        busy = run_demo(work / "busy", args.threads)
    finally:
        for spinner in spinners:
            spinner.kill()
    print(f"demo beside {cores} busy processes: {busy:7.1f} s")
    print(f"busy / alone = {busy / quiet:.2f} (target <= 2.0); outputs in {work}")
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
