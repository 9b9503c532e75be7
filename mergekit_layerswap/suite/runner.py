"""Run a suite: build every merge, score every model (MGSM or lm-eval tasks), write the
leaderboard.

Each entry is two steps, merge (merges and sweep variants only) and eval; each step is
skipped when its key says it already finished (see `store`). `--dry-run` prints the plan.
The steps to run are tasks (`suite.steps`), run here (`executor: local`) or on a Ray cluster
(`executor: ray`, `suite.ray_run`); either way the leaderboard is written here, last.
"""

from __future__ import annotations

from pathlib import Path

import mergekit_layerswap
from mergekit_layerswap import checkpoint, hub
from mergekit_layerswap.errors import InputError
from mergekit_layerswap.evaluate import columns
from mergekit_layerswap.evaluate.columns import TaskSet
from mergekit_layerswap.evaluate.identity import fingerprint_dir, resolve_model
from mergekit_layerswap.evaluate.run import check_writable
from mergekit_layerswap.evaluate.settings import EvalSettings
from mergekit_layerswap.suite import leaderboard
from mergekit_layerswap.suite.executor import choose
from mergekit_layerswap.suite.schema import Entry, Suite
from mergekit_layerswap.suite.steps import Context, Step, run_local
from mergekit_layerswap.suite.store import Store, digest, read_json, write_json


def _fingerprint(reference: str) -> str:
    """A model's fingerprint, and its LoRA adapter's (`model+adapter`) when it has one."""
    model, plus, adapter = reference.partition("+")
    found = resolve_model(model).fingerprint
    if not plus:
        return found
    local = checkpoint.looks_local(adapter)
    return f"{found}+{fingerprint_dir(Path(adapter).expanduser()) if local else adapter}"


def _inside_model(reference: str, out: Path) -> list[str]:
    """A problem line if OUT_DIR is the folder of the model or adapter `reference` names: the
    run would write into it and change its fingerprint (and so redo everything) each time."""
    return [
        f"OUT_DIR {out} is the folder of the input model {part}; choose a folder of its own"
        for part in reference.split("+")
        if checkpoint.looks_local(part) and Path(part).expanduser().resolve() == out.resolve()
    ]


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
    entries: tuple[Entry, ...], settings: EvalSettings, out: Path, *, dry_run: bool = False
) -> tuple[dict[str, str], TaskSet]:
    """Check everything a run needs before its first merge, every problem at once (a
    InputError): the MGSM data folder or the tasks (a dry run loads none: a task's
    `!function` would run code), every input model, the output folder. Returns the input
    models' fingerprints and the evaluation's columns."""
    problems, fingerprints, task_set = [], {}, None
    try:
        task_set = columns.resolve(settings, outputs=(out,), load=not dry_run)
    except InputError as error:
        where = "evaluation.data_dir" if settings.is_mgsm else "evaluation"
        problems += [f"{where}: {problem}" for problem in error.problems]
    for reference in sorted({ref for entry in entries for ref in _references(entry)}):
        try:
            fingerprints[reference] = _fingerprint(reference)
        except (InputError, OSError) as error:
            problems.append(f"models: {error}")
        problems += _inside_model(reference, out)
    try:
        check_writable(out, "output")
    except InputError as error:
        problems.append(str(error))
    if problems or task_set is None:
        raise InputError(problems)
    return fingerprints, task_set


def pending_steps(
    store: Store,
    settings: EvalSettings,
    task_set: TaskSet,
    entries: tuple[Entry, ...],
    fingerprints: dict[str, str],
    force: bool,
) -> list[Step]:
    """Decide, from keys alone, which merges and evaluations must run."""
    versions = mergekit_layerswap.versions("mergekit", "lm_eval", "transformers", "torch")
    columns = {"languages": settings.languages, "tasks": settings.tasks}
    score_settings = {**settings.scoring_key(), **columns}
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
    """The plan in words, one line per entry, in aligned columns (for --dry-run)."""
    rows = []
    for step in steps:
        entry = step.entry
        if entry.kind == "input":
            merge_state = "-"
        elif entry.in_memory:
            merge_state = "memory"
        else:
            merge_state = "to run" if step.merge_needed else "cached"
        eval_state = "to run" if step.eval_needed else "cached"
        rows.append(
            (entry.name, entry.kind, entry.method, f"merge: {merge_state}", f"eval: {eval_state}")
        )
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


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
    executor: str | None = None,
    address: str | None = None,
) -> list[dict]:
    """Merge, score and rank; returns the leaderboard rows (empty on a dry run).

    `executor` (local or ray) and `address` (the Ray cluster) override the suite file's
    `executor:` section. Every input is checked before the first merge; the output folder is
    locked for the run.
    """
    where = choose(suite.executor, executor, address)
    if where.kind == "ray" and cuda and not where.gpus_per_merge:
        raise InputError("--cuda: with the ray executor, set executor.gpus_per_merge (e.g. 1)")
    store = Store(Path(out_dir))
    settings = suite.settings(limit=limit, data_dir=data_dir)
    entries = suite.select(only)
    fingerprints, task_set = preflight(entries, settings, store.root, dry_run=dry_run)
    for dropped, kept in suite.duplicates.items():
        print(f"{dropped}: the same configuration as {kept}, scored once", flush=True)
    if dry_run:
        print(
            "\n".join(
                describe(pending_steps(store, settings, task_set, entries, fingerprints, force))
            )
        )
        return []
    with store.lock():
        store.cache_dir()  # RunError, before any work, if it is a link out of OUT_DIR
        steps = pending_steps(store, settings, task_set, entries, fingerprints, force)
        pushed = frozenset(suite.push.merges if suite.push else ())
        context = Context(store, settings, task_set, cuda, suite.keep_weights, pushed)
        if where.kind == "ray":
            from mergekit_layerswap.suite import ray_run

            ray_run.run(context, steps, where)
        else:
            run_local(context, steps)
        return _finish(suite, context, steps)


def _finish(suite: Suite, context: Context, steps: list[Step]) -> list[dict]:
    """Publish and rank the planned steps once they ran (the output folder is locked)."""
    store, settings = context.store, context.settings
    for step in steps:
        if step.entry.name in context.pushed:
            _publish(store, step, suite)
    records = [store.result(s.entry.name, s.key, s.eval_key) for s in steps]
    board = leaderboard.Columns(list(context.task_set.columns), mgsm=settings.is_mgsm)
    rows = leaderboard.rows([r for r in records if r], board.names)
    leaderboard.write(rows, board, store.root)
    print(leaderboard.markdown(rows, board))
    return rows
