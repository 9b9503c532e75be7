"""The suite file: experts, merges, a layer_swap sweep and evaluation settings, validated.

`load_suite(path, overrides)` returns a `Suite` whose `entries` are the fully resolved jobs
(aliases replaced by paths or Hub ids). Every problem is reported at once, naming the key and the
fix, before anything is merged or evaluated.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from mergekit_layerswap import adapters, checkpoint, overrides, swap, validate
from mergekit_layerswap.errors import InputError, did_you_mean
from mergekit_layerswap.evaluate.settings import EvalSettings
from mergekit_layerswap.merge import config_problems
from mergekit_layerswap.suite import include, methods
from mergekit_layerswap.suite.executor import ExecutorSettings

#: mergekit methods that draw random numbers: the suite fixes and records their seed.
RANDOMIZED = frozenset({"dare_ties", "dare_linear", "della", "della_linear"})
#: Names that become file and folder names (merges, sweep variants, aliases) and Hub repo
#: names (pushed merges): letters, digits, `.`, `_`, `-`; starting and ending with a letter or
#: digit; no `..`; at most 96 characters (the Hub's limit).
SAFE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")


def name_problem(name: object, where: str) -> str | None:
    """Why `name` cannot name a file of the suite's output, or None if it can."""
    if isinstance(name, str) and SAFE_NAME.fullmatch(name) and ".." not in name:
        return None
    return (
        f"{where}: {name!r} cannot be used as a name (it becomes a folder under OUT_DIR); "
        "use letters, digits, '.', '_' and '-', starting and ending with a letter or digit"
    )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: Every swap parameter (declared in `swap`), as the list of values a sweep tries.
_GRID = swap.donor_parameters() | swap.shared_parameters()

Sweep = create_model(
    "Sweep",
    __base__=_Strict,
    __doc__="A grid of layer_swap variants of one host and one donor: each swap parameter "
    "is a list of values (default: its default alone); every combination is a variant.",
    base_model=(str, ...),
    donor=(str, ...),
    dtype=(str | None, None),
    # hf backend: build the variants from the loaded experts, never written
    in_memory=(bool, True),
    **{
        name: (list[info.rebuild_annotation()], Field(default_factory=lambda d=info.default: [d]))
        for name, info in _GRID.items()
    },
)


class Push(_Strict):
    """Publish chosen merges to the Hub once they are scored (as NAMESPACE/NAME)."""

    namespace: str
    merges: list[str]
    private: bool = True


class SuiteFile(_Strict):
    models: dict[str, str]
    evaluate_inputs: list[str] = Field(default_factory=list)
    merges: list[dict[str, Any]] = Field(default_factory=list)
    #: merges to compare against, usually included (`include.BASELINES`); after `merges`
    baselines: list[dict[str, Any]] = Field(default_factory=list)
    #: every merge's, baseline's and the sweep's dtype where they name none
    dtype: str | None = None
    sweep: Sweep | None = None
    #: `EvalSettings`' fields (see `mergekit-layerswap eval`); MGSM languages default to sw, en
    evaluation: dict[str, Any] = Field(default_factory=dict)
    keep_weights: bool = True
    seed: int = 0
    push: Push | None = None
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)

    @field_validator("models")
    @classmethod
    def _aliases(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("define at least one alias: `models: {math: PATH_OR_HUB_ID}`")
        return value


@dataclass(frozen=True)
class Entry:
    """One model of the leaderboard: an input to score, or a merge to build and score."""

    name: str
    kind: str  # "input", "merge" or "sweep"
    method: str
    model: str | None = None  # inputs: the path or Hub id
    config: dict | None = None  # merges: the resolved mergekit config
    random_seed: int | None = None
    in_memory: bool = False  # sweep variants scored without a written checkpoint


@dataclass(frozen=True)
class Suite:
    entries: tuple[Entry, ...]
    evaluation: EvalSettings
    keep_weights: bool
    push: Push | None = None
    #: sweep variants dropped because an earlier entry has the same configuration: {dropped: kept}
    duplicates: dict[str, str] = dataclasses.field(default_factory=dict)
    executor: ExecutorSettings = dataclasses.field(default_factory=ExecutorSettings)

    def select(self, names: list[str] | None) -> tuple[Entry, ...]:
        """The entries named by `--only` (all when None); unknown names are a InputError."""
        if not names:
            return self.entries
        known = {e.name for e in self.entries}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InputError(
                [
                    f"--only: no model named {n!r}; known: {', '.join(sorted(known))}"
                    for n in unknown
                ]
            )
        return tuple(e for e in self.entries if e.name in names)

    def settings(self, limit: int | None = None, data_dir: str | None = None) -> EvalSettings:
        """The evaluation settings, with the command line's `--limit`/`--data-dir` applied
        (`--data-dir` is MGSM's: it does not apply to a suite that scores tasks)."""
        changes: dict[str, Any] = {} if limit is None else {"limit": limit}
        if data_dir is not None and self.evaluation.is_mgsm:
            changes["data_dir"] = Path(data_dir)
        return self.evaluation.replace(**changes) if changes else self.evaluation


@dataclass
class _Aliases:
    """The suite's model aliases, resolved against the suite file's folder."""

    targets: dict[str, str]
    base_dir: Path
    problems: list[str]

    def locate(self, target: str) -> str:
        """A reference as mergekit reads it: every local part of `model+lora` absolute (a
        relative one is taken from the suite file's folder); Hub ids unchanged."""
        parts = []
        for part in target.split("+"):
            local = self.base_dir / Path(part).expanduser()  # an absolute part stays absolute
            is_local = checkpoint.looks_local(part) or local.exists()
            parts.append(str(local.resolve()) if is_local else part)
        return "+".join(parts)

    def resolve(self, value: Any, where: str) -> Any:
        """Replace an alias (optionally `alias+lora`) by the reference it stands for."""
        if not isinstance(value, str):
            self.problems.append(f"{where}: expected a model alias, got {value!r}")
            return value
        name, plus, lora = value.partition("+")
        if name not in self.targets:
            known = ", ".join(self.targets)
            hint = did_you_mean(name, self.targets, f"define it under models: ({known})")
            self.problems.append(f"{where}: {name!r} is not a model alias; {hint}")
            return value
        return self.locate(self.targets[name] + (plus + lora if plus else ""))


def _merge_entry(where: str, raw: Any, aliases: _Aliases, seed: int) -> Entry | None:
    problems = aliases.problems
    if not isinstance(raw, dict) or "name" not in raw:
        problems.append(f"{where}.name: missing; give every merge a unique name")
        return None
    name = raw["name"]
    if (problem := name_problem(name, f"{where}.name")) is not None:
        problems.append(problem)
        return None
    where = f"{where} ({name})"
    config = copy.deepcopy({k: v for k, v in raw.items() if k != "name"})
    problems += validate.unknown_keys(config, f"{where}.")
    if "merge_method" not in config:
        problems.append(f"{where}.merge_method: missing (e.g. layer_swap, linear, ties)")
    if config.get("base_model") is not None:
        config["base_model"] = aliases.resolve(config["base_model"], f"{where}.base_model")
    models = config.get("models")
    if isinstance(models, list):
        for i, model in enumerate(models):
            if isinstance(model, dict) and "model" in model:
                model["model"] = aliases.resolve(model["model"], f"{where}.models[{i}].model")
            else:
                problems.append(
                    f"{where}.models[{i}]: write `- model: ALIAS` (with optional parameters)"
                )
    elif "slices" not in config:
        problems.append(f"{where}.models: missing; list the models to merge by alias")
    method = config.get("merge_method", "")
    return Entry(
        name, "merge", method, config=config, random_seed=seed if method in RANDOMIZED else None
    )


def _sweep_entries(sweep: Sweep, aliases: _Aliases, in_memory: bool) -> list[Entry]:
    host = aliases.resolve(sweep.base_model, "sweep.base_model")
    donor = aliases.resolve(sweep.donor, "sweep.donor")
    # an adapter must be merged into its model first: only mergekit does that (on disk)
    in_memory = in_memory and "+" not in f"{host}{donor}"
    entries = []
    for values in itertools.product(*(getattr(sweep, name) for name in _GRID)):
        chosen = dict(zip(_GRID, values, strict=True))
        claim = swap.Claim(donor, **{k: chosen[k] for k in swap.donor_parameters()})
        variant = swap.SwapConfig(
            host, (claim,), **{k: chosen[k] for k in swap.shared_parameters()}
        )
        name = swap.variant_name(claim, variant)
        if (problem := name_problem(name, f"sweep (layers: {claim.layers!r})")) is not None:
            aliases.problems.append(problem)
            continue
        config = variant.to_mergekit()
        if sweep.dtype:
            config["dtype"] = sweep.dtype
        entries.append(Entry(name, "sweep", validate.METHOD, config=config, in_memory=in_memory))
    return entries


def _merge_problems(config: dict) -> list[str]:
    """layer_swap: `merge.config_problems` (our full check, then mergekit's own config
    model); other methods: mergekit's config model and the method's spec (`methods`), and
    their LoRA adapters (`adapters`)."""
    if config.get("merge_method") == validate.METHOD:
        return config_problems(config)
    return methods.problems(config) + adapters.problems(config)


def _pydantic_problems(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown key; remove it or check its spelling")
        else:
            problems.append(f"{where}: {item['msg']}")
    return problems


def _canonical(config: dict) -> str:
    """What decides a merge's weights, written one way (a sweep variant equal to a merge of
    the suite has the same canonical form, however its YAML spells the parameters)."""
    if config.get("merge_method") == validate.METHOD:
        rest = {k: v for k, v in config.items() if k not in ("base_model", "models", "parameters")}
        config = {"swap": dataclasses.asdict(swap.SwapConfig.from_mergekit(config)), **rest}
    return json.dumps(config, sort_keys=True, default=str)


def _without_duplicates(entries: list[Entry]) -> tuple[list[Entry], dict[str, str]]:
    """Drop sweep variants whose configuration an earlier entry already has."""
    kept: list[Entry] = []
    first: dict[str, str] = {}
    duplicates: dict[str, str] = {}
    for entry in entries:
        form = _canonical(entry.config) if entry.config is not None else None
        if form is not None and form in first and entry.kind == "sweep":
            duplicates[entry.name] = first[form]
            continue
        if form is not None:
            first.setdefault(form, entry.name)
        kept.append(entry)
    return kept, duplicates


def _name_problems(entries: list[Entry], aliases: dict[str, str]) -> list[str]:
    problems = [p for alias in aliases if (p := name_problem(alias, f"models.{alias}"))]
    seen: set[str] = set()
    for entry in entries:
        if entry.name.lower() in seen:
            problems.append(
                f"{entry.name}: name used twice (names are folder names, so case "
                "does not count); every merge and input needs its own"
            )
        seen.add(entry.name.lower())
    return problems


def _push_problems(push: Push | None, merged: set[str]) -> list[str]:
    if push is None:
        return []
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    problems = []
    for name in push.merges:
        if name not in merged:
            problems.append(f"push.merges: {name!r} is not a merge of this suite")
            continue
        try:
            validate_repo_id(f"{push.namespace}/{name}")
        except HFValidationError as error:
            problems.append(f"push.namespace: {error}".splitlines()[0])
    return problems


def _evaluation(raw: dict[str, Any], base: Path, problems: list[str]) -> EvalSettings | None:
    """The suite's evaluation settings: MGSM on sw and en unless it names languages or tasks;
    `data_dir` and `include_path` relative to the suite file's folder."""
    values = dict(raw)
    if not values.get("tasks"):
        values.setdefault("languages", ["sw", "en"])
    for name in ("data_dir", "include_path"):
        if isinstance(values.get(name), str):
            values[name] = base / Path(values[name]).expanduser()
    try:
        return EvalSettings.checked("evaluation", **values)
    except InputError as error:
        problems += error.problems
        return None


def parse_suite(raw: Any, base_dir: str | Path | None = None, found: Sequence[str] = ()) -> Suite:
    """Validate a loaded suite file; InputError lists every problem, `found` (those already
    found in reading it) first.

    Relative model paths, `include`s, `evaluation.data_dir` and `evaluation.include_path` are
    taken from `base_dir` (the suite file's folder; default: the current folder).
    """
    if not isinstance(raw, dict):
        raise InputError(["the suite file must be a mapping with models, merges, evaluation"])
    base = Path(base_dir or ".").resolve()
    problems = list(found)
    try:
        spec = SuiteFile.model_validate(include.expand(raw, base, problems))
    except ValidationError as error:
        raise InputError(problems + _pydantic_problems(error)) from None
    aliases = _Aliases({}, base, problems)
    aliases.targets = {alias: aliases.locate(target) for alias, target in spec.models.items()}
    entries = [
        Entry(alias, "input", "-", model=aliases.resolve(alias, f"evaluate_inputs[{i}]"))
        for i, alias in enumerate(spec.evaluate_inputs)
    ]
    numbered = [(f"merges[{i}]", merge) for i, merge in enumerate(spec.merges)]
    numbered += [(f"baselines[{i}]", merge) for i, merge in enumerate(spec.baselines)]
    for where, merge in numbered:
        if spec.dtype and isinstance(merge, dict):
            merge.setdefault("dtype", spec.dtype)
        before = len(problems)
        entry = _merge_entry(where, merge, aliases, spec.seed)
        if entry is not None and len(problems) == before:  # resolved: check the method too
            problems += [f"{entry.name}: {p}" for p in _merge_problems(entry.config)]
        entries += [entry] if entry is not None else []
    if spec.sweep:
        spec.sweep.dtype = spec.sweep.dtype or spec.dtype
        published = set(spec.push.merges) if spec.push else set()
        in_memory = spec.sweep.in_memory and spec.evaluation.get("backend", "hf") == "hf"
        before = len(problems)
        variants = [
            dataclasses.replace(e, in_memory=e.in_memory and e.name not in published)
            for e in _sweep_entries(spec.sweep, aliases, in_memory)
        ]
        if len(problems) == before:
            for entry in variants:
                problems += [f"{entry.name}: {p}" for p in _merge_problems(entry.config)]
        entries += variants
    problems += _name_problems(entries, spec.models)
    evaluation = _evaluation(spec.evaluation, base, problems)
    if not entries:
        problems.append("nothing to do: add evaluate_inputs, merges or a sweep")
    problems += _push_problems(spec.push, {e.name for e in entries if e.kind != "input"})
    if problems:
        raise InputError(problems)
    entries, duplicates = _without_duplicates(entries)
    return Suite(
        tuple(entries), evaluation, spec.keep_weights, spec.push, duplicates, spec.executor
    )


def load_suite(path: str | Path, changes: Sequence[str] = ()) -> Suite:
    """Read a suite YAML file with what it includes (`include`), apply `KEY=VALUE`
    overrides (`changes`) and validate it (relative paths in it are from its folder)."""
    file = Path(path).resolve()
    problems: list[str] = []
    raw = include.expand(validate.load(path), file.parent, problems, (file,))
    try:
        raw = overrides.apply(raw, changes)
    except InputError as error:
        raise InputError(problems + error.problems) from None
    return parse_suite(raw, file.parent, problems)
