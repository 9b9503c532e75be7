"""The lab's checks before anything runs: its settings from the command line, the threads,
the device, the output folder and the disk space it needs; every problem at once."""

from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import ValidationError

from mergekit_layerswap.errors import InputError
from mergekit_layerswap.lab import language, train
from mergekit_layerswap.lab.run import suite_config
from mergekit_layerswap.lab.settings import LabSettings
from mergekit_layerswap.threads import threads_problems


def disk_needed(settings: LabSettings) -> int:
    """About how many bytes a run writes: each seed's base, experts and written merges in
    float32 (sweep variants are scored in memory), with a quarter more for the rest."""
    hidden, layers, _, intermediate = train.SIZES[settings.size]
    vocab = len(language.vocabulary()) + 4
    per_layer = 4 * hidden * hidden + 3 * hidden * intermediate + 2 * hidden
    model = 4 * (2 * vocab * hidden + layers * per_layer + hidden)
    merges = len(suite_config(settings, {}, {"donor": {}, "transition": 0}, Path())["merges"])
    return int(1.25 * settings.seeds * (3 + merges) * model)


def check_lab(out_dir: str | Path, threads: int | None, **values) -> LabSettings:
    """LabSettings from the command line's `values`, or InputError with every problem
    (settings, `--threads`, a `--device` this machine lacks, an output folder that cannot be
    written or lacks the space) before anything is trained or written."""
    from mergekit_layerswap.evaluate.run import check_writable
    from mergekit_layerswap.evaluate.settings import problems as pydantic_problems

    problems, settings = [], None
    try:
        settings = LabSettings(**values)
    except ValidationError as error:
        problems += pydantic_problems(error, as_flags=True)
    problems += threads_problems(threads)
    if values.get("device") == "cuda":
        import torch

        if not torch.cuda.is_available():
            problems.append("--device cuda: torch sees no CUDA GPU here; use --device cpu")
    out = Path(out_dir)
    try:
        check_writable(out, "output")
    except InputError as error:
        problems += error.problems
    else:
        if settings is not None:
            problems += _space_problems(out, disk_needed(settings))
    if problems:
        raise InputError(problems)
    return settings


def _space_problems(out: Path, needed: int) -> list[str]:
    """A problem line when the file system of `out` has not `needed` bytes free (what `out`
    already holds counts: a resumed run rewrites little)."""
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    held = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.is_dir() else 0
    free = shutil.disk_usage(existing).free
    if free + held >= needed:
        return []
    return [
        f"{out}: the lab writes about {needed / 1e6:.0f} MB and {existing} has "
        f"{free / 1e6:.0f} MB free; free some space or choose another OUT_DIR"
    ]
