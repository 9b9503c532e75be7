"""Time `mergekit-layerswap eval` against the raw `lm_eval` CLI on the same MGSM evaluation.

Both score one tiny random Llama (built here, locally trained tokenizer) on the official
`mgsm_native_cot_*` tasks, 0-shot, at our default batch size, from the local MGSM copy; the
script checks that the scores agree and prints our time over lm_eval's (target <= 1.05), both
wall-clock and CPU (user + sys of the child process: steadier on a shared machine), plus the
time of a repeated, cached run of our command.

    python bench/eval_speed.py                      # 5 languages x 250 problems (minutes)
    python bench/eval_speed.py --limit 20           # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _support import tiny  # noqa: E402

from mergekit_layerswap.evaluate.mgsm import (  # noqa: E402
    HEADLINE_FILTER,
    parse_languages,
    task_name,
    write_task_group,
)
from mergekit_layerswap.evaluate.settings import DEFAULT_HF_BATCH_SIZE  # noqa: E402

MODE = "native_cot"


def timed(command: list[str], log: Path) -> tuple[float, float]:
    """Run `command` from the repo root, output to `log`; return (wall, CPU) seconds."""

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    start_wall, start_cpu = time.perf_counter(), cpu()
    with log.open("w") as handle:
        subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start_wall, cpu() - start_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--languages", default="sw,te,bn,ja,en")
    parser.add_argument("--limit", type=int, help="problems per language (default: all 250)")
    parser.add_argument("--batch-size", default=str(DEFAULT_HF_BATCH_SIZE))
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("MGSM_DATA_DIR", ROOT.parent / "shared" / "mgsm" / "hf")),
    )
    args = parser.parse_args()
    languages = parse_languages(args.languages)
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    limit = ["--limit", str(args.limit)] if args.limit else []

    with tempfile.TemporaryDirectory(prefix="eval-speed-") as tmp:
        work = Path(tmp)
        model = tiny.build_model(work / "model")
        import datasets  # warm the datasets cache, so neither timed run pays for it

        for code in languages:
            datasets.load_dataset(str(args.data_dir), code)

        ours = [
            sys.executable,
            "-m",
            "mergekit_layerswap.cli",
            "eval",
            str(model),
            "--languages",
            ",".join(languages),
            "--mode",
            MODE,
            "--data-dir",
            str(args.data_dir),
            "--batch-size",
            args.batch_size,
            "--output",
            str(work / "ours"),
            *limit,
        ]
        write_task_group(work, MODE, languages, args.data_dir)
        raw = [
            sys.executable,
            "-m",
            "lm_eval",
            "run",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={model}",
            "--tasks",
            "mergekit_layerswap_mgsm",
            "--include_path",
            str(work),
            "--batch_size",
            args.batch_size,
            "--device",
            "cpu",
            "--output_path",
            str(work / "raw"),
            *limit,
        ]
        ours_s = timed(ours, work / "ours.log")
        raw_s = timed(raw, work / "raw.log")
        cached_s = timed(ours, work / "cached.log")

        ours_scores = json.loads((work / "ours" / "results.json").read_text())
        ours_em = {c: r["score"] for c, r in ours_scores["models"][0]["columns"].items()}
        raw_file = next((work / "raw").rglob("results_*.json"))
        raw_results = json.loads(raw_file.read_text())["results"]
        raw_em = {
            c: raw_results[task_name(MODE, c)][f"exact_match,{HEADLINE_FILTER}"] for c in languages
        }

    print(
        f"{len(languages)} languages x {args.limit or 250} problems, {MODE}, 0-shot, "
        f"batch size {args.batch_size}, tiny Llama, {os.cpu_count()} CPU cores"
    )
    print(f"{'':<24} {'wall s':>7}  {'CPU s':>7}")
    rows = [("mergekit-layerswap eval", ours_s), ("lm_eval run (raw CLI)", raw_s)]
    for label, (wall, cpu) in [*rows, ("repeat, cached", cached_s)]:
        print(f"{label:<24} {wall:7.1f}  {cpu:7.1f}")
    wall_ratio, cpu_ratio = (ours / raw for ours, raw in zip(ours_s, raw_s, strict=True))
    print(f"{'ratio ours / raw':<24} {wall_ratio:7.3f}  {cpu_ratio:7.3f}   (target <= 1.05)")
    print(f"exact_match identical:   {ours_em == raw_em}  {ours_em}")
    print("command: python bench/eval_speed.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
