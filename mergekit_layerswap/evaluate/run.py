"""Running MGSM or any lm-eval tasks through lm-evaluation-harness's Python API, cached.

`evaluate_models` validates everything first (languages or tasks, backend, data, models,
output), then scores each model with lm-eval's `simple_evaluate` on the official `mgsm_*`
tasks or the named ones, skipping the (model identity, settings, column) entries it has
already computed.
"""

from __future__ import annotations

import gc
import gzip
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from importlib.util import find_spec
from pathlib import Path
from typing import Any, NamedTuple

import mergekit_layerswap

from ..errors import InputError, first_line
from ..files import hold, link_out, write_atomic
from . import columns
from .columns import TaskSet
from .identity import ModelIdentity, resolve_model
from .mgsm import HUB_DATASET, task_manager, task_name, write_task_group
from .quiet import quiet
from .results import (
    RESULTS_JSON,
    ColumnResult,
    EvalResults,
    ModelResult,
    combine,
    differences,
    read_results,
    write_results,
)
from .settings import EvalSettings

#: Held in an `--output` folder while an evaluation writes into it (`files.hold`).
LOCK_FILE = ".layerswap-eval.lock"


class ColumnRun(NamedTuple):
    """A freshly scored column: its result and lm-eval's per-sample records."""

    result: ColumnResult
    samples: list[dict[str, Any]]


class ResultCache:
    """Per (model fingerprint, scoring settings, versions, column and, for a task, the name it
    ran through and the include folder's files): the result and samples."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @staticmethod
    def key(
        identity: ModelIdentity,
        settings: EvalSettings,
        task_set: TaskSet,
        column: str,
        versions: dict[str, str],
    ) -> dict[str, Any]:
        return {
            "model": identity.fingerprint,
            "language": column,  # named before tasks: kept, so earlier caches still hit
            **task_set.key(column),
            **settings.scoring_key(),
            "versions": versions,
        }

    def _path(self, key: dict[str, Any], suffix: str) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.directory / f"{digest[:32]}{suffix}"

    def load(self, key: dict[str, Any]) -> ColumnResult | None:
        """The cached result, or None (the result file is written last, so it means complete).
        An entry that does not read back (truncated, edited) is named once and scored again."""
        path = self._path(key, ".json")
        if not path.is_file():
            return None
        try:
            return ColumnResult.from_json(json.loads(path.read_bytes())["result"])
        except (ValueError, TypeError, KeyError) as error:  # JSON, UTF-8, fields
            print(f"note: ignoring unreadable cache entry {path} ({first_line(error)})", flush=True)
            return None

    def store(self, key: dict[str, Any], run: ColumnRun) -> None:
        from lm_eval.utils import handle_non_serializable

        lines = (
            json.dumps(sample, ensure_ascii=False, default=handle_non_serializable) + "\n"
            for sample in run.samples
        )
        write_atomic(self._path(key, ".samples.jsonl.gz"), gzip.compress("".join(lines).encode()))
        entry = {"key": key, "result": asdict(run.result)}
        write_atomic(self._path(key, ".json"), json.dumps(entry, indent=2).encode())

    def copy_samples(self, key: dict[str, Any], destination: Path) -> None:
        """Write the cached per-sample records, uncompressed, to `destination` (atomically)."""
        write_atomic(
            destination, gzip.decompress(self._path(key, ".samples.jsonl.gz").read_bytes())
        )


def _number(value: Any) -> float | None:
    """lm-eval's score as a float; None for its "N/A" and for NaN."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def column_result(output: dict[str, Any], task: str, dataset: str | None) -> ColumnResult:
    """Pick one task's headline and other-filter scores out of `simple_evaluate`'s output."""
    scores = output["results"][task]
    metric, chosen, other = columns.headline(output["configs"][task], scores)
    return ColumnResult(
        task=task,
        n=int(output["n-samples"][task]["effective"]),
        score=float(scores[f"{metric},{chosen}"]),
        stderr=_number(scores.get(f"{metric}_stderr,{chosen}")),
        other_filter=other,
        other_score=float(scores[f"{metric},{other}"]) if other else None,
        other_stderr=_number(scores.get(f"{metric}_stderr,{other}")),
        metric=metric,
        filter=chosen,
        dataset=dataset,
    )


def evaluate_lm(
    lm: Any,
    settings: EvalSettings,
    units: Sequence[str] | None = None,
    *,
    task_set: TaskSet | None = None,
) -> dict[str, ColumnRun]:
    """Score an lm-eval `LM` in one lm-eval run; returns a run per column.

    `units` (default: all of the settings') are MGSM language codes, or the task and group
    names to run (a group gives a column per task). `task_set` is what `columns.resolve`
    found for the settings (resolved here when not given).
    """
    import lm_eval

    if task_set is None:
        task_set = columns.mgsm_set(settings) if settings.is_mgsm else columns.resolve(settings)
    units = tuple(units or task_set.units)
    with tempfile.TemporaryDirectory(prefix="mgsm-tasks-") as include_dir, quiet():
        if settings.is_mgsm:
            group = write_task_group(Path(include_dir), settings.mode, units, settings.data_dir)
            requested, manager = [group], task_manager(Path(include_dir))
        else:
            requested, manager = list(units), columns.task_manager(settings, task_set)
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=requested,
            task_manager=manager,
            num_fewshot=settings.num_fewshot,
            limit=settings.limit,
            gen_kwargs={"max_gen_toks": settings.max_gen_toks},
            log_samples=True,
        )
    runs = {}
    for column in (column for unit in units for column in task_set.units[unit]):
        if settings.is_mgsm:
            task, dataset = task_name(settings.mode, column), HUB_DATASET
        else:
            task, dataset = column, output["configs"][column].get("dataset_path")
        runs[column] = ColumnRun(column_result(output, task, dataset), output["samples"][task])
    return runs


def _resolve_device(settings: EvalSettings) -> str:
    import torch

    if settings.device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if settings.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {settings.device!r} asked for, but torch sees no CUDA")
    return settings.device


def load_lm(identity: ModelIdentity, settings: EvalSettings, device: str | None) -> Any:
    """The lm-eval LM for `identity` on the settings' backend."""
    revision = {"revision": identity.revision} if identity.revision else {}
    if settings.backend == "vllm":
        from lm_eval.models.vllm_causallms import VLLM

        return VLLM(pretrained=identity.location, batch_size=settings.batch_size, **revision)
    from lm_eval.models.huggingface import HFLM

    with quiet():
        return HFLM(
            pretrained=identity.location, batch_size=settings.batch_size, device=device, **revision
        )


def check_writable(directory: Path, what: str) -> None:
    """InputError unless `directory` is, or can be made as, a writable folder (nothing
    is created here)."""
    existing = next(path for path in (directory, *directory.absolute().parents) if path.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(
            f"cannot write to the {what} directory {directory}: {existing} is not a writable "
            "folder; choose another"
        )


def _previous_results(
    output_dir: Path, settings: EvalSettings, versions: dict[str, str]
) -> EvalResults | None:
    """The results already in `output_dir`, if any; InputError if they cannot be merged."""
    path = output_dir / RESULTS_JSON
    if not path.exists():
        return None
    try:
        previous = read_results(path)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(
            f"{path} cannot be read as eval results ({error}): choose another --output"
        ) from None
    if changed := differences(previous, settings, versions):
        raise InputError(
            f"{path} holds results for other settings ({'; '.join(changed)}): choose another "
            "--output (a results folder only gathers runs with the same settings)"
        )
    return previous


class Prepared(NamedTuple):
    """What `prepare` found: the models' identities, the HF device, the library versions,
    results already there, the columns."""

    identities: list[ModelIdentity]
    device: str | None
    versions: dict[str, str]
    previous: EvalResults | None
    task_set: TaskSet


def prepare(
    models: Sequence[str],
    settings: EvalSettings,
    output_dir: Path,
    cache_dir: Path,
    *,
    replace: bool = False,
    task_set: TaskSet | None = None,
) -> Prepared:
    """Check every input before any model loads; raise one InputError naming every problem.
    `task_set`: the columns, when the caller resolved them already (a suite)."""
    problems: list[str] = []

    def check(function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except InputError as error:
            problems.extend(error.problems)
            return None

    if not models:
        problems.append("no model given")
    vllm_missing = settings.backend == "vllm" and find_spec("vllm") is None
    if vllm_missing:
        problems.append(
            "the vllm backend needs the vllm package, which is not installed: "
            "pip install 'lm-eval[vllm]==0.4.13' (Linux with a CUDA GPU)"
        )
    vllm = [] if vllm_missing or settings.backend != "vllm" else ["vllm"]
    versions = mergekit_layerswap.versions("lm_eval", "transformers", "torch", *vllm)
    if task_set is None:
        task_set = check(lambda: columns.resolve(settings, outputs=(output_dir, cache_dir)))
    identities = [check(resolve_model, model) for model in models]
    device = None if settings.backend == "vllm" else check(_resolve_device, settings)
    check(check_writable, output_dir, "output")
    if not cache_dir.is_relative_to(output_dir):  # else the output folder's problem covers it
        check(check_writable, cache_dir, "cache")
    inside = [output_dir / "samples", *([cache_dir] if cache_dir.parent == output_dir else [])]
    problems += filter(None, (link_out(output_dir, path) for path in inside))
    previous = None if replace else check(_previous_results, output_dir, settings, versions)
    if problems:
        raise InputError(problems)
    return Prepared(identities, device, versions, previous, task_set)


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _describe(column: str, result: ColumnResult, cached: bool) -> str:
    stderr = result.stderr
    spread = f" ± {100 * stderr:.1f}" if stderr is not None else ""
    other = (
        f"; {result.other_filter} {100 * result.other_score:.1f}%"
        if result.other_score is not None
        else ""
    )
    return (
        f"  {column}: {result.metric} {100 * result.score:.1f}%{spread} (n={result.n}"
        f"{other})" + (" [cached]" if cached else "")
    )


def evaluate_models(
    models: Sequence[str],
    settings: EvalSettings,
    output_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    replace: bool = False,
    task_set: TaskSet | None = None,
) -> EvalResults:
    """Score `models` (local directories or Hub ids) on MGSM or the settings' lm-eval tasks;
    write results into `output_dir`.

    Writes `results.json`, `results.md` and, with `settings.log_samples`, one JSONL file of
    lm-eval's per-sample records per model and task under `samples/`. Models already in
    `results.json` from an earlier run stay there (a model scored again replaces its entry);
    results for other settings are refused, or with `replace` overwritten. Results are cached
    in `cache_dir` (default `output_dir/cache`): a repeated evaluation generates nothing.
    Raises InputError, before loading any model, for bad input; another evaluation writing
    into `output_dir` at the same time is one (a lock). `task_set`: the columns, if resolved
    already. Returns this run's models.
    """
    output_dir = Path(output_dir)
    cache = ResultCache(Path(cache_dir) if cache_dir is not None else output_dir / "cache")
    prepared = prepare(
        models, settings, output_dir, cache.directory, replace=replace, task_set=task_set
    )
    with hold(output_dir, LOCK_FILE, "eval run", "--output"):
        # read again under the lock: a run that finished meanwhile keeps its models
        previous = None if replace else _previous_results(output_dir, settings, prepared.versions)
        results = _score(prepared, settings, output_dir, cache)
        write_results(combine(previous, results) if previous else results, output_dir)
    return results


def _score(
    prepared: Prepared, settings: EvalSettings, output_dir: Path, cache: ResultCache
) -> EvalResults:
    """Score every model of `prepared`, from the cache where it can; write samples."""
    identities, device, versions, _, task_set = prepared
    cache.directory.mkdir(parents=True, exist_ok=True)
    model_results = []
    for index, identity in enumerate(identities, 1):
        keys = {
            column: cache.key(identity, settings, task_set, column, versions)
            for column in task_set.columns
        }
        found = {column: cache.load(key) for column, key in keys.items()}
        missing = [
            unit
            for unit, unit_columns in task_set.units.items()
            if any(found[column] is None for column in unit_columns)
        ]
        shots = f"{settings.num_fewshot}-shot" if settings.num_fewshot is not None else "own shots"
        print(
            f"[{index}/{len(identities)}] {identity.model}: "
            + (f"evaluating {','.join(missing)} " if missing else "all cached ")
            + (f"({settings.mode}, {shots}" if settings.is_mgsm else f"({shots}")
            + (f", limit {settings.limit})" if settings.limit else ")"),
            flush=True,
        )
        runs: dict[str, ColumnRun] = {}
        if missing:
            lm = load_lm(identity, settings, device)
            runs = evaluate_lm(lm, settings, missing, task_set=task_set)
            del lm
            _free_memory()
            for column, run in runs.items():
                cache.store(keys[column], run)
                found[column] = run.result
        for column, result in found.items():
            print(_describe(column, result, cached=column not in runs), flush=True)
            if settings.log_samples:
                path = output_dir / "samples" / identity.slug / f"{result.task}.jsonl"
                cache.copy_samples(keys[column], path)
        model_results.append(ModelResult(identity, found))
    return EvalResults(settings, versions, model_results)
