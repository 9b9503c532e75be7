"""Start-up cost of the .pth registration hook and of the torch-free commands.

Prints, from one run: the hook's share of a bare `python -c pass` (from -X importtime, median
of N runs) and the wall time of `mergekit-layerswap --help` and `validate` (on a config of
two tiny local models) against `python -c pass`. Target for both commands: < 0.5 s.
Usage: python bench/startup.py [N]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

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


def validate_config(folder: Path) -> Path:
    from _support import tiny

    host = tiny.build_model(folder / "math", num_layers=8, seed=1)
    donor = tiny.build_model(folder / "sw", num_layers=8, seed=2, tokenizer_dir=host)
    config = folder / "swap.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "merge_method": "layer_swap",
                "base_model": str(host),
                "models": [
                    {"model": str(host)},
                    {"model": str(donor), "parameters": {"bottom": 2}},
                ],
            }
        )
    )
    return config


def main() -> None:
    config = validate_config(Path(tempfile.mkdtemp(prefix="startup-")))
    hook = statistics.median(hook_microseconds() for _ in range(RUNS)) / 1000
    bare = statistics.median(wall([sys.executable, "-c", "pass"]) for _ in range(RUNS))
    helps = statistics.median(
        wall([sys.executable, "-m", "mergekit_layerswap.cli", "--help"]) for _ in range(RUNS)
    )
    checks = statistics.median(
        wall([sys.executable, "-m", "mergekit_layerswap.cli", "validate", str(config)])
        for _ in range(RUNS)
    )
    print(f"runs per figure             : {RUNS}")
    print(f"python -c pass (wall)       : {bare * 1000:7.1f} ms")
    print(f".pth hook import (cumulative): {hook:7.2f} ms  (target < 20 ms)")
    for label, seconds in (("--help", helps), ("validate", checks)):
        print(
            f"mergekit-layerswap {label:<9}: {seconds * 1000:7.1f} ms  "
            f"({seconds / bare:.2f}x bare python; target < 500 ms)"
        )


if __name__ == "__main__":
    main()
