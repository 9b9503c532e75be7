"""The suite file: experts, merges, a layer_swap sweep and evaluation settings, validated.

`load_suite(path)` returns a `Suite` whose `entries()` are the fully resolved jobs (aliases
replaced by paths or Hub ids). Every problem is reported at once, naming the key and the
fix, before anything is merged or evaluated.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError, field_validator

from mergekit_layerswap import checkpoint, validate
from mergekit_layerswap.evaluate.settings import EvalSettings
from mergekit_layerswap.evaluate.tasks import EvalInputError

#: mergekit methods that draw random numbers: the suite fixes and records their seed.
RANDOMIZED = frozenset({"dare_ties", "dare_linear", "della", "della_linear"})


class SuiteError(ValueError):
    """An invalid suite file; str() lists every problem, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sweep(_Strict):
    """A grid of layer_swap variants of one host and one donor."""

    base_model: str
    donor: str
    bottom: list[NonNegativeInt] = Field(default_factory=lambda: [0])
    top: list[NonNegativeInt] = Field(default_factory=lambda: [0])
    transition: list[NonNegativeInt] = Field(default_factory=lambda: [0])
    layers: list[str] = Field(default_factory=lambda: [""])
    dtype: str | None = None
    in_memory: bool = True  # hf backend: build variants from the loaded experts, unwritten


class Evaluation(_Strict):
    """MGSM settings for every model of the suite (see `mergekit-layerswap eval`)."""

    languages: list[str] | str = Field(default_factory=lambda: ["sw", "en"])
    mode: Literal["native_cot", "direct", "en_cot"] = "native_cot"
    num_fewshot: NonNegativeInt = 0
    limit: int | None = None
    batch_size: int | str | None = None
    max_gen_toks: int | None = None
    backend: Literal["hf", "vllm"] = "hf"
    device: str | None = None
    data_dir: str | None = None

    def settings(self, limit: int | None = None, data_dir: str | None = None) -> EvalSettings:
        """The evaluation settings, with command-line overrides applied."""
        values = self.model_dump(exclude_none=True)
        if limit is not None:
            values["limit"] = limit
        if data_dir is not None:
            values["data_dir"] = data_dir
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"])
        return EvalSettings(**values)


class Push(_Strict):
    """Publish chosen merges to the Hub once they are scored (as NAMESPACE/NAME)."""

    namespace: str
    merges: list[str]
    private: bool = True


class SuiteFile(_Strict):
    models: dict[str, str]
    evaluate_inputs: list[str] = Field(default_factory=list)
    merges: list[dict[str, Any]] = Field(default_factory=list)
    sweep: Sweep | None = None
    evaluation: Evaluation = Field(default_factory=Evaluation)
    keep_weights: bool = True
    seed: int = 0
    push: Push | None = None

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
    evaluation: Evaluation
    keep_weights: bool
    aliases: dict[str, str]
    push: Push | None = None

    def select(self, names: list[str] | None) -> tuple[Entry, ...]:
        """The entries named by `--only` (all when None); unknown names are a SuiteError."""
        if not names:
            return self.entries
        known = {e.name for e in self.entries}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SuiteError([f"--only: no model named {n!r}; known: {', '.join(sorted(known))}"
                              for n in unknown])  # fmt: skip
        return tuple(e for e in self.entries if e.name in names)


def _resolve(value: Any, aliases: dict[str, str], where: str, problems: list[str]) -> Any:
    """Replace an alias (optionally `alias+lora`) by what it stands for."""
    if not isinstance(value, str):
        problems.append(f"{where}: expected a model alias, got {value!r}")
        return value
    name, plus, lora = value.partition("+")
    if name not in aliases:
        guess = difflib.get_close_matches(name, list(aliases), n=1)
        hint = (
            f"did you mean {guess[0]!r}?"
            if guess
            else f"define it under models: ({', '.join(aliases)})"
        )
        problems.append(f"{where}: {name!r} is not a model alias; {hint}")
        return value
    target = aliases[name]
    if checkpoint.looks_local(target):  # absolute, so saved configs work from any folder
        target = str(Path(target).expanduser().resolve())
    return target + (plus + lora if plus else "")


def _merge_entry(
    index: int, raw: dict, aliases: dict[str, str], seed: int, problems: list[str]
) -> Entry | None:
    where = f"merges[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        problems.append(f"{where}.name: missing; give every merge a unique name")
        return None
    name = raw["name"]
    where = f"merges[{index}] ({name})"
    config = copy.deepcopy({k: v for k, v in raw.items() if k != "name"})
    for key in sorted(set(config) - validate.MERGEKIT_KEYS):
        guess = difflib.get_close_matches(key, sorted(validate.MERGEKIT_KEYS), n=1)
        hint = f"did you mean {guess[0]!r}?" if guess else "remove it"
        problems.append(f"{where}.{key}: not a mergekit config key; {hint}")
    if "merge_method" not in config:
        problems.append(f"{where}.merge_method: missing (e.g. layer_swap, linear, ties)")
    if config.get("base_model") is not None:
        config["base_model"] = _resolve(
            config["base_model"], aliases, f"{where}.base_model", problems
        )
    models = config.get("models")
    if isinstance(models, list):
        for i, model in enumerate(models):
            if isinstance(model, dict) and "model" in model:
                model["model"] = _resolve(
                    model["model"], aliases, f"{where}.models[{i}].model", problems
                )
            else:
                problems.append(
                    f"{where}.models[{i}]: write `- model: ALIAS` (with optional parameters)"
                )
    elif "slices" not in config:
        problems.append(f"{where}.models: missing; list the models to merge by alias")
    method = config.get("merge_method", "")
    return Entry(name, "merge", method, config=config,
                 random_seed=seed if method in RANDOMIZED else None)  # fmt: skip


def _sweep_entries(sweep: Sweep, aliases: dict[str, str], problems: list[str]) -> list[Entry]:
    host = _resolve(sweep.base_model, aliases, "sweep.base_model", problems)
    donor = _resolve(sweep.donor, aliases, "sweep.donor", problems)
    entries = []
    for bottom, top, transition, layers in itertools.product(
        sweep.bottom, sweep.top, sweep.transition, sweep.layers
    ):
        parts = [f"b{bottom}" if bottom else "", f"t{top}" if top else "",
                 f"l{layers.replace(',', '_')}" if layers else "", f"tr{transition}"]  # fmt: skip
        donor_parameters = {
            k: v for k, v in (("bottom", bottom), ("top", top), ("layers", layers)) if v
        }
        config = {
            "merge_method": validate.METHOD,
            "base_model": host,
            "models": [{"model": host}, {"model": donor, "parameters": donor_parameters}],
            "parameters": {"transition": transition},
        }
        if sweep.dtype:
            config["dtype"] = sweep.dtype
        entries.append(Entry("swap-" + "-".join(p for p in parts if p), "sweep", validate.METHOD,
                             config=config))  # fmt: skip
    return entries


def _merge_problems(config: dict) -> list[str]:
    """layer_swap: our full check; other methods: mergekit's own config model and registry."""
    if config.get("merge_method") == validate.METHOD:
        return validate.check(config)
    from mergekit import merge_methods
    from mergekit.config import MergeConfiguration

    try:
        merge_methods.get(config.get("merge_method", ""))
        MergeConfiguration.model_validate(config)
    except (RuntimeError, ValueError) as error:
        return [f"merge_method/config: {str(error).splitlines()[0]}"]
    return []


def _pydantic_problems(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown key; remove it or check its spelling")
        else:
            problems.append(f"{where}: {item['msg']}")
    return problems


def parse_suite(raw: Any) -> Suite:
    """Validate a loaded suite file; SuiteError lists every problem."""
    if not isinstance(raw, dict):
        raise SuiteError(["the suite file must be a mapping with models, merges, evaluation"])
    try:
        spec = SuiteFile.model_validate(raw)
    except ValidationError as error:
        raise SuiteError(_pydantic_problems(error)) from None
    problems: list[str] = []
    entries = [
        Entry(
            alias,
            "input",
            "-",
            model=_resolve(alias, spec.models, f"evaluate_inputs[{i}]", problems),
        )
        for i, alias in enumerate(spec.evaluate_inputs)
    ]
    entries += [e for i, m in enumerate(spec.merges)
                if (e := _merge_entry(i, m, spec.models, spec.seed, problems))]  # fmt: skip
    if spec.sweep:
        published = set(spec.push.merges) if spec.push else set()
        in_memory = spec.sweep.in_memory and spec.evaluation.backend == "hf"
        entries += [
            dataclasses.replace(e, in_memory=in_memory and e.name not in published)
            for e in _sweep_entries(spec.sweep, spec.models, problems)
        ]
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            problems.append(f"{entry.name}: name used twice; every merge and input needs its own")
        seen.add(entry.name)
    if not problems:
        for entry in entries:
            if entry.config is not None:
                problems += [f"{entry.name}: {p}" for p in _merge_problems(entry.config)]
    try:
        spec.evaluation.settings()
    except EvalInputError as error:
        problems.append(f"evaluation: {error}")
    if not entries:
        problems.append("nothing to do: add evaluate_inputs, merges or a sweep")
    merged = {e.name for e in entries if e.kind != "input"}
    for name in spec.push.merges if spec.push else []:
        if name not in merged:
            problems.append(f"push.merges: {name!r} is not a merge of this suite")
    if problems:
        raise SuiteError(problems)
    return Suite(tuple(entries), spec.evaluation, spec.keep_weights, dict(spec.models), spec.push)


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite YAML file."""
    try:
        raw = validate.load(path)
    except validate.ConfigError as error:
        raise SuiteError(error.problems) from None
    return parse_suite(raw)
