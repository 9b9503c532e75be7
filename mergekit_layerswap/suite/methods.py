"""Every other merge method's config, checked against the method's own mergekit spec.

mergekit silently ignores parameter names a method does not declare (`densty`, `wieght`)
and a shared parameter written under one model; here each is a problem line with the
closest known name, before anything is merged. The names, scopes, value types and input
counts come from mergekit's registry (`MergeMethodSpec`), so methods mergekit adds are
checked too. What mergekit would only find mid-merge, after earlier merges ran, is found
here: values of the wrong type, empty gradients, non-finite numbers, densities outside
(0, 1], weights a method divides by summing to 0 (every output value NaN), a missing base
model or the wrong number of models; and mergekit's own config schema (`mergekit_schema`).
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

from mergekit_layerswap import mergekit_schema
from mergekit_layerswap.errors import did_you_mean

#: Methods that divide by the sum of their weights, and the parameter that turns it off.
_NORMALIZED = {"linear": "normalize", "multislerp": "normalize_weights"}


def _unknown(name: str, known: list[str]) -> str:
    return f"{did_you_mean(name, known)} known: {', '.join(known)}".lstrip()


def problems(config: dict) -> list[str]:
    """Any other method: mergekit's registry, its config model, and the parameter names,
    scopes, values and inputs the method's own spec declares (one line each)."""
    from mergekit import merge_methods

    name = config.get("merge_method")
    known = sorted(m.spec.name for m in merge_methods.registered_methods())
    if name not in known:
        return [f"merge_method: unknown method {name!r}; {_unknown(str(name), known)}"]
    schema = mergekit_schema.check(config)
    if schema:
        return schema
    method = merge_methods.get(name)
    values = _value_problems(method.spec, config)
    found = _name_problems(method.spec, config) + _contract_problems(method, config)
    if values:
        return found + values
    return found + _sum_problems(method.spec, config) + _epsilon_problems(method.spec, config)


def _name_problems(spec, config: dict) -> list[str]:
    """Parameter names and scopes against the method's spec; required ones given."""
    from mergekit.merge_methods.base import ParameterScope

    name = spec.name
    shared = {p.name for p in spec.shared_parameters}
    allowed = sorted(shared | {p.name for p in spec.input_parameters})
    top = config.get("parameters") or {}
    found = [
        f"parameters.{key}: not a {name} parameter; {_unknown(str(key), allowed)}"
        for key in top
        if key not in allowed
    ]
    found += [
        f"parameters.{p.name}: {name} requires it; add it"
        for p in spec.shared_parameters
        if p.required and p.name not in top
    ]
    for i, model in enumerate(config.get("models") or []):
        where = f"models[{i}].parameters"
        given = model.get("parameters") or {}
        for key in given:
            if key in shared:
                found.append(
                    f"{where}.{key}: applies to the whole merge; move it to the "
                    "top-level parameters"
                )
            elif key not in allowed:
                found.append(
                    f"{where}.{key}: not a {name} parameter; {_unknown(str(key), allowed)}"
                )
        is_base = model.get("model") == config.get("base_model")
        found += [
            f"{where}.{p.name}: {name} requires it for every model; add it"
            for p in spec.input_parameters
            if p.required
            and p.name not in given
            and p.name not in top
            and not (is_base and p.scope == ParameterScope.NON_BASE)
        ]
    listed = [m.get("model") for m in config.get("models") or []]
    if config.get("base_model") is not None and config["base_model"] not in listed:
        found += [  # mergekit adds the base model to the inputs, without parameters
            f"base_model: {name} merges it too and requires {p.name} for it; list it under "
            f"models with a {p.name}, or give {p.name} in the top-level parameters"
            for p in spec.input_parameters
            if p.required and p.scope == ParameterScope.INPUT and p.name not in top
        ]
    return found


def _settings(spec, config: dict) -> list[tuple[str, Any, Any]]:
    """Every value given for one of the method's parameters: (field, parameter, setting)."""
    named = {p.name: p for p in spec.parameters}
    found = [
        (f"parameters.{key}", named[key], setting)
        for key, setting in (config.get("parameters") or {}).items()
        if key in named
    ]
    for i, model in enumerate(config.get("models") or []):
        given = model.get("parameters") or {}
        where = f"models[{i}].parameters"
        found += [(f"{where}.{key}", named[key], v) for key, v in given.items() if key in named]
    return found


def _points(setting: Any) -> list[Any] | None:
    """The values a setting takes: a number, a gradient's points, each filter's value (None
    when a gradient is empty: mergekit then finds no value mid-merge)."""
    if isinstance(setting, dict):
        return _points(setting.get("value"))
    if isinstance(setting, list):
        parts = [_points(item) for item in setting]
        return None if not parts or None in parts else [v for part in parts for v in part]
    return [setting]


def _value_problem(spec, parameter, setting: Any) -> str | None:
    """Why mergekit would fail on, or write a non-finite model from, one setting."""
    from pydantic import ValidationError

    points = _points(setting)
    if points is None:
        return "an empty gradient; give a value or a list of values"
    kind = getattr(parameter.value_type, "__name__", str(parameter.value_type))
    for point in points:
        try:
            value = parameter.validate(point)
        except ValidationError:
            return f"got {point!r}; {spec.name}'s {parameter.name} takes {kind} values"
        if isinstance(value, float) and not math.isfinite(value):
            return f"got {point!r}; {parameter.name} must be a finite number"
        if parameter.name == "density" and not 0 < value <= 1:
            return f"got {point!r}; density is the fraction of each delta kept: in (0, 1]"
    return None


def _value_problems(spec, config: dict) -> list[str]:
    return [
        f"{where}: {problem}"
        for where, parameter, setting in _settings(spec, config)
        if (problem := _value_problem(spec, parameter, setting))
    ]


def _contract_problems(method, config: dict) -> list[str]:
    """The method's input contract, checked as mergekit's planner checks it (the base model
    is added to the inputs when `models:` does not list it)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge_methods.base import BasePolicy

    parsed = MergeConfiguration.__pydantic_validator__.validate_python(config)
    base, groups = parsed.base_model, []
    if parsed.models:
        inputs = [m.model for m in parsed.models]
        groups.append(("models", inputs + ([base] if base and base not in inputs else []), base))
    for i, piece in enumerate(parsed.slices or []):
        inputs = [source.model for source in piece.sources]
        groups.append((f"slices[{i}].sources", inputs, piece.base_model or base))
    name, found = method.spec.name, []
    for where, inputs, group_base in groups:
        if method.spec.contract.base == BasePolicy.REQUIRED and group_base is None:
            found.append(f"base_model: missing; {name} needs the model the others differ from")
            continue
        try:
            method.validate_inputs(inputs, group_base)
        except ValueError as error:
            found.append(f"{where}: {name}: {error}")
    return found


def _at(setting: Any, t: float) -> float:
    """A number or a gradient at t in [0, 1], interpolated as mergekit does."""
    if not isinstance(setting, list):
        return float(setting)
    scaled = t * (len(setting) - 1)
    low = int(scaled)
    high = min(len(setting) - 1, low + 1)
    return (1 - (scaled - low)) * float(setting[low]) + (scaled - low) * float(setting[high])


def _plain(setting: Any) -> bool:
    """A number or a gradient: the same for every tensor of a layer (not a filter)."""
    if isinstance(setting, list):
        return all(not isinstance(point, dict) for point in setting)
    return setting is not None and not isinstance(setting, dict)


def _sum_problems(spec, config: dict) -> list[str]:
    """Weights a method divides by their sum must not sum to 0 at any layer (checked at
    every gradient point; filtered weights depend on tensor names and are not checked)."""
    from mergekit.merge_methods.base import ParameterScope

    parameters = {p.name: p for p in spec.parameters}
    flag = _NORMALIZED.get(spec.name)
    top = config.get("parameters") or {}
    if flag not in parameters or "weight" not in parameters:
        return []
    normalize = top.get(flag, parameters[flag].default)
    if isinstance(normalize, (list, dict)) or parameters[flag].validate(normalize) is False:
        return []
    base, models = config.get("base_model"), config.get("models") or []
    if parameters["weight"].scope == ParameterScope.INPUT:  # the base is weighed too
        listed = base is None or base in [m.get("model") for m in models]
        models = models if listed else [*models, {"model": base}]
    settings = [
        (m.get("parameters") or {}).get("weight", top.get("weight"))
        for m in models
        if parameters["weight"].scope == ParameterScope.INPUT or m.get("model") != base
    ]
    if not settings or not all(map(_plain, settings)):
        return []
    lengths = {len(s) for s in settings if isinstance(s, list)}
    knots = sorted({0.0, 1.0} | {k / (n - 1) for n in lengths if n > 1 for k in range(n)})
    sums = [sum(_at(s, t) for s in settings) for t in knots]
    if any(abs(v) < 1e-8 for v in sums) or any(a * b < 0 for a, b in pairwise(sums)):
        where = " somewhere along the layers" if lengths else ""
        return [
            f"models: the {spec.name} weights sum to 0{where}; {spec.name} divides by their "
            f"sum, so every value would be NaN or infinite: change a weight, or set "
            f"parameters.{flag}: false"
        ]
    return []


def _epsilon_problems(spec, config: dict) -> list[str]:
    """DELLA keeps each value with a probability within density ± epsilon: for a density
    below 1, mergekit fails mid-merge unless both lie in (0, 1) (numbers only; gradients are
    not checked)."""
    named = {p.name: p for p in spec.parameters}
    if "epsilon" not in named:
        return []
    top, found = config.get("parameters") or {}, []
    for i, model in enumerate(config.get("models") or []):
        given = {**top, **(model.get("parameters") or {})}
        density = given.get("density", named["density"].default)
        epsilon = given.get("epsilon", named["epsilon"].default)
        numbers = all(type(v) in (int, float) for v in (density, epsilon))
        if model.get("model") == config.get("base_model") or not numbers:
            continue
        if 0 < density < 1 and (density + epsilon >= 1 or density - epsilon <= 0):
            found.append(
                f"models[{i}].parameters.epsilon: density {density:g} ± epsilon {epsilon:g} "
                f"leaves (0, 1), where {spec.name} fails mid-merge; choose a smaller epsilon"
            )
    return found
