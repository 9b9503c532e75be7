"""The lab's preconditions for several designs, one seed each: can a design judge a swap?

Trains the base and both experts of each design (LabSettings overrides), runs `analyze` for
the designated swap and measures every precondition (`lab.preconditions`), without merging or
scoring anything; prints one row per design and writes OUT/designs.json.

Usage: python bench/lab_designs.py OUT [--seed 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mergekit_layerswap import analysis
from mergekit_layerswap.lab import preconditions, run, testsets
from mergekit_layerswap.lab.settings import LabSettings

DEFAULT_MIXTURE = LabSettings().mixture
DESIGNS = {
    "default": {},
    # more parallel and code-switched base text (alignment, transfer)
    "parallel": {
        "mixture": DEFAULT_MIXTURE
        | {"parallel": 0.25, "story_parallel": 0.15, "generic_en": 0.2, "arithmetic": 0.2}
    },
    # gentler experts: a third of the learning rate (smaller, more local updates)
    "gentle": {"expert_lr": 3e-4},
    # modular experts (Bandarkar & Peng 2025): math trains the middle, language the outside
    "modular": {"modular": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    args = parser.parse_args()
    quiet = lambda *_: lambda *_: None  # noqa: E731
    rows = {}
    with run.torch_threads(args.threads):
        for name in args.designs:
            start = time.time()
            settings = LabSettings(seeds=1, **DESIGNS[name])
            test = testsets.build(settings.language, settings.n_test, settings.test_seed)
            folder = args.out / name
            models = run.train_models(settings, args.seed, folder / "models", test.excludes, quiet)
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
                seed=args.seed,
                excluded=test.excludes,
                max_tokens=settings.max_gen_toks,
            )
            rows[name] = {"swap": swap, "preconditions": [p.record() for p in found]}
            cells = "  ".join(
                f"{p.name} {p.value:.2f}/{p.threshold:.2f} {'ok' if p.passed else 'FAIL'}"
                for p in found
            )
            print(f"{name:<9} {time.time() - start:5.0f} s  {cells}", flush=True)
    (args.out / "designs.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
