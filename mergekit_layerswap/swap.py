"""One layer swap: its parameters, declared once, and its forms in mergekit.

A `SwapConfig` names a host and the donors' `Claim`s. It is the one translator of a swap:
`from_mergekit`/`to_mergekit` read and write it as mergekit config keys (`base_model`,
`models:` with each donor's `parameters`, the merge's `parameters`), and
`from_parameters`/`to_parameters` as the `layer_swap` kernel's resolved parameters (per donor:
{donor: value}). What the swap does to each layer is `swap_rule`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Literal

from pydantic import ConfigDict, Field, NonNegativeInt
from pydantic import dataclasses as pydantic_dataclasses

#: The merge method's name in mergekit configs.
METHOD = "layer_swap"
_STRICT = ConfigDict(strict=True, extra="forbid")

# The swap parameters are declared here and only here: each field after `donor` (Claim) or
# after `host`/`claims` (SwapConfig) is a layer_swap parameter. Validation, the mergekit
# method's signature, the suite's sweep grid and the variant names are derived from these
# fields (`description`: the fix shown for a bad value; `short`: the code in sweep names).


@pydantic_dataclasses.dataclass(frozen=True, config=_STRICT)
class Claim:
    """The layers one donor takes over: `models[i].parameters` of a donor."""

    donor: Any
    bottom: NonNegativeInt = Field(
        0,
        description="use a whole number >= 0 (how many of the donor's first layers to take)",
        json_schema_extra={"short": "b"},
    )
    top: NonNegativeInt = Field(
        0,
        description="use a whole number >= 0 (how many of the donor's last layers to take)",
        json_schema_extra={"short": "t"},
    )
    layers: str = Field(
        "",
        description='use a quoted string of inclusive ranges, e.g. layers: "13-22" or "0-4,30-31"',
        json_schema_extra={"short": "l"},
    )

    @property
    def claims_nothing(self) -> bool:
        """Whether no layer is claimed (bottom, top and layers unset)."""
        return not (self.bottom or self.top or self.layers.strip())


@pydantic_dataclasses.dataclass(frozen=True, config=_STRICT)
class SwapConfig:
    """A host model plus the donors' claims and the parameters of the whole merge."""

    host: Any
    claims: tuple[Claim, ...] = ()
    transition: NonNegativeInt = Field(
        0,
        description="use a whole number >= 0 (blended layers beside each swapped block; 0 = none)",
        json_schema_extra={"short": "tr"},
    )
    embed_source: Literal["auto", "base"] = Field(
        "auto",
        description='"auto" follows the source of layer 0; "base" keeps the host\'s',
        json_schema_extra={"short": "embed"},
    )
    head_source: Literal["auto", "base"] = Field(
        "auto",
        description='"auto" follows the source of the last layer; "base" keeps the host\'s',
        json_schema_extra={"short": "head"},
    )

    @classmethod
    def from_mergekit(cls, config: Mapping) -> SwapConfig:
        """The swap of a layer_swap mergekit config as loaded: the host is `base_model`, every
        other `models:` entry a donor with its `parameters`, the top-level `parameters` the
        merge's. Reads no model; pydantic's ValidationError for a bad value (`validate` says
        which field)."""
        host = reference(config["base_model"])
        claims = tuple(
            Claim(ref, **(entry.get("parameters") or {}))
            for entry in config["models"]
            if (ref := reference(entry.get("model"))) != host
        )
        return cls(host, claims, **(config.get("parameters") or {}))

    def to_mergekit(self) -> dict:
        """`from_mergekit`'s inverse: `merge_method`, `base_model`, `models` (the host, then
        each donor with its parameters that differ from their defaults) and `parameters` (the
        merge's that differ, and `transition` always)."""
        models = [{"model": self.host}]
        models += [
            {"model": c.donor, "parameters": _changed(c, donor_parameters())} for c in self.claims
        ]
        parameters = _changed(self, shared_parameters(), always="transition")
        return {
            "merge_method": METHOD,
            "base_model": self.host,
            "models": models,
            "parameters": parameters,
        }

    @classmethod
    def from_parameters(cls, host: Any, donors: list, parameters: Mapping) -> SwapConfig:
        """The swap of the kernel's resolved parameters (per-donor ones as {donor: value})."""
        claims = tuple(
            Claim(donor, **{name: parameters[name][donor] for name in donor_parameters()})
            for donor in donors
        )
        return cls(host, claims, **{name: parameters[name] for name in shared_parameters()})

    def to_parameters(self) -> dict[str, Any]:
        """`from_parameters`' inverse: the kernel's parameters (`merge_state_dicts`)."""
        per_donor = {n: {c.donor: getattr(c, n) for c in self.claims} for n in donor_parameters()}
        return per_donor | {name: getattr(self, name) for name in shared_parameters()}


def donor_parameters() -> dict[str, Any]:
    """The per-donor parameters: name -> pydantic FieldInfo (default, annotation, ...)."""
    return {f.name: Claim.__pydantic_fields__[f.name] for f in fields(Claim)[1:]}


def shared_parameters() -> dict[str, Any]:
    """The parameters of the whole merge: name -> pydantic FieldInfo."""
    return {f.name: SwapConfig.__pydantic_fields__[f.name] for f in fields(SwapConfig)[2:]}


def fix(name: str) -> str:
    """How to write parameter `name` correctly (its field description)."""
    return (donor_parameters() | shared_parameters())[name].description


def variant_name(claim: Claim, config: SwapConfig) -> str:
    """A name for a one-donor swap, from the parameters that differ from their defaults
    (`transition` always shows): e.g. ``swap-b5-t2-tr1`` or ``swap-l13-22-tr0``."""
    parts = []
    for owner, found in ((claim, donor_parameters()), (config, shared_parameters())):
        for name, info in found.items():
            value = getattr(owner, name)
            if value != info.default or name == "transition":
                parts.append(f"{info.json_schema_extra['short']}{value}".replace(",", "_"))
    return "swap-" + "-".join(parts)


def reference(value: Any) -> str | None:
    """A model entry as mergekit's string form ``path[@rev][+lora]`` (None if malformed:
    mergekit takes a mapping only with a `model` key, one `+` and one `@` per part)."""
    if isinstance(value, dict):
        value = value.get("model")
        if isinstance(value, dict):
            path, revision = value.get("path"), value.get("revision")
            value = f"{path}@{revision}" if isinstance(path, str) and revision else path
    if not isinstance(value, str) or not value.strip() or value.count("+") > 1:
        return None
    return None if any(part.count("@") > 1 for part in value.split("+")) else value


def _changed(owner: Any, declared: dict, always: str = "") -> dict[str, Any]:
    """`owner`'s parameters of `declared` that differ from their defaults (and `always`)."""
    return {
        name: getattr(owner, name)
        for name, info in declared.items()
        if getattr(owner, name) != info.default or name == always
    }
