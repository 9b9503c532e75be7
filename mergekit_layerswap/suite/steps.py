"""A suite's tasks: one merge per merged entry, one evaluation per entry (after its merge).

The bodies are the same whichever executor runs them: `run_local` runs them here one after
another (every merge, then every evaluation); `suite.ray_run` runs each as a Ray task. Each
task writes what it finished into the store itself (atomically), so a run killed at any
moment, by either executor, loses nothing finished.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mergekit_layerswap import card, merge, validate
from mergekit_layerswap.evaluate.columns import TaskSet
from mergekit_layerswap.evaluate.settings import EvalSettings
from mergekit_layerswap.suite.in_memory import InMemorySweep
from mergekit_layerswap.suite.schema import Entry
from mergekit_layerswap.suite.store import Store


@dataclass(frozen=True)
class Step:
    """One entry's plan: its keys, and whether its merge and eval must run."""

    entry: Entry
    key: str
    eval_key: str
    merge_needed: bool
    eval_needed: bool


@dataclass(frozen=True)
class Context:
    """What every task of one run needs (plain data: it travels to Ray workers)."""

    store: Store
    settings: EvalSettings
    task_set: TaskSet
    cuda: bool
    keep_weights: bool
    pushed: frozenset[str]  # merges to publish: their weights stay until uploaded


def _model_path(entry: Entry, store: Store) -> str:
    return entry.model if entry.kind == "input" else str(store.merge_dir(entry.name))


def merge_step(context: Context, step: Step) -> None:
    """Merge one entry into `merges/NAME` (atomically: see `merge.run`)."""
    from mergekit.options import MergeOptions

    store = context.store
    store.clear_merge(step.entry.name)
    merge.run(
        step.entry.config,
        store.merge_dir(step.entry.name),
        MergeOptions(cuda=context.cuda, random_seed=step.entry.random_seed),
        metadata={"key": step.key, "name": step.entry.name, "seed": step.entry.random_seed},
    )


def new_sweep(context: Context, step: Step) -> InMemorySweep:
    """The loaded host and donor that in-memory sweep variants like `step`'s are built from."""
    host, donor = (m["model"] for m in step.entry.config["models"])
    return InMemorySweep(host, donor, context.settings, context.task_set)


def eval_step(context: Context, step: Step, sweep: InMemorySweep | None = None) -> None:
    """Score one entry and store its result: an in-memory sweep variant built by `sweep`,
    anything else from its folder (a layer_swap merge then gets a card with its scores)."""
    from mergekit_layerswap.evaluate.run import evaluate_models

    entry, store = step.entry, context.store
    record = {
        "name": entry.name,
        "kind": entry.kind,
        "method": entry.method,
        "config": entry.config,
    }
    if entry.in_memory:
        runs = (sweep or new_sweep(context, step)).score(entry.config)
        scores = {code: asdict(run.result) for code, run in runs.items()}
        store.write_result(step.key, step.eval_key, {**record, "columns": scores})
        return
    results = evaluate_models(
        [_model_path(entry, store)],
        context.settings,
        store.eval_dir(entry.name),
        cache_dir=store.cache_dir(),
        replace=True,
        task_set=context.task_set,
    )
    scores = {code: asdict(r) for code, r in results.models[0].columns.items()}
    store.write_result(step.key, step.eval_key, {**record, "columns": scores})
    if entry.method == validate.METHOD:
        card.write_card(store.merge_dir(entry.name), results)
    if entry.kind != "input" and not context.keep_weights and entry.name not in context.pushed:
        store.drop_weights(entry.name)


def run_local(context: Context, steps: list[Step]) -> None:
    """Every planned merge, then every planned evaluation, here, in order (the experts of
    in-memory sweep variants are loaded once)."""
    merges = [s for s in steps if s.merge_needed]
    evals = [s for s in steps if s.eval_needed]
    for index, step in enumerate(merges, 1):
        print(f"merge {index}/{len(merges)} {step.entry.name}", flush=True)
        merge_step(context, step)
    sweep: InMemorySweep | None = None
    for index, step in enumerate(evals, 1):
        built = " (built in memory)" if step.entry.in_memory else ""
        print(f"eval {index}/{len(evals)} {step.entry.name}{built}", flush=True)
        if step.entry.in_memory:
            sweep = sweep or new_sweep(context, step)
        eval_step(context, step, sweep)
