"""What an evaluation scores, as columns: MGSM's languages, or lm-eval tasks (groups expanded).

`resolve` checks, before any model loads, that every column can be scored: the MGSM data, or
that every named task or group is known and loads (its YAML parses, its data reads). lm-eval's
task index is built from the include folder and lm-eval's MGSM folder only; lm-eval's other
~14k task files are indexed (~6-15 s) only when a name, or a member of a named group, is not
found there. Loading a task whose YAML has a `!function` tag runs that folder's Python code:
`resolve` says so once, and with `load=False` (a dry run) loads no task at all.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, first_line
from .identity import fingerprint_dir
from .mgsm import HEADLINE_FILTER, check_data_dir, mgsm_configs
from .quiet import quiet
from .settings import EvalSettings

#: The headline metric when a task reports it with `HEADLINE_FILTER`.
HEADLINE_METRIC = "exact_match"


@dataclass(frozen=True)
class TaskSet:
    """The columns of an evaluation and the lm-eval runs that produce them.

    `units` maps what one lm-eval run is asked for (an MGSM language code; a task or group
    name as given) to the columns it yields (the language; the group's leaf tasks, in order).
    """

    units: dict[str, tuple[str, ...]]
    mgsm: bool
    include_digest: str | None = None  # sha256 of the include folder's files
    full_index: bool = False  # the names need lm-eval's whole task folder indexed

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(column for columns in self.units.values() for column in columns)

    def key(self, column: str) -> dict[str, Any]:
        """What a column's cached score depends on besides the model and the settings: for a
        task, the name it was run through and the content of the include folder."""
        if self.mgsm:
            return {}
        unit = next(unit for unit, columns in self.units.items() if column in columns)
        return {"unit": unit, "include_files": self.include_digest}


def mgsm_set(settings: EvalSettings) -> TaskSet:
    """The MGSM columns of `settings` (one per language), without checking the data."""
    return TaskSet({code: (code,) for code in settings.languages}, mgsm=True)


@functools.lru_cache(maxsize=4)
def _manager(include: Path | None, digest: str | None, full: bool) -> Any:
    """An lm-eval TaskManager over `include` plus lm-eval's MGSM folder (or, with `full`, all
    of lm-eval's tasks). `digest` only keys the memo: changed task files get a new index."""
    from lm_eval.tasks import TaskManager

    paths = ([] if full else [str(mgsm_configs())]) + ([str(include)] if include else [])
    return TaskManager(include_path=paths or None, include_defaults=full)


def task_manager(settings: EvalSettings, task_set: TaskSet) -> Any:
    """The TaskManager that `resolve` found the settings' tasks with."""
    return _manager(settings.include_path, task_set.include_digest, task_set.full_index)


def _load_units(manager: Any, names: tuple[str, ...], load: bool) -> dict[str, tuple[str, ...]]:
    """name -> its leaf tasks, loading each (YAML, data; without `load`, the name itself).
    KeyError when a name or a group member is not in the index; InputError, naming each, when
    a task fails to load."""
    units, problems = {}, []
    for name in names:
        if name not in manager.task_index:
            raise KeyError(name)
        if not load:
            units[name] = (name,)
            continue
        try:
            with quiet():
                units[name] = tuple(manager.load([name])["tasks"])
        except KeyError:
            raise
        except Exception as error:  # a bad YAML, unreadable data: lm-eval's own message
            problems.append(f"tasks: {name!r} cannot be loaded: {first_line(error)}")
    if problems:
        raise InputError(problems)
    return units


def _yaml_files(include: Path) -> list[Path]:
    """The task YAMLs lm-eval indexes in `include`."""
    from lm_eval.tasks._index import TaskIndex

    return list(TaskIndex._iter_yaml_files(include))


def _unparsed(include: Path) -> list[str]:
    """A line per task YAML in `include` that lm-eval cannot parse (its index skips such a
    file without a word, so its tasks look unknown)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    problems = []
    for path in _yaml_files(include):
        try:
            load_yaml(path, resolve_func=False)  # parses; runs no `!function` code
        except Exception as error:  # YAML syntax, not a mapping, a missing include
            problems.append(f"include_path: {path} does not parse: {first_line(error)}")
    return problems


def code_note(include: Path, load: bool) -> str | None:
    """The note that `include`'s task YAMLs name Python functions (`!function`), which
    loading their tasks runs; None when none does."""
    tagged = [p.name for p in _yaml_files(include) if b"!function" in p.read_bytes()]
    if not tagged:
        return None
    shown = ", ".join(tagged[:3]) + (", ..." if len(tagged) > 3 else "")
    when = "a run" if load else "a run (not this dry run)"
    return (
        f"note: {include}: {shown} name Python functions (!function): {when} executes that "
        "folder's Python code; use include paths you trust"
    )


def resolve(
    settings: EvalSettings, *, outputs: tuple[Path, ...] = (), load: bool = True
) -> TaskSet:
    """The settings' columns, every one checked scorable; InputError names each problem.

    `outputs`: the run's own output folders, left out of the include folder's digest. With
    `load=False` (a dry run) task names are only looked up, never loaded: no data is read
    and no `!function` code runs; a group is then one column.
    """
    if settings.is_mgsm:
        check_data_dir(settings.data_dir, settings.languages)
        return mgsm_set(settings)
    include = settings.include_path
    if include is not None and not include.is_dir():
        raise InputError(
            f"include path {include} is not a folder: give a folder of lm-eval task YAMLs"
        )
    digest = None
    if include is not None:
        skip = tuple(folder.resolve() for folder in outputs)
        digest = fingerprint_dir(include, recursive=True, skip=skip)
        if note := code_note(include, load):
            print(note, flush=True)
    full = False
    try:
        units = _load_units(_manager(include, digest, False), settings.tasks, load)
    except KeyError:
        full = True
        manager = _manager(include, digest, True)
        where = f"{include} nor " if include else ""
        unknown = [
            f"tasks: unknown lm-eval task or group {name!r} (not in {where}lm-eval's tasks); "
            "check the spelling" + ("" if include else " or pass the folder of its YAML")
            for name in settings.tasks
            if name not in manager.task_index
        ]
        if unknown:
            raise InputError(unknown + (_unparsed(include) if include else [])) from None
        try:
            units = _load_units(manager, settings.tasks, load)
        except KeyError as error:
            raise InputError(
                f"tasks: a group names an unknown task or group ({first_line(error)})"
            ) from None
    owner: dict[str, str] = {}
    problems = []
    for unit, columns in units.items():
        for column in columns:
            if column in owner:
                problems.append(
                    f"tasks: {column!r} is in both {owner[column]!r} and {unit!r}; name it once"
                )
            owner.setdefault(column, unit)
    if problems:
        raise InputError(problems)
    return TaskSet(units, mgsm=False, include_digest=digest, full_index=full)


def headline(config: dict[str, Any], scores: dict[str, Any]) -> tuple[str, str, str | None]:
    """(metric, filter, other filter) of one task's reported scores: `exact_match` with the
    `flexible-extract` filter when the task has it, else its first metric with its first
    filter; the other filter is the next one the same metric is reported with (or None)."""
    reported = [tuple(key.split(",", 1)) for key in scores if "," in key and "_stderr," not in key]
    metrics = [str(m["metric"]) for m in config.get("metric_list") or []]
    filters = [f.get("name", "none") for f in config.get("filter_list") or []] or ["none"]
    preferred = (HEADLINE_METRIC, HEADLINE_FILTER) in reported
    if preferred:
        metric = HEADLINE_METRIC
    else:
        metric = next((m for m in metrics if any(r[0] == m for r in reported)), reported[0][0])
    with_metric = [f for f in filters if (metric, f) in reported]
    with_metric += [f for m, f in reported if m == metric and f not in with_metric]
    chosen = HEADLINE_FILTER if preferred else with_metric[0]
    other = next((f for f in with_metric if f != chosen), None)
    return metric, chosen, other
