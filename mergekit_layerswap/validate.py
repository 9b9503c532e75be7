"""Check a `layer_swap` mergekit config before any tensor is read or any file is written.

`check(raw)` takes the YAML as loaded (a dict) and returns every problem as one line that
names the field and the fix. It reads the models' config.json files and safetensors headers
(locally or from the Hub) but never a tensor, and never imports torch or mergekit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mergekit_layerswap import (
    adapters,
    checkpoint,
    compat,
    config_files,
    layout,
    mergekit_schema,
    overrides,
    swap,
    swap_rule,
)
from mergekit_layerswap.errors import InputError, did_you_mean
from mergekit_layerswap.swap import METHOD, reference

#: Top-level keys of mergekit 0.1.5's MergeConfiguration (pinned by a test).
MERGEKIT_KEYS = frozenset(
    {
        "modules",
        "slices",
        "models",
        "merge_method",
        "base_model",
        "dtype",
        "tokenizer_source",
        "tokenizer",
        "chat_template",
        "out_dtype",
        "parameters",
    }
)


@dataclass(frozen=True)
class CheckedSwap:
    """A checked configuration: the host, the swap rule's config, the layer count, the
    host's mergekit architecture name, and each model's stored tensors as its check read
    them (None: pickled weights), which the merge uses instead of reading them again."""

    host: str
    swap: swap.SwapConfig
    num_layers: int
    architecture: str
    tensors: dict[str, dict[str, checkpoint.Stored] | None]
    notes: tuple[str, ...] = ()  # donor config fields that differ but change no layer


def load(path: str | Path, changes: Sequence[str] = ()) -> dict:
    """Read a YAML config file into a dict (`config_files`: bounded, strict), with
    `KEY=VALUE` overrides (`changes`) applied (InputError if unreadable, not a mapping, or an
    override does not apply)."""
    try:
        raw = config_files.parse_yaml(config_files.read_text(path))
    except OSError as error:
        raise InputError([f"{path}: cannot read it ({error.strerror})"]) from None
    except UnicodeDecodeError as error:
        raise InputError(
            [f"{path}: not UTF-8 text (byte {error.start}); save the config as UTF-8"]
        ) from None
    except ValueError as error:  # too large
        raise InputError([f"{path}: {error}"]) from None
    except yaml.YAMLError as error:
        raise InputError([f"{path}: not valid YAML ({error})".replace("\n", " ")]) from None
    if not isinstance(raw, dict):
        raise InputError([f"{path}: expected a YAML mapping (keys such as models, ...)"])
    return overrides.apply(raw, changes) if changes else raw


def _parameters(
    prefix: str, raw: Any, names: dict, elsewhere: dict[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """Check one `parameters` mapping against the swap parameters `names` (name -> field);
    parameters that belong elsewhere get pointed there. Returns the known values and problems;
    their types are checked where the swap rule's config is built (`_config`)."""
    raw = raw or {}
    if not isinstance(raw, dict):
        return {}, [f"{prefix}: expected a mapping of parameter names to values"]
    problems = []
    for name in raw:
        if name in elsewhere:
            problems.append(f"{prefix}.{name}: {elsewhere[name]}")
        elif name not in names:
            hint = f"{did_you_mean(name, names)} known: {', '.join(names)}".lstrip()
            problems.append(f"{prefix}.{name}: unknown layer_swap parameter; {hint}")
    return {k: v for k, v in raw.items() if k in names}, problems


def _typed(kind: type, where: dict[str, str], **values: Any) -> tuple[Any, list[str]]:
    """`kind(**values)` (a swap.Claim or swap.SwapConfig), or None and one problem per bad
    value (`where`: parameter name -> the field it came from)."""
    try:
        return kind(**values), []
    except ValidationError as error:
        problems = []
        for item in error.errors():
            name = str(item["loc"][0])
            got = item.get("input")
            shown = "a gradient or filter" if isinstance(got, (list, dict)) else repr(got)
            problems.append(f"{where[name]}.{name}: got {shown}; {swap.fix(name)}")
        return None, problems


_DONOR_ONLY = "is set per donor; move it under that donor's parameters"
_SHARED_ONLY = "applies to the whole merge; move it to the top-level parameters"


def unknown_keys(config: dict, prefix: str = "") -> list[str]:
    """A line for every string key of `config` that is not a mergekit config key."""
    return [
        f"{prefix}{key}: not a mergekit config key; {did_you_mean(key, MERGEKIT_KEYS, 'remove it')}"
        for key in sorted({k for k in config if isinstance(k, str)} - MERGEKIT_KEYS)
    ]


def _structure(raw: dict) -> list[str]:
    problems = [
        f"{key!r}: config keys are names such as models or base_model; remove this key"
        for key in raw
        if not isinstance(key, str)
    ]
    problems += unknown_keys(raw)
    if raw.get("merge_method") != METHOD:
        problems.append(f"merge_method: expected {METHOD!r}, got {raw.get('merge_method')!r}")
    if any(raw.get(key) not in (None, [], {}) for key in ("slices", "modules")):
        problems.append(
            "slices/modules: layer_swap takes a `models:` list (host + donors); "
            "the layers each donor takes are its bottom/top/layers parameters"
        )
    if not raw.get("base_model"):
        problems.append(
            "base_model: missing; name the host model (e.g. the math expert) whose layers "
            "are kept wherever no donor claims them"
        )
    elif reference(raw["base_model"]) is None:
        problems.append("base_model: expected a model path or Hub id, e.g. base_model: ./math")
    if not isinstance(raw.get("models"), list) or not raw["models"]:
        problems.append("models: missing; list the host and at least one donor")
    return problems + mergekit_schema.problems(raw)


def _model_entry(where: str, entry: Any) -> tuple[str | None, str | None]:
    """An entry of `models:` as (reference, problem)."""
    if not isinstance(entry, dict):
        shown = f"- model: {entry}" if isinstance(entry, str) else "- model: PATH_OR_HUB_ID"
        return None, f"{where}: expected a mapping with a model key; write `{shown}`"
    if reference(entry.get("model")) is None:
        return None, f"{where}.model: missing or not a path; write `- model: PATH_OR_HUB_ID`"
    return reference(entry["model"]), None


def review(raw: dict) -> tuple[CheckedSwap | None, list[str]]:
    """Validate a loaded config; returns the plan (None if invalid) and all problems."""
    problems = _structure(raw)
    if reference(raw.get("base_model")) is None or not isinstance(raw.get("models"), list):
        return None, problems
    host = reference(raw["base_model"]) or ""
    donor_names, shared_names = swap.donor_parameters(), swap.shared_parameters()
    values, found = _parameters(
        "parameters", raw.get("parameters"), shared_names, dict.fromkeys(donor_names, _DONOR_ONLY)
    )
    where_shared = dict.fromkeys(values, "parameters")
    shared, typed = _typed(swap.SwapConfig, where_shared, host=host, **values)
    problems += found + typed

    claims: list[swap.Claim] = []
    fields: dict[Hashable, str] = {}
    where = {host: "base_model"}
    seen = {checkpoint.identity(host): "base_model"}
    for i, entry in enumerate(raw["models"]):
        ref, problem = _model_entry(f"models[{i}]", entry)
        if ref is None:
            problems.append(problem)
            continue
        if ref == host:
            if entry.get("parameters"):
                problems.append(
                    f"models[{i}].parameters: the host (base_model) keeps its layers and takes "
                    "no parameters; put bottom/top/layers under a donor"
                )
            continue
        same = checkpoint.identity(ref)
        if same in seen:
            problems.append(
                f"models[{i}].model: {ref} is the same model as {seen[same]} ({same}); "
                "list each model once, the host spelled as in base_model"
            )
            continue
        seen[same] = where[ref] = f"models[{i}].model"
        fields[ref] = f"models[{i}].parameters"
        values, found = _parameters(
            fields[ref],
            entry.get("parameters"),
            donor_names,
            dict.fromkeys(shared_names, _SHARED_ONLY),
        )
        claim, typed = _typed(swap.Claim, dict.fromkeys(values, fields[ref]), donor=ref, **values)
        problems += found + typed
        claims.append(claim)

    infos, tensors, found, notes = _read_models(where)
    problems += found
    if host not in infos or problems:
        return None, problems

    config = dataclasses.replace(shared, claims=tuple(claims))
    num_layers = infos[host].num_layers
    for problem in swap_rule.problems(config, num_layers):
        if problem.field == "transition":
            field = "parameters.transition"
        elif problem.donor in fields:
            donor = fields[problem.donor]
            field = donor if problem.field == "models" else f"{donor}.{problem.field}"
        else:
            field = "models"
        problems.append(f"{field}: {problem.message}")
    problems += _tied_problems(config, num_layers, infos[host])
    if problems:
        return None, problems
    plan = CheckedSwap(host, config, num_layers, infos[host].architecture, tensors, tuple(notes))
    problems = _tensor_problems(plan, tensors, where)
    return (None if problems else plan), problems


def _read_models(
    where: dict[str, str],
) -> tuple[dict[str, checkpoint.ModelInfo], dict, list[str], list[str]]:
    """Every model's config and tensor headers (`where`: reference -> its field, host
    first); reports unreadable models, any config mismatch with the host (problems, and
    notes for fields that change no layer), quantised weights, tensors no merge can place and
    LoRA adapters that do not fit their models."""
    infos, tensors, problems = {}, {}, []
    for ref, field in where.items():
        if ref.startswith("~"):  # mergekit would look it up on the Hub
            full = Path(checkpoint.split_reference(ref)[0]).expanduser()
            problems.append(f"{field}: mergekit does not expand ~ in {ref}; write {full}")
            continue
        try:
            infos[ref] = checkpoint.model_info(ref)
            tensors[ref] = checkpoint.model_tensors(ref)
            adapters.check(ref, tensors[ref])
        except InputError as error:
            problems.append(f"{field}: {error}")
            continue
        if tensors[ref] is not None:
            lines = layout.read(tensors[ref], infos[ref].num_layers)[1]
            problems += [f"{field}: {ref} {line}" for line in lines]
    found, notes = compat.problems(where, infos, tensors)
    problems += found
    host = infos.get(next(iter(where)))
    for ref, info in infos.items() if host else ():
        mine, theirs = dict(info.shape), dict(host.shape)
        compared = [
            ("architecture", info.architecture, host.architecture),
            ("layer count", info.num_layers, host.num_layers),
            ("tie_word_embeddings", info.tie_word_embeddings, host.tie_word_embeddings),
            *((key, mine[key], theirs[key]) for key in mine if key in theirs),
        ]
        problems += [
            f"{where[ref]}: {label} {value} differs from the host's {hosts} (config.json); "
            "layer_swap needs fine-tunes of one base model (same architecture and shapes)"
            for label, value, hosts in compared
            if value != hosts
        ]
    return infos, tensors, problems, notes


def _tensor_problems(plan: CheckedSwap, tensors: dict, where: dict[str, str]) -> list[str]:
    """The output holds every tensor of the host, each taken from the models the swap names
    for its place (read from the host's checkpoint, `layout`): each must have it, shaped as
    the host's (the output keeps the host's config.json), and a donor may hold no other
    tensor where the merge takes from it (it would be dropped). Headers only."""
    if tensors.get(plan.host) is None:
        return []  # pickled weights: names and shapes unknown before loading
    places = {
        ref: dict(layout.read(found, plan.num_layers)[0].places())
        for ref, found in tensors.items()
        if found is not None
    }
    missing: dict[str, list[str]] = {}
    differ: dict[str, list[str]] = {}
    extra: dict[str, list[str]] = {}
    for place, names in places[plan.host].items():
        for ref in swap_rule.tensor_weights(place, plan.num_layers, plan.swap):
            if ref not in places:
                continue
            extra.setdefault(ref, []).extend(sorted(set(places[ref][place]) - set(names)))
            for name in names:
                item, host = tensors[ref].get(name), tensors[plan.host][name]
                if item is None:
                    missing.setdefault(ref, []).append(name)
                elif item.shape != host.shape:
                    shapes = f"{list(item.shape)} where the host's is {list(host.shape)}"
                    differ.setdefault(ref, []).append(f"{name} has shape {shapes}")
    problems = [
        f"{where[ref]}: {ref} has no tensor {names[0]}{_more(names, 'missing')}, which the "
        "host has and the merge takes from this model: re-download or re-save the model"
        for ref, names in missing.items()
    ]
    problems += [
        f"{where[ref]}: tensor {lines[0]}{_more(lines, 'differ')}; layer_swap needs "
        "fine-tunes of one base model (same tensor shapes)"
        for ref, lines in differ.items()
    ]
    problems += [
        f"{where[ref]}: {ref} has tensor {names[0]}{_more(names, 'such')}, which the host "
        "does not have: the output keeps the host's tensors and config.json, so it would be "
        "dropped; layer_swap needs fine-tunes of one base model (same tensors)"
        for ref, names in extra.items()
        if names
    ]
    return problems


def _more(items: list[str], verb: str) -> str:
    return f" ({len(items) - 1} more {verb})" if len(items) > 1 else ""


def _tied_problems(
    config: swap.SwapConfig, num_layers: int, host: checkpoint.ModelInfo
) -> list[str]:
    """A tied head is the embedding matrix: both must come from the same source."""
    if not host.tie_word_embeddings:
        return []
    embed = swap_rule.outer_weights("pre", num_layers, config)
    head = swap_rule.outer_weights("post", num_layers, config)
    if dict(embed) == dict(head):
        return []
    return [
        "parameters.embed_source: the models tie the head to the embeddings "
        "(tie_word_embeddings: true), but the embeddings would come from "
        f"{_describe(embed)} and the head from {_describe(head)}; set embed_source and "
        "head_source to base, or swap both the bottom and the top layers from one donor"
    ]


def _describe(weights: swap_rule.LayerWeights) -> str:
    return " + ".join(
        f"{w:g}x {source}" if w != 1 else str(source) for source, w in weights.items()
    )


def check(raw: dict) -> list[str]:
    """Every problem with a loaded layer_swap config, one line each (empty if valid)."""
    return review(raw)[1]


def merge_check(raw: dict) -> tuple[CheckedSwap | None, list[str]]:
    """`review`, then, for a config that passes, what mergekit's own config model refuses
    (`mergekit_schema.refused`; imports mergekit and torch): the check of a merge."""
    checked, problems = review(raw)
    problems = problems or mergekit_schema.refused(raw)
    return (None if problems else checked), problems


def checked(raw: dict) -> CheckedSwap:
    """The checked plan of a loaded config; InputError listing every problem if invalid."""
    result, problems = review(raw)
    if problems or result is None:
        raise InputError(problems)
    return result
