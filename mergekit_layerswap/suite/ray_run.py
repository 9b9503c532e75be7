"""A suite's tasks on a Ray cluster: every merge and every evaluation a Ray task.

The graph: each merge is a task; the evaluation of a merged model is a task that depends on
its merge; in-memory sweep variants are scored by a few actors, each loading the two experts
once and then building and scoring one variant after another. Independent tasks run in
parallel, as far as the cluster's CPUs and GPUs go (`executor.cpus_per_task`,
`gpus_per_merge`, `gpus_per_eval`).

Every task writes its own result into OUT_DIR (atomically, as the local executor does), so
OUT_DIR must be on storage every node sees: a probe task on each node checks that first. A
task whose worker dies is run again (`max_retries`; its half-written merge is a partial
folder that the next merge removes); Ctrl-C cancels the cluster's tasks and keeps every
finished result. While a task runs, `OUT_DIR/.layerswap-tasks/KIND-NAME.json` names its
node, pid and attempt; `OUT_DIR/ray-run.json` records the last run's tasks and times.
"""

from __future__ import annotations

import dataclasses
import math
import os
import secrets
import shutil
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from mergekit_layerswap.errors import InputError, RunError, first_line
from mergekit_layerswap.suite import steps
from mergekit_layerswap.suite.executor import ExecutorSettings
from mergekit_layerswap.suite.in_memory import InMemorySweep
from mergekit_layerswap.suite.steps import Context, Step
from mergekit_layerswap.suite.store import Store, read_json, write_json

TASKS_DIR = ".layerswap-tasks"
RUN_FILE = "ray-run.json"


def _tracked(context: Context, kind: str, name: str, body: Callable[[], None]) -> dict:
    """Run `body` as the task `kind name`; while it runs, its file in TASKS_DIR names this
    node, this pid and the attempt. Returns the task's report."""
    path = context.store.root / TASKS_DIR / f"{kind}-{name}.json"
    attempt = (read_json(path) or {}).get("attempt", 0) + 1
    report = {
        "kind": kind,
        "name": name,
        "node": ray.util.get_node_ip_address(),
        "pid": os.getpid(),
        "attempt": attempt,
    }
    write_json(path, report)
    start = time.perf_counter()
    body()
    report["seconds"] = time.perf_counter() - start
    path.unlink(missing_ok=True)
    return report


@ray.remote
def _merge(context: Context, step: Step) -> dict:
    return _tracked(context, "merge", step.entry.name, lambda: steps.merge_step(context, step))


@ray.remote
def _evaluate(context: Context, step: Step, merged: dict | None) -> dict:
    """Score a model from its folder (`merged`: its merge's report, when it ran now)."""
    return _tracked(context, "eval", step.entry.name, lambda: steps.eval_step(context, step))


@ray.remote
class _Sweeper:
    """Scores in-memory sweep variants, loading their host and donor once."""

    def __init__(self, context: Context):
        self.context = context
        self.sweep: InMemorySweep | None = None

    def score(self, step: Step) -> dict:
        def body() -> None:
            self.sweep = self.sweep or steps.new_sweep(self.context, step)
            steps.eval_step(self.context, step, self.sweep)

        return _tracked(self.context, "eval", step.entry.name, body)


@ray.remote(num_cpus=0)
def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _alive_nodes() -> list[dict]:
    return [node for node in ray.nodes() if node["Alive"]]


def probe_nodes(path: Path, token: str, timeout: float) -> list[str]:
    """One problem line per live node that does not read `token` from `path` in time."""
    refs = {
        _read.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(str(path)): node["NodeManagerAddress"]
        for node in _alive_nodes()
    }
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
    problems = [
        f"OUT_DIR: node {refs[ref]} cannot see {path.parent} (the output folder must be on "
        "storage every node of the Ray cluster sees, e.g. NFS, mounted at the same path)"
        for ref in ready
        if ray.get(ref) != token
    ]
    for ref in late:
        ray.cancel(ref, force=True)
        problems.append(f"OUT_DIR: node {refs[ref]} did not answer within {timeout:g} s")
    return problems


def check_shared_storage(root: Path, timeout: float) -> None:
    """InputError unless every node of the cluster sees the output folder `root`."""
    token = secrets.token_hex(16)
    path = root / f".layerswap-probe-{token}"
    path.write_text(token)
    try:
        problems = probe_nodes(path, token, timeout)
    finally:
        path.unlink(missing_ok=True)
    if problems:
        raise InputError(problems)


def connect(address: str | None) -> bool:
    """Join the cluster at `address` (None: start one on this machine) unless this process
    already joined one; returns whether it joined now (and should leave at the end)."""
    if ray.is_initialized():
        return False
    if address is None:  # a new cluster, even where `ray start` left one (or its address file)
        ray.init(address="local", include_dashboard=False)
        return True
    try:
        ray.init(address=address)
    except ConnectionError as error:
        raise InputError(f"executor.address: {str(error).splitlines()[0]}") from None
    return True


def _fits(resources: dict, shape: dict) -> int:
    """How many tasks of `shape` a node with `resources` runs at once (at most 10**6)."""
    counts = [
        math.floor(resources.get(name, 0) / need + 1e-9)
        for name, need in (("CPU", shape["num_cpus"]), ("GPU", shape["num_gpus"]))
        if need
    ]
    return min(counts, default=10**6)


def _shapes(settings: ExecutorSettings, nodes: list[dict], steps: list[Step]) -> dict:
    """The resources of a merge and of an evaluation; InputError if no node can run one."""
    has_gpu = any(node["Resources"].get("GPU", 0) for node in nodes)
    eval_gpus = settings.gpus_per_eval
    shapes = {
        "merge": {"num_cpus": settings.cpus_per_task, "num_gpus": settings.gpus_per_merge},
        "eval": {
            "num_cpus": settings.cpus_per_task,
            "num_gpus": (1 if has_gpu else 0) if eval_gpus is None else eval_gpus,
        },
    }
    needed = {
        "merge": any(s.merge_needed for s in steps),
        "eval": any(s.eval_needed for s in steps),
    }
    problems = [
        f"executor: no node of the Ray cluster has {shape['num_cpus']:g} CPU(s) and "
        f"{shape['num_gpus']:g} GPU(s) free for one {kind} task (cpus_per_task, "
        f"gpus_per_{kind}); the nodes have "
        + "; ".join(
            f"{n['Resources'].get('CPU', 0):g} CPU, {n['Resources'].get('GPU', 0):g} GPU"
            for n in nodes
        )
        for kind, shape in shapes.items()
        if needed[kind] and not any(_fits(n["Resources"], shape) for n in nodes)
    ]
    if problems:
        raise InputError(problems)
    return shapes


class _Graph:
    """The run's tasks on the cluster: submitted at once, collected as they finish."""

    def __init__(self, context: Context, steps: list[Step], settings: ExecutorSettings):
        nodes = _alive_nodes()
        shapes = _shapes(settings, nodes, steps)
        self.retries = retries = settings.max_retries
        shared = ray.put(context)
        self.total = sum(s.merge_needed for s in steps) + sum(s.eval_needed for s in steps)
        self.running: dict[ray.ObjectRef, Any] = {}  # -> the sweeper that runs it, or None
        self.labels: dict[ray.ObjectRef, str] = {}  # -> "merge NAME", "eval NAME"
        merged = {}
        for step in (s for s in steps if s.merge_needed):
            ref = _merge.options(**shapes["merge"], max_retries=retries).remote(shared, step)
            merged[step.entry.name] = ref
            self.running[ref], self.labels[ref] = None, f"merge {step.entry.name}"
        evaluate = _evaluate.options(**shapes["eval"], max_retries=retries)
        for step in (s for s in steps if s.eval_needed and not s.entry.in_memory):
            ref = evaluate.remote(shared, step, merged.get(step.entry.name))
            self.running[ref], self.labels[ref] = None, f"eval {step.entry.name}"
        self.variants = deque(s for s in steps if s.eval_needed and s.entry.in_memory)
        room = sum(_fits(node["Resources"], shapes["eval"]) for node in nodes)
        sweeper = _Sweeper.options(**shapes["eval"], max_restarts=retries, max_task_retries=retries)
        for _ in range(min(len(self.variants), max(room, 1))):
            # by value, not `shared`: Ray warns (on the terminal, at every run) that a
            # restartable actor whose constructor argument sits in the object store may
            # not restart; the context is small enough to travel inside the call
            self._next_variant(sweeper.remote(context))

    def _next_variant(self, actor: Any) -> None:
        """Give `actor` the next sweep variant, or end it when none is left."""
        if self.variants:
            step = self.variants.popleft()
            ref = actor.score.remote(step)
            self.running[ref], self.labels[ref] = actor, f"eval {step.entry.name}"
        else:
            ray.kill(actor)

    def collect(self) -> list[dict]:
        """Wait for every task; a progress line each. A failed task's error is raised."""
        reports = []
        while self.running:
            (ref,), _ = ray.wait(list(self.running), num_returns=1)
            actor = self.running.pop(ref)
            try:
                report = ray.get(ref)
            except ray.exceptions.RayTaskError as error:
                raise (error.cause or error) from error
            except ray.exceptions.RayError as error:  # its worker, actor or node died
                raise RunError(
                    f"{self.labels[ref]}: failed on the Ray cluster after {self.retries} "
                    f"retries (executor.max_retries): {first_line(error)}; finished results "
                    "are kept, rerun the suite to resume"
                ) from None
            reports.append(report)
            again = f"; attempt {report['attempt']}" if report["attempt"] > 1 else ""
            print(
                f"done {len(reports)}/{self.total} {report['kind']} {report['name']}: "
                f"{report['seconds']:.1f} s on {report['node']} (pid {report['pid']}{again})",
                flush=True,
            )
            if actor is not None:
                self._next_variant(actor)
        return reports

    def cancel(self) -> int:
        """Cancel every task still waiting or running; returns how many."""
        for ref, actor in self.running.items():
            if actor is not None:
                ray.kill(actor)  # an actor's task cannot be force-cancelled: end its actor
            else:
                ray.cancel(ref, force=True)
        return len(self.running)


def _summary(reports: list[dict], steps: list[Step], wall: float) -> dict:
    cached = sum(
        (s.entry.kind != "input" and not s.entry.in_memory and not s.merge_needed)
        + (not s.eval_needed)
        for s in steps
    )
    busy = sum(r["seconds"] for r in reports)
    return {
        "tasks": reports,
        "run": len(reports),
        "retried": sum(r["attempt"] > 1 for r in reports),
        "cached": cached,
        "nodes": len({r["node"] for r in reports}),
        "wall_seconds": wall,
        "task_seconds": busy,
    }


def run(context: Context, steps: list[Step], settings: ExecutorSettings) -> dict:
    """Run the planned steps on the cluster; returns the run's summary (also written to
    OUT_DIR/ray-run.json). Ctrl-C or a failed task cancels the rest and is raised."""
    # workers do not share our working folder (EvalSettings' folders are already absolute)
    context = dataclasses.replace(context, store=Store(context.store.root.absolute()))
    root = context.store.root
    joined = connect(settings.address)
    try:
        check_shared_storage(root, settings.shared_storage_timeout)
        shutil.rmtree(root / TASKS_DIR, ignore_errors=True)
        start = time.perf_counter()
        graph = _Graph(context, steps, settings)
        try:
            reports = graph.collect()
        except BaseException:
            cancelled = graph.cancel()
            print(f"stopped: {cancelled} task(s) cancelled; finished results stay in {root}")
            raise
        summary = _summary(reports, steps, time.perf_counter() - start)
    finally:
        if joined:
            ray.shutdown()
    write_json(root / RUN_FILE, summary)
    ratio = summary["task_seconds"] / summary["wall_seconds"] if summary["wall_seconds"] else 0
    print(
        f"ray: {summary['run']} task(s) run on {summary['nodes']} node(s), "
        f"{summary['retried']} retried, {summary['cached']} cached; "
        f"wall {summary['wall_seconds']:.1f} s for {summary['task_seconds']:.1f} s of task "
        f"time ({ratio:.2f}x in parallel)",
        flush=True,
    )
    return summary
