"""MGSM results: the data model, `results.json` (for programs) and `results.md` (for people).

A later leaderboard or model card reads a run back with `read_results`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .identity import ModelIdentity
from .settings import EvalSettings
from .tasks import HEADLINE_FILTER, OTHER_FILTER

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


@dataclass(frozen=True)
class LanguageResult:
    """One model on one language: the headline (flexible-extract) and the task's other filter.

    A stderr is None where lm-eval gives none (a single sample).
    """

    task: str
    n: int
    exact_match: float
    exact_match_stderr: float | None
    other_filter: str
    other_exact_match: float
    other_exact_match_stderr: float | None


@dataclass(frozen=True)
class ModelResult:
    identity: ModelIdentity
    languages: dict[str, LanguageResult]

    @property
    def average(self) -> float:
        """Unweighted mean of the headline exact_match over the languages."""
        scores = [result.exact_match for result in self.languages.values()]
        return sum(scores) / len(scores)


@dataclass(frozen=True)
class EvalResults:
    settings: EvalSettings
    versions: dict[str, str]
    models: list[ModelResult]

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": "MGSM",
            "headline": f"exact_match ({HEADLINE_FILTER})",
            "settings": self.settings.to_json(),
            "versions": self.versions,
            "models": [
                {
                    "identity": asdict(model.identity),
                    "average": model.average,
                    "languages": {code: asdict(r) for code, r in model.languages.items()},
                }
                for model in self.models
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalResults:
        models = [
            ModelResult(
                ModelIdentity(**entry["identity"]),
                {code: LanguageResult(**r) for code, r in entry["languages"].items()},
            )
            for entry in data["models"]
        ]
        return cls(EvalSettings.from_json(data["settings"]), data["versions"], models)


def write_results(results: EvalResults, output_dir: Path) -> tuple[Path, Path]:
    """Write `results.json` and `results.md` into `output_dir`; return their paths."""
    json_path, md_path = output_dir / RESULTS_JSON, output_dir / RESULTS_MD
    json_path.write_text(json.dumps(results.to_json(), indent=2, ensure_ascii=False) + "\n")
    md_path.write_text(render_markdown(results))
    return json_path, md_path


def read_results(path: str | Path) -> EvalResults:
    """Read `results.json` (or the output directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_JSON
    return EvalResults.from_json(json.loads(path.read_text()))


def differences(
    results: EvalResults, settings: EvalSettings, versions: dict[str, str]
) -> list[str]:
    """What keeps `results` and a run with `settings` and `versions` out of one table: the
    languages, the settings that change scores, the library versions (`name old -> new`)."""
    before = {"languages": list(results.settings.languages), **results.settings.scoring_key()}
    after = {"languages": list(settings.languages), **settings.scoring_key()}
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


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def _table(results: EvalResults, score: str) -> list[str]:
    codes = results.settings.languages
    lines = [
        "| Model | " + " | ".join(codes) + " | Avg |",
        "|---|" + "---:|" * (len(codes) + 1),
    ]
    for model in results.models:
        values = [getattr(model.languages[code], score) for code in codes]
        cells = [_percent(v) for v in values] + [_percent(sum(values) / len(values))]
        lines.append(f"| {model.identity.model} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(results: EvalResults) -> str:
    """Models × languages tables (accuracy in %), headline first."""
    s = results.settings
    n = sorted({r.n for m in results.models for r in m.languages.values()})
    other = OTHER_FILTER[s.mode]
    lines = [
        "# MGSM results",
        "",
        f"lm-evaluation-harness {results.versions.get('lm_eval', '?')} `mgsm_{s.mode}_*` tasks, "
        f"{s.num_fewshot}-shot, greedy, max {s.max_gen_toks} new tokens, backend `{s.backend}`; "
        f"{'/'.join(map(str, n))} problems per language"
        + (f" (`--limit {s.limit}`: not comparable to full MGSM)." if s.limit else "."),
        "",
        f"## exact_match, `{HEADLINE_FILTER}` (headline, %)",
        "",
        *_table(results, "exact_match"),
        "",
        f"## exact_match, `{other}` (%)",
        "",
        *_table(results, "other_exact_match"),
        "",
    ]
    return "\n".join(lines)
