"""Every other merge method's config, checked against the method's own mergekit spec.

mergekit silently ignores parameter names a method does not declare (`densty`, `wieght`)
and a shared parameter written under one model; here each is a problem line with the
closest known name, before anything is merged. The names and scopes come from mergekit's
registry (`MergeMethodSpec`), so methods mergekit adds are checked too.
"""

from __future__ import annotations

from pydantic import ValidationError

from mergekit_layerswap.errors import did_you_mean


def _unknown(name: str, known: list[str]) -> str:
    return f"{did_you_mean(name, known)} known: {', '.join(known)}".lstrip()


def problems(config: dict) -> list[str]:
    """Any other method: mergekit's registry, its config model, and the parameter names and
    scopes the method's own spec declares (mergekit ignores unknown names silently)."""
    from mergekit import merge_methods
    from mergekit.config import MergeConfiguration
    from mergekit.merge_methods.base import ParameterScope

    name = config.get("merge_method")
    known = sorted(m.spec.name for m in merge_methods.registered_methods())
    if name not in known:
        return [f"merge_method: unknown method {name!r}; {_unknown(str(name), known)}"]
    try:
        MergeConfiguration.model_validate(config)
    except ValidationError as error:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]
    spec = merge_methods.get(name).spec
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
    return found
