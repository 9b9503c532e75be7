"""Check a `layer_swap` mergekit config before any tensor is read or any file is written.

`check(raw)` takes the YAML as loaded (a dict) and returns every problem as one line that
names the field and the fix. It reads the models' config.json files (locally or from the
Hub) but never a tensor, and never imports torch or mergekit.
"""

from __future__ import annotations

import difflib
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, NonNegativeInt, ValidationError

from mergekit_layerswap import checkpoint, swap

METHOD = "layer_swap"

#: Top-level keys of mergekit 0.1.5's MergeConfiguration (pinned by a test).
MERGEKIT_KEYS = frozenset(
    {
        "modules", "slices", "models", "merge_method", "base_model", "dtype",
        "tokenizer_source", "tokenizer", "chat_template", "out_dtype", "parameters",
    }
)  # fmt: skip


class DonorParameters(BaseModel):
    """`models[i].parameters` of a donor."""

    model_config = ConfigDict(extra="forbid", strict=True)
    bottom: NonNegativeInt = 0
    top: NonNegativeInt = 0
    layers: str = ""


class SwapParameters(BaseModel):
    """The top-level `parameters` of a layer_swap merge."""

    model_config = ConfigDict(extra="forbid", strict=True)
    transition: NonNegativeInt = 0
    embed_source: Literal["auto", "base"] = "auto"
    head_source: Literal["auto", "base"] = "auto"


_FIXES = {
    "bottom": "use a whole number >= 0 (how many of the donor's first layers to take)",
    "top": "use a whole number >= 0 (how many of the donor's last layers to take)",
    "layers": 'use a quoted string of inclusive ranges, e.g. layers: "13-22" or "0-4,30-31"',
    "transition": "use a whole number >= 0 (blended layers beside each swapped block; 0 = none)",
    "embed_source": '"auto" follows the source of layer 0; "base" keeps the host\'s',
    "head_source": '"auto" follows the source of the last layer; "base" keeps the host\'s',
}


class ConfigError(ValueError):
    """An invalid layer_swap configuration; str() gives every problem, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class LayerSwapPlan:
    """A checked configuration: the host, the swap rule's config and the models' facts."""

    host: str
    swap: swap.SwapConfig
    num_layers: int
    models: dict[str, checkpoint.ModelInfo]


def load(path: str | Path) -> dict:
    """Read a YAML config file into a dict (ConfigError if unreadable or not a mapping)."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError([f"{path}: cannot read it ({error.strerror})"]) from None
    except yaml.YAMLError as error:
        raise ConfigError([f"{path}: not valid YAML ({error})".replace("\n", " ")]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: expected a YAML mapping (keys such as models, ...)"])
    return raw


def reference(value: Any) -> str | None:
    """A model entry as mergekit's string form ``path[@rev][+lora]`` (None if malformed)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        model = value.get("model", value.get("path"))
        if isinstance(model, dict):
            model = model.get("path") + (f"@{model['revision']}" if model.get("revision") else "")
        return model if isinstance(model, str) else None
    return None


def _pydantic_problems(prefix: str, error: ValidationError, known: list[str]) -> list[str]:
    problems = []
    for item in error.errors():
        name = str(item["loc"][0]) if item["loc"] else ""
        if item["type"] == "extra_forbidden":
            guess = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {guess[0]!r}? " if guess else ""
            problems.append(
                f"{prefix}.{name}: unknown layer_swap parameter; {hint}known: {', '.join(known)}"
            )
        else:
            got = item.get("input")
            shown = "a gradient or filter" if isinstance(got, (list, dict)) else repr(got)
            problems.append(f"{prefix}.{name}: got {shown}; {_FIXES[name]}")
    return problems


def _parameters(
    prefix: str, raw: Any, schema: type[BaseModel], elsewhere: dict[str, str]
) -> tuple[BaseModel | None, list[str]]:
    """Validate one `parameters` mapping; parameters that belong elsewhere get pointed there."""
    raw = raw or {}
    if not isinstance(raw, dict):
        return None, [f"{prefix}: expected a mapping of parameter names to values"]
    problems = [f"{prefix}.{name}: {where}" for name, where in elsewhere.items() if name in raw]
    kept = {k: v for k, v in raw.items() if k not in elsewhere}
    try:
        return schema.model_validate(kept), problems
    except ValidationError as error:
        return None, problems + _pydantic_problems(prefix, error, list(schema.model_fields))


_DONOR_ONLY = "is set per donor; move it under that donor's parameters"
_SHARED_ONLY = "applies to the whole merge; move it to the top-level parameters"


def _structure(raw: dict) -> list[str]:
    problems = []
    for key in sorted(set(raw) - MERGEKIT_KEYS):
        guess = difflib.get_close_matches(key, sorted(MERGEKIT_KEYS), n=1)
        hint = f"did you mean {guess[0]!r}?" if guess else "remove it"
        problems.append(f"{key}: not a mergekit config key; {hint}")
    if raw.get("merge_method") != METHOD:
        problems.append(f"merge_method: expected {METHOD!r}, got {raw.get('merge_method')!r}")
    if raw.get("slices") or raw.get("modules"):
        problems.append(
            "slices/modules: layer_swap takes a `models:` list (host + donors); "
            "the layers each donor takes are its bottom/top/layers parameters"
        )
    if not raw.get("base_model"):
        problems.append(
            "base_model: missing; name the host model (e.g. the math expert) whose layers "
            "are kept wherever no donor claims them"
        )
    if not isinstance(raw.get("models"), list) or not raw["models"]:
        problems.append("models: missing; list the host and at least one donor")
    return problems


def check_plan(raw: dict) -> tuple[LayerSwapPlan | None, list[str]]:
    """Validate a loaded config; returns the plan (None if invalid) and all problems."""
    problems = _structure(raw)
    if problems and (not raw.get("base_model") or not isinstance(raw.get("models"), list)):
        return None, problems
    host = reference(raw["base_model"]) or ""
    shared, found = _parameters(
        "parameters", raw.get("parameters"), SwapParameters,
        {"bottom": _DONOR_ONLY, "top": _DONOR_ONLY, "layers": _DONOR_ONLY},
    )  # fmt: skip
    problems += found

    claims: list[swap.Claim] = []
    fields: dict[Hashable, str] = {}
    seen: set[str] = set()
    refs = [host]
    for i, entry in enumerate(raw["models"]):
        where = f"models[{i}]"
        ref = reference(entry.get("model") if isinstance(entry, dict) else None)
        if ref is None:
            problems.append(f"{where}.model: missing; write `- model: PATH_OR_HUB_ID`")
            continue
        if ref in seen:
            problems.append(f"{where}.model: {ref} is listed twice; list each model once")
            continue
        seen.add(ref)
        params = entry.get("parameters")
        if ref == host:
            if params:
                problems.append(
                    f"{where}.parameters: the host (base_model) keeps its layers and takes no "
                    "parameters; put bottom/top/layers under a donor"
                )
            continue
        refs.append(ref)
        shared_names = dict.fromkeys(SwapParameters.model_fields, _SHARED_ONLY)
        donor, found = _parameters(f"{where}.parameters", params, DonorParameters, shared_names)
        problems += found
        fields[ref] = f"{where}.parameters"
        if donor is not None:
            claims.append(swap.Claim(ref, donor.bottom, donor.top, donor.layers))

    infos, found = _model_infos(raw, refs)
    problems += found
    if host not in infos or problems:
        return None, problems

    config = swap.SwapConfig(
        host=host,
        claims=tuple(claims),
        transition=shared.transition,
        embed_source=shared.embed_source,
        head_source=shared.head_source,
    )
    num_layers = infos[host].num_layers
    for problem in swap.problems(config, num_layers):
        if problem.field == "transition":
            field = "parameters.transition"
        elif problem.donor in fields:
            donor = fields[problem.donor]
            field = donor if problem.field == "models" else f"{donor}.{problem.field}"
        else:
            field = "models"
        problems.append(f"{field}: {problem.message}")
    problems += _tied_problems(config, num_layers, infos[host])
    plan = LayerSwapPlan(host, config, num_layers, infos) if not problems else None
    return plan, problems


def _model_infos(raw: dict, refs: list[str]) -> tuple[dict[str, checkpoint.ModelInfo], list[str]]:
    """Read every model's config; report unreadable models and any mismatch with the host."""
    where = {reference(e.get("model")): f"models[{i}].model" for i, e in enumerate(raw["models"])}
    where.setdefault(refs[0], "base_model")
    infos, problems = {}, []
    for ref in refs:
        try:
            infos[ref] = checkpoint.model_info(ref)
        except checkpoint.CheckpointError as error:
            problems.append(f"{where[ref]}: {error}")
    host = infos.get(refs[0])
    if host is None:
        return infos, problems
    for ref, info in infos.items():
        for label, attribute in (
            ("architecture", "architecture"),
            ("layer count", "num_layers"),
            ("hidden size", "hidden_size"),
            ("tie_word_embeddings", "tie_word_embeddings"),
        ):
            mine, theirs = getattr(info, attribute), getattr(host, attribute)
            if mine != theirs:
                problems.append(
                    f"{where[ref]}: {label} {mine} differs from the host's {theirs}; "
                    "layer_swap needs fine-tunes of one base model (same architecture and size)"
                )
    return infos, problems


def _tied_problems(
    config: swap.SwapConfig, num_layers: int, host: checkpoint.ModelInfo
) -> list[str]:
    """A tied head is the embedding matrix: both must come from the same source."""
    if not host.tie_word_embeddings:
        return []
    embed = swap.outer_weights("pre", num_layers, config)
    head = swap.outer_weights("post", num_layers, config)
    if dict(embed) == dict(head):
        return []
    return [
        "parameters.embed_source: the models tie the head to the embeddings "
        "(tie_word_embeddings: true), but the embeddings would come from "
        f"{_describe(embed)} and the head from {_describe(head)}; set embed_source and "
        "head_source to base, or swap both the bottom and the top layers from one donor"
    ]


def _describe(weights: swap.LayerWeights) -> str:
    return " + ".join(
        f"{w:g}x {source}" if w != 1 else str(source) for source, w in weights.items()
    )


def swap_config(raw: dict) -> swap.SwapConfig:
    """The swap rule's configuration of a layer_swap config, reading no model (e.g. to
    describe a finished merge). Assumes the config passed `check` when it was merged."""
    host = reference(raw["base_model"])
    claims = []
    for entry in raw["models"]:
        ref = reference(entry.get("model"))
        if ref != host:
            donor = DonorParameters.model_validate(entry.get("parameters") or {})
            claims.append(swap.Claim(ref, **donor.model_dump()))
    shared = SwapParameters.model_validate(raw.get("parameters") or {})
    return swap.SwapConfig(host, tuple(claims), **shared.model_dump())


def check(raw: dict) -> list[str]:
    """Every problem with a loaded layer_swap config, one line each (empty if valid)."""
    return check_plan(raw)[1]


def plan(raw: dict) -> LayerSwapPlan:
    """The checked plan of a loaded config; ConfigError listing every problem if invalid."""
    result, problems = check_plan(raw)
    if problems or result is None:
        raise ConfigError(problems)
    return result
