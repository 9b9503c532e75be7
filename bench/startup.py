"""Start-up cost of the .pth registration hook and of the torch-free commands.

Prints, from one run: the hook's share of a bare `python -c pass` (from -X importtime, median
of N runs) and the wall time of `mergekit-layerswap --help` against `python -c pass`.
Usage: python bench/startup.py [N]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 20


def hook_microseconds() -> int:
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True
    ).stderr
    line = next(x for x in err.splitlines() if x.rstrip().endswith("mergekit_layerswap._hook"))
    return int(line.split("|")[1])


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    hook = statistics.median(hook_microseconds() for _ in range(RUNS)) / 1000
    bare = statistics.median(wall([sys.executable, "-c", "pass"]) for _ in range(RUNS))
    helps = statistics.median(
        wall([sys.executable, "-m", "mergekit_layerswap.cli", "--help"]) for _ in range(RUNS)
    )
    print(f"runs per figure             : {RUNS}")
    print(f"python -c pass (wall)       : {bare * 1000:7.1f} ms")
    print(f".pth hook import (cumulative): {hook:7.2f} ms  (target < 20 ms)")
    print(
        f"mergekit-layerswap --help   : {helps * 1000:7.1f} ms  ({helps / bare:.2f}x bare python)"
    )


if __name__ == "__main__":
    main()
