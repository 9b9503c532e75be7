"""Scores: the data model, `results.json` (for programs) and `results.md` (for people).

A later leaderboard or model card reads a run back with `read_results`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, first_line
from ..files import write_atomic
from .identity import ModelIdentity
from .mgsm import HEADLINE_FILTER
from .settings import EvalSettings

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


#: The MGSM-era keys of results.json, suite records (results/NAME.json) and cache entries,
#: old -> new: files written before the names were task-neutral read the same.
_OLD_KEYS = {
    "languages": "columns",
    "exact_match": "score",
    "exact_match_stderr": "stderr",
    "other_exact_match": "other_score",
    "other_exact_match_stderr": "other_stderr",
}


def _renamed(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with the keys of `_OLD_KEYS` under their new names (old files read the same)."""
    return {_OLD_KEYS.get(key, key): value for key, value in data.items()}


@dataclass(frozen=True)
class ColumnResult:
    """One model on one column (an MGSM language or an lm-eval task): the headline score and
    the same metric under the task's other filter.

    `score` is the headline, whose metric and filter are `metric` and `filter`: `exact_match`
    with `flexible-extract` for MGSM (and any task that reports it), else the task's first
    metric and filter. A stderr is None where lm-eval gives none (a single sample); the other
    filter and its scores are None when the task has only one filter.
    """

    task: str
    n: int
    score: float
    stderr: float | None
    other_filter: str | None
    other_score: float | None
    other_stderr: float | None
    metric: str = "exact_match"
    filter: str = HEADLINE_FILTER
    dataset: str | None = None  # the task's dataset_path (MGSM: the Hub dataset)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ColumnResult:
        """The result written as `data` (with the current names or the old ones)."""
        return cls(**_renamed(data))


def columns_json(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-column results of a results.json model entry or a suite record, as JSON
    objects with the current names, also where it was written with the old ones."""
    return {column: _renamed(result) for column, result in _renamed(record)["columns"].items()}


@dataclass(frozen=True)
class ModelResult:
    """A model's scores; `columns` maps each column (language code or task name) to it."""

    identity: ModelIdentity
    columns: dict[str, ColumnResult]

    @property
    def average(self) -> float:
        """Unweighted mean of the headline score over the columns."""
        scores = [result.score for result in self.columns.values()]
        return sum(scores) / len(scores)


@dataclass(frozen=True)
class EvalResults:
    settings: EvalSettings
    versions: dict[str, str]
    models: list[ModelResult]

    @property
    def columns(self) -> tuple[str, ...]:
        """The languages (MGSM) or the tasks, in order."""
        if self.settings.is_mgsm or not self.models:
            return self.settings.languages
        return tuple(self.models[0].columns)

    def to_json(self) -> dict[str, Any]:
        mgsm = self.settings.is_mgsm
        return {
            "benchmark": "MGSM" if mgsm else "lm-eval tasks",
            "headline": f"exact_match ({HEADLINE_FILTER})" if mgsm else "per column: metric,filter",
            "settings": self.settings.to_json(),
            "versions": self.versions,
            "models": [
                {
                    "identity": asdict(model.identity),
                    "average": model.average,
                    "columns": {column: asdict(r) for column, r in model.columns.items()},
                }
                for model in self.models
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalResults:
        models = [
            ModelResult(
                ModelIdentity(**entry["identity"]),
                {column: ColumnResult(**r) for column, r in columns_json(entry).items()},
            )
            for entry in data["models"]
        ]
        return cls(EvalSettings.from_json(data["settings"]), data["versions"], models)


def write_results(results: EvalResults, output_dir: Path) -> tuple[Path, Path]:
    """Write `results.json` and `results.md` into `output_dir`; return their paths."""
    json_path, md_path = output_dir / RESULTS_JSON, output_dir / RESULTS_MD
    write_atomic(json_path, json.dumps(results.to_json(), indent=2, ensure_ascii=False) + "\n")
    write_atomic(md_path, render_markdown(results))
    return json_path, md_path


def read_results(path: str | Path) -> EvalResults:
    """Read `results.json` (or the output directory holding it); InputError if it is not a
    readable results file of `eval`."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_JSON
    try:
        return EvalResults.from_json(json.loads(path.read_text(encoding="utf-8")))
    except OSError as error:
        raise InputError(f"{path}: cannot read it ({error.strerror})") from None
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path}: not a results.json of `eval` ({first_line(error)})") from None


def differences(
    results: EvalResults, settings: EvalSettings, versions: dict[str, str]
) -> list[str]:
    """What keeps `results` and a run with `settings` and `versions` out of one table: the
    languages or tasks (and their folder), the settings that change scores, the library
    versions (`name old -> new`)."""

    def columns(s: EvalSettings) -> dict[str, Any]:
        return {
            "languages": list(s.languages),
            "tasks": list(s.tasks),
            "include_path": str(s.include_path or ""),
        }

    before = {**columns(results.settings), **results.settings.scoring_key()}
    after = {**columns(settings), **settings.scoring_key()}
    before["versions"], after["versions"] = results.versions, versions
    return [f"{key} {before[key]} -> {after[key]}" for key in after if before[key] != after[key]]


def combine(previous: EvalResults, new: EvalResults) -> EvalResults:
    """The models of `previous`, each replaced by its new result if `new` scored it again,
    then the models new to `new`; with `new`'s settings and versions.

    A model is the same when its fingerprint or its location matches (a folder whose files
    changed replaces its old entry).
    """

    def same(a: ModelResult, b: ModelResult) -> bool:
        return (
            a.identity.fingerprint == b.identity.fingerprint
            or a.identity.location == b.identity.location
        )

    models: list[ModelResult] = []
    for old in previous.models:
        replacement = next((m for m in new.models if same(old, m)), old)
        if all(replacement is not m for m in models):
            models.append(replacement)
    models += [m for m in new.models if all(m is not kept for kept in models)]
    return EvalResults(new.settings, new.versions, models)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _table(results: EvalResults, score: str) -> list[str]:
    columns = results.columns
    lines = [
        "| Model | " + " | ".join(columns) + " | Avg |",
        "|---|" + "---:|" * (len(columns) + 1),
    ]
    for model in results.models:
        values = [getattr(model.columns[column], score) for column in columns]
        known = [v for v in values if v is not None]
        average = sum(known) / len(known) if len(known) == len(values) else None
        cells = [_percent(v) for v in values] + [_percent(average)]
        lines.append(f"| {model.identity.model} | " + " | ".join(cells) + " |")
    return lines


def _headings(results: EvalResults) -> tuple[str, str, list[str]]:
    """The two tables' headings and, for tasks, a line naming each task's metric and filters."""
    first = results.models[0].columns if results.models else {}
    if results.settings.is_mgsm:
        other = next((r.other_filter for r in first.values()), None)
        return f"exact_match, `{HEADLINE_FILTER}` (headline, %)", f"exact_match, `{other}` (%)", []
    scored = "; ".join(
        f"{column}: {r.metric}, `{r.filter}`"
        + (f" (other: `{r.other_filter}`)" if r.other_filter else "")
        for column, r in first.items()
    )
    return "Headline (%)", "Other filter (%)", [f"Scores: {scored}.", ""]


def render_markdown(results: EvalResults) -> str:
    """Models × columns tables (scores in %), headline first, then the other filter."""
    s = results.settings
    n = sorted({r.n for m in results.models for r in m.columns.values()})
    version = results.versions.get("lm_eval", "?")
    if s.is_mgsm:
        what = f"`mgsm_{s.mode}_*` tasks, {s.num_fewshot}-shot, greedy"
        title, per, full = "MGSM", "language", "full MGSM"
    else:
        shots = "each task's own shots" if s.num_fewshot is None else f"{s.num_fewshot}-shot"
        title, what, per = "lm-eval", f"tasks {', '.join(s.tasks)}, {shots}", "task"
        full = "full task scores"
    headline, other, scored = _headings(results)
    lines = [
        f"# {title} results",
        "",
        f"lm-evaluation-harness {version} {what}, max {s.max_gen_toks} new tokens, "
        f"backend `{s.backend}`; {'/'.join(map(str, n))} problems per {per}"
        + (f" (`--limit {s.limit}`: not comparable to {full})." if s.limit else "."),
        "",
        *scored,
        f"## {headline}",
        "",
        *_table(results, "score"),
        "",
        f"## {other}",
        "",
        *_table(results, "other_score"),
        "",
    ]
    return "\n".join(lines)
