"""Running MGSM through lm-evaluation-harness's Python API, with a result cache.

`evaluate_models` validates everything first (languages, backend, data, models, output), then
scores each model with lm-eval's `simple_evaluate` on the official `mgsm_*` tasks, skipping
the (model identity, settings, language) entries it has already computed.
"""

from __future__ import annotations

import gc
import gzip
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path
from typing import Any, NamedTuple

from .. import __version__
from .identity import ModelIdentity, resolve_model
from .quiet import quiet
from .results import (
    RESULTS_JSON,
    EvalResults,
    LanguageResult,
    ModelResult,
    combine,
    differences,
    read_results,
    write_results,
)
from .settings import EvalSettings
from .tasks import (
    HEADLINE_FILTER,
    OTHER_FILTER,
    EvalInputError,
    check_data_dir,
    task_manager,
    task_name,
    write_task_group,
)


class LanguageRun(NamedTuple):
    """A freshly scored language: its result and lm-eval's per-sample records."""

    result: LanguageResult
    samples: list[dict[str, Any]]


def library_versions(backend: str) -> dict[str, str]:
    """Versions of what produces the scores (part of every cache key)."""
    names = ["lm_eval", "transformers", "torch"] + (["vllm"] if backend == "vllm" else [])
    return {name: version(name) for name in names} | {"mergekit_layerswap": __version__}


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


class ResultCache:
    """Per (model fingerprint, scoring settings, versions, language): the result and samples."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @staticmethod
    def key(
        identity: ModelIdentity, settings: EvalSettings, language: str, versions: dict[str, str]
    ) -> dict[str, Any]:
        return {
            "model": identity.fingerprint,
            "language": language,
            **settings.scoring_key(),
            "versions": versions,
        }

    def _path(self, key: dict[str, Any], suffix: str) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.directory / f"{digest[:32]}{suffix}"

    def load(self, key: dict[str, Any]) -> LanguageResult | None:
        """The cached result, or None (the result file is written last, so it means complete)."""
        path = self._path(key, ".json")
        if not path.is_file():
            return None
        return LanguageResult(**json.loads(path.read_text())["result"])

    def store(self, key: dict[str, Any], run: LanguageRun) -> None:
        from lm_eval.utils import handle_non_serializable

        lines = (
            json.dumps(sample, ensure_ascii=False, default=handle_non_serializable) + "\n"
            for sample in run.samples
        )
        _write_atomic(self._path(key, ".samples.jsonl.gz"), gzip.compress("".join(lines).encode()))
        entry = {"key": key, "result": asdict(run.result)}
        _write_atomic(self._path(key, ".json"), json.dumps(entry, indent=2).encode())

    def copy_samples(self, key: dict[str, Any], destination: Path) -> None:
        """Write the cached per-sample records, uncompressed, to `destination`."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(self._path(key, ".samples.jsonl.gz")) as src, destination.open("wb") as dst:
            shutil.copyfileobj(src, dst)


def _number(value: Any) -> float | None:
    """lm-eval's score as a float; None for its "N/A" and for NaN."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def language_result(output: dict[str, Any], mode: str, language: str) -> LanguageResult:
    """Pick one task's scores out of `simple_evaluate`'s output."""
    task = task_name(mode, language)
    scores, other = output["results"][task], OTHER_FILTER[mode]
    return LanguageResult(
        task=task,
        n=int(output["n-samples"][task]["effective"]),
        exact_match=float(scores[f"exact_match,{HEADLINE_FILTER}"]),
        exact_match_stderr=_number(scores.get(f"exact_match_stderr,{HEADLINE_FILTER}")),
        other_filter=other,
        other_exact_match=float(scores[f"exact_match,{other}"]),
        other_exact_match_stderr=_number(scores.get(f"exact_match_stderr,{other}")),
    )


def evaluate_lm(
    lm: Any, settings: EvalSettings, languages: Sequence[str] | None = None
) -> dict[str, LanguageRun]:
    """Score an lm-eval `LM` on MGSM `languages` (default: the settings') in one lm-eval run."""
    import lm_eval

    languages = tuple(languages or settings.languages)
    with tempfile.TemporaryDirectory(prefix="mgsm-tasks-") as include_dir, quiet():
        group = write_task_group(Path(include_dir), settings.mode, languages, settings.data_dir)
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=[group],
            task_manager=task_manager(Path(include_dir)),
            num_fewshot=settings.num_fewshot,
            limit=settings.limit,
            gen_kwargs={"max_gen_toks": settings.max_gen_toks},
            log_samples=True,
        )
    return {
        code: LanguageRun(
            language_result(output, settings.mode, code),
            output["samples"][task_name(settings.mode, code)],
        )
        for code in languages
    }


def _resolve_device(settings: EvalSettings) -> str:
    import torch

    if settings.device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if settings.device.startswith("cuda") and not torch.cuda.is_available():
        raise EvalInputError(f"device {settings.device!r} asked for, but torch sees no CUDA")
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
    """EvalInputError unless `directory` is, or can be made as, a writable folder (nothing
    is created here)."""
    existing = next(path for path in (directory, *directory.absolute().parents) if path.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise EvalInputError(
            f"cannot write to the {what} directory {directory}: {existing} is not a writable "
            "folder; choose another"
        )


def _previous_results(
    output_dir: Path, settings: EvalSettings, versions: dict[str, str]
) -> EvalResults | None:
    """The results already in `output_dir`, if any; EvalInputError if they cannot be merged."""
    path = output_dir / RESULTS_JSON
    if not path.exists():
        return None
    try:
        previous = read_results(path)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise EvalInputError(
            f"{path} cannot be read as eval results ({error}): choose another --output"
        ) from None
    if changed := differences(previous, settings, versions):
        raise EvalInputError(
            f"{path} holds results for other settings ({'; '.join(changed)}): choose another "
            "--output (a results folder only gathers runs with the same settings)"
        )
    return previous


class Prepared(NamedTuple):
    """What `prepare` found: the models' identities, the HF device, the library versions,
    results already there."""

    identities: list[ModelIdentity]
    device: str | None
    versions: dict[str, str]
    previous: EvalResults | None


def prepare(
    models: Sequence[str],
    settings: EvalSettings,
    output_dir: Path,
    cache_dir: Path,
    *,
    replace: bool = False,
) -> Prepared:
    """Check every input before any model loads; raise one EvalInputError naming every problem."""
    problems: list[str] = []

    def check(function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except EvalInputError as error:
            problems.extend(error.problems)
            return None

    if not models:
        problems.append("no model given")
    vllm_missing = settings.backend == "vllm" and find_spec("vllm") is None
    if vllm_missing:
        problems.append(
            "the vllm backend needs the vllm package, which is not installed: "
            "pip install 'mergekit-layerswap[vllm]' (Linux with a CUDA GPU)"
        )
    versions = library_versions("hf" if vllm_missing else settings.backend)
    check(check_data_dir, settings.data_dir, settings.languages)
    identities = [check(resolve_model, model) for model in models]
    device = None if settings.backend == "vllm" else check(_resolve_device, settings)
    check(check_writable, output_dir, "output")
    if not cache_dir.is_relative_to(output_dir):  # else the output folder's problem covers it
        check(check_writable, cache_dir, "cache")
    previous = None if replace else check(_previous_results, output_dir, settings, versions)
    if problems:
        raise EvalInputError(*problems)
    return Prepared(identities, device, versions, previous)


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _describe(code: str, result: LanguageResult, cached: bool) -> str:
    stderr = result.exact_match_stderr
    spread = f" ± {100 * stderr:.1f}" if stderr is not None else ""
    return (
        f"  {code}: exact_match {100 * result.exact_match:.1f}%{spread} (n={result.n}; "
        f"{result.other_filter} {100 * result.other_exact_match:.1f}%)"
        + (" [cached]" if cached else "")
    )


def evaluate_models(
    models: Sequence[str],
    settings: EvalSettings,
    output_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    replace: bool = False,
) -> EvalResults:
    """Score `models` (local directories or Hub ids) on MGSM; write results into `output_dir`.

    Writes `results.json`, `results.md` and, with `settings.log_samples`, one JSONL file of
    lm-eval's per-sample records per model and task under `samples/`. Models already in
    `results.json` from an earlier run stay there (a model scored again replaces its entry);
    results for other settings are refused, or with `replace` overwritten. Results are cached
    in `cache_dir` (default `output_dir/cache`): a repeated evaluation generates nothing.
    Raises EvalInputError, before loading any model, for bad input. Returns this run's models.
    """
    output_dir = Path(output_dir)
    cache = ResultCache(Path(cache_dir) if cache_dir is not None else output_dir / "cache")
    identities, device, versions, previous = prepare(
        models, settings, output_dir, cache.directory, replace=replace
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    cache.directory.mkdir(parents=True, exist_ok=True)
    model_results = []
    for index, identity in enumerate(identities, 1):
        keys = {code: cache.key(identity, settings, code, versions) for code in settings.languages}
        found = {code: cache.load(key) for code, key in keys.items()}
        missing = [code for code, result in found.items() if result is None]
        print(
            f"[{index}/{len(identities)}] {identity.model}: "
            + (f"evaluating {','.join(missing)} " if missing else "all cached ")
            + f"({settings.mode}, {settings.num_fewshot}-shot"
            + (f", limit {settings.limit})" if settings.limit else ")"),
            flush=True,
        )
        if missing:
            lm = load_lm(identity, settings, device)
            runs = evaluate_lm(lm, settings, missing)
            del lm
            _free_memory()
            for code, run in runs.items():
                cache.store(keys[code], run)
                found[code] = run.result
        for code, result in found.items():
            print(_describe(code, result, cached=code not in missing), flush=True)
            if settings.log_samples:
                path = output_dir / "samples" / identity.slug / f"{result.task}.jsonl"
                cache.copy_samples(keys[code], path)
        model_results.append(ModelResult(identity, found))
    results = EvalResults(settings, versions, model_results)
    write_results(combine(previous, results) if previous else results, output_dir)
    return results
