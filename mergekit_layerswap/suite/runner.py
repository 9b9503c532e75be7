"""Run a suite: build every merge, score every model (MGSM or lm-eval tasks), write the
leaderboard.

Each entry is two steps, merge (merges and sweep variants only) and eval; each step is
skipped when its key says it already finished (see `store`). `--dry-run` prints the plan.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import asdict, dataclass
from pathlib import Path

from mergekit_layerswap import card, checkpoint, hub, merge, validate
from mergekit_layerswap.errors import InputError
from mergekit_layerswap.evaluate import columns
from mergekit_layerswap.evaluate.columns import TaskSet
from mergekit_layerswap.evaluate.identity import fingerprint_dir, resolve_model
from mergekit_layerswap.evaluate.run import check_writable
from mergekit_layerswap.evaluate.settings import EvalSettings
from mergekit_layerswap.suite import leaderboard
from mergekit_layerswap.suite.schema import Entry, Suite
from mergekit_layerswap.suite.store import Store, digest, read_json, write_json
from mergekit_layerswap.suite.sweep import InMemorySweep

#: Settings that do not change a score, left out of the evaluation key.
_NOT_IN_KEY = {"batch_size", "device", "data_dir", "log_samples"}


def _versions() -> dict[str, str]:
    names = ("mergekit", "mergekit-layerswap", "lm_eval", "transformers", "torch")
    return {name: importlib.metadata.version(name) for name in names}


@dataclass(frozen=True)
class Step:
    """One entry's plan: its keys, and whether its merge and eval must run."""

    entry: Entry
    key: str
    eval_key: str
    merge_needed: bool
    eval_needed: bool


def _model_path(entry: Entry, store: Store) -> str:
    return entry.model if entry.kind == "input" else str(store.merge_dir(entry.name))


def _fingerprint(reference: str) -> str:
    """A model's fingerprint, and its LoRA adapter's (`model+adapter`) when it has one."""
    model, plus, adapter = reference.partition("+")
    found = resolve_model(model).fingerprint
    if not plus:
        return found
    local = checkpoint.looks_local(adapter)
    return f"{found}+{fingerprint_dir(Path(adapter).expanduser()) if local else adapter}"


def _references(entry: Entry) -> list[str]:
    if entry.kind == "input":
        return [entry.model]
    found = {m["model"] for m in entry.config.get("models", [])}
    if entry.config.get("base_model"):
        found.add(entry.config["base_model"])
    return sorted(found)


def entry_key(entry: Entry, versions: dict[str, str], fingerprints: dict[str, str]) -> str:
    """Hash of what decides an entry's weights: its config, its inputs' identity, versions."""
    if entry.kind == "input":
        return digest("input", fingerprints[entry.model])
    inputs = {ref: fingerprints[ref] for ref in _references(entry)}
    return digest("merge", entry.config, entry.random_seed, inputs, versions)


def preflight(
    entries: tuple[Entry, ...], settings: EvalSettings, out: Path
) -> tuple[dict[str, str], TaskSet]:
    """Check everything a run needs before its first merge, every problem at once (a
    InputError): the MGSM data folder or the tasks, every input model, the output folder.
    Returns the input models' fingerprints and the evaluation's columns."""
    problems, fingerprints, task_set = [], {}, None
    try:
        task_set = columns.resolve(settings)
    except InputError as error:
        where = "evaluation.data_dir" if settings.is_mgsm else "evaluation"
        problems += [f"{where}: {problem}" for problem in error.problems]
    for reference in sorted({ref for entry in entries for ref in _references(entry)}):
        try:
            fingerprints[reference] = _fingerprint(reference)
        except (InputError, OSError) as error:
            problems.append(f"models: {error}")
    try:
        check_writable(out, "output")
    except InputError as error:
        problems.append(str(error))
    if problems or task_set is None:
        raise InputError(problems)
    return fingerprints, task_set


def plan(
    store: Store,
    settings: EvalSettings,
    task_set: TaskSet,
    entries: tuple[Entry, ...],
    fingerprints: dict[str, str],
    force: bool,
) -> list[Step]:
    """Decide, from keys alone, which merges and evaluations must run."""
    versions = _versions()
    score_settings = {k: v for k, v in asdict(settings).items() if k not in _NOT_IN_KEY}
    if task_set.include_digest is not None:  # the task files decide scores too
        score_settings["include_files"] = task_set.include_digest
    steps = []
    for entry in entries:
        key = entry_key(entry, versions, fingerprints)
        eval_key = digest(key, score_settings, versions)
        scored = not force and store.result(entry.name, key, eval_key) is not None
        merge_needed = (
            entry.kind != "input"
            and not entry.in_memory
            and not scored
            and (force or not store.merge_done(entry.name, key))
        )
        steps.append(Step(entry, key, eval_key, merge_needed, not scored))
    return steps


def describe(steps: list[Step]) -> list[str]:
    """The plan in words, one line per entry (for --dry-run)."""
    lines = []
    for step in steps:
        merge_state = (
            "-" if step.entry.kind == "input"
            else "memory" if step.entry.in_memory
            else "to run" if step.merge_needed
            else "cached"
        )  # fmt: skip
        eval_state = "to run" if step.eval_needed else "cached"
        lines.append(
            f"{step.entry.name:<28} {step.entry.kind:<6} {step.entry.method:<14} "
            f"merge: {merge_state:<7} eval: {eval_state}"
        )
    return lines


def _publish(store: Store, step: Step, suite: Suite) -> None:
    """Upload a scored merge once per key (a rerun does not upload it again)."""
    marker = store.merge_dir(step.entry.name) / ".layerswap-pushed.json"
    repo_id = f"{suite.push.namespace}/{step.entry.name}"
    if (read_json(marker) or {}).get("key") == step.key:
        print(f"push {repo_id}: already uploaded", flush=True)
        return
    print(f"push {repo_id}", flush=True)
    upload = hub.push(store.merge_dir(step.entry.name), repo_id, private=suite.push.private)
    write_json(marker, {"key": step.key, "repo_id": repo_id, "url": upload.url})
    if not suite.keep_weights:
        store.drop_weights(step.entry.name)


def run_suite(
    suite: Suite,
    out_dir: str | Path,
    *,
    only: list[str] | None = None,
    limit: int | None = None,
    data_dir: str | None = None,
    dry_run: bool = False,
    force: bool = False,
    cuda: bool = False,
) -> list[dict]:
    """Merge, score and rank; returns the leaderboard rows (empty on a dry run).

    Every input is checked before the first merge; the output folder is locked for the run.
    """
    store = Store(Path(out_dir))
    settings = suite.evaluation.settings(limit=limit, data_dir=data_dir)
    entries = suite.select(only)
    fingerprints, task_set = preflight(entries, settings, store.root)
    for dropped, kept in suite.duplicates.items():
        print(f"{dropped}: the same configuration as {kept}, scored once", flush=True)
    if dry_run:
        print("\n".join(describe(plan(store, settings, task_set, entries, fingerprints, force))))
        return []
    with store.lock():
        steps = plan(store, settings, task_set, entries, fingerprints, force)
        return _run(suite, store, settings, task_set, steps, cuda)


def _run(
    suite: Suite,
    store: Store,
    settings: EvalSettings,
    task_set: TaskSet,
    steps: list[Step],
    cuda: bool,
) -> list[dict]:
    """Merge, score, publish and rank the planned steps (the output folder is locked)."""
    from mergekit_layerswap.evaluate.run import evaluate_models

    pushed = set(suite.push.merges) if suite.push else set()
    merges = [s for s in steps if s.merge_needed]
    evals = [s for s in steps if s.eval_needed]
    for index, step in enumerate(merges, 1):
        print(f"merge {index}/{len(merges)} {step.entry.name}", flush=True)
        store.clear_merge(step.entry.name)
        merge.run(
            step.entry.config,
            store.merge_dir(step.entry.name),
            cuda=cuda,
            random_seed=step.entry.random_seed,
            metadata={"key": step.key, "name": step.entry.name, "seed": step.entry.random_seed},
        )
    sweep: InMemorySweep | None = None
    for index, step in enumerate(evals, 1):
        entry = step.entry
        record = {"name": entry.name, "kind": entry.kind, "method": entry.method,
                  "config": entry.config}  # fmt: skip
        if entry.in_memory:
            print(f"eval {index}/{len(evals)} {entry.name} (built in memory)", flush=True)
            host, donor = (m["model"] for m in entry.config["models"])
            sweep = sweep or InMemorySweep(host, donor, settings, task_set)
            runs = sweep.score(entry.config)
            scores = {code: asdict(run.result) for code, run in runs.items()}
            store.write_result(step.key, step.eval_key, {**record, "languages": scores})
            continue
        print(f"eval {index}/{len(evals)} {entry.name}", flush=True)
        results = evaluate_models(
            [_model_path(entry, store)], settings, store.eval_dir(entry.name),
            cache_dir=store.root / "cache", replace=True,
        )  # fmt: skip
        scores = {code: asdict(r) for code, r in results.models[0].languages.items()}
        store.write_result(step.key, step.eval_key, {**record, "languages": scores})
        if entry.method == validate.METHOD:
            card.write_card(store.merge_dir(entry.name), results)
        if entry.kind != "input" and not suite.keep_weights and entry.name not in pushed:
            store.drop_weights(entry.name)
    for step in steps:
        if step.entry.name in pushed:
            _publish(store, step, suite)
    records = [store.result(s.entry.name, s.key, s.eval_key) for s in steps]
    board = leaderboard.Columns(list(task_set.columns), mgsm=settings.is_mgsm)
    rows = leaderboard.rows([r for r in records if r], board.names)
    leaderboard.write(rows, board, store.root)
    print(leaderboard.markdown(rows, board))
    return rows
