"""Which tensor is which: every tensor mergekit's architecture definition knows for a model,
with the figure cell it is counted in (a layer and parameter type such as ``q_proj``, or a
row of its own outside the layer stack: embeddings, final norm, head)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mergekit_layerswap.errors import InputError

if TYPE_CHECKING:
    from mergekit.architecture.base import WeightInfo


@dataclass(frozen=True)
class Role:
    """One tensor of the architecture and its figure cell (layer, parameter type)."""

    names: tuple[str, ...]  # the tensor's name, then its aliases
    layer: int | None  # None: outside the layer stack
    parameter: str  # parameter type; for tensors outside the stack, their row's name
    optional: bool = False


@dataclass(frozen=True)
class Layout:
    """A model's architecture (its config's class name), layer count and tensors."""

    architecture: str
    num_layers: int
    roles: tuple[Role, ...]  # embeddings, layer 0 ... layer n-1, final norm and head, others


def _short_labels(names: Sequence[str]) -> dict[str, str]:
    """The shortest dotted suffix that tells each name from the others, ``.weight`` dropped:
    ``model.layers.0.self_attn.q_proj.bias`` -> ``q_proj.bias`` beside ``q_proj``."""
    split = {}
    for name in dict.fromkeys(names):
        stem, _, last = name.rpartition(".")
        kind = last if stem and last in ("weight", "bias") else ""
        split[name] = (stem if kind else name).split("."), ".bias" if kind == "bias" else ""
    stems = {tuple(parts) for parts, _ in split.values()}
    labels = {}
    for name, (parts, tail) in split.items():
        for size in range(1, len(parts) + 1):
            label = parts[-size:]
            unique = all(
                tuple(other[-size:]) != tuple(label) or list(other) == parts for other in stems
            )
            if unique and not label[0].isdigit():
                break
        labels[name] = ".".join(label) + tail
    return labels


def _role(weight: WeightInfo, layer: int | None, parameter: str) -> Role:
    return Role((weight.name, *(weight.aliases or ())), layer, parameter, weight.optional)


def read_layout(name: str, model_dir: Path) -> Layout:
    """The tensors mergekit knows for the model in `model_dir`, each with its figure cell."""
    from mergekit.architecture import arch_info_for_config
    from mergekit.architecture.base import ConfiguredModuleArchitecture
    from transformers import AutoConfig

    if not (model_dir / "config.json").is_file():
        raise InputError(f"{name}: {model_dir} has no config.json")
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except Exception as error:  # unknown model_type, malformed JSON
        raise InputError(f"{name}: unreadable config.json ({error})") from None
    architectures = getattr(config, "architectures", None) or []
    if len(architectures) != 1:
        raise InputError(
            f"{name}: config.json must name exactly one architecture (got {architectures!r})"
        )
    info = arch_info_for_config(config)
    if info is None:
        raise InputError(f"{name}: mergekit 0.1.5 has no definition of {architectures[0]}")
    modules = {
        module: ConfiguredModuleArchitecture(
            info=definition.architecture, config=config, weight_prefix=definition.weight_prefix
        )
        for module, definition in info.modules.items()
    }
    # The layer stack: the language model (the module holding token embeddings or the head),
    # else the module with the most layers.
    main = max(
        modules,
        key=lambda m: (
            any(w.vocabulary_axis is not None for w in modules[m].all_weights()),
            modules[m].num_layers(),
        ),
    )
    stack = modules[main]
    in_layers: list[tuple[int, str, WeightInfo]] = []
    outside = stack.pre_weights()
    for index in range(stack.num_layers()):
        for weight in stack.layer_weights(index):
            parts = weight.name.split(".")
            if str(index) in parts:  # the name below the layer index is the parameter type
                in_layers.append((index, ".".join(parts[parts.index(str(index)) + 1 :]), weight))
            else:
                outside.append(weight)
    outside += stack.post_weights()
    types = _short_labels([parameter for _, parameter, _ in in_layers])
    rows = _short_labels([weight.name for weight in outside])
    pre = len(stack.pre_weights())
    roles = [_role(w, None, rows[w.name]) for w in outside[:pre]]
    roles += [_role(w, layer, types[parameter]) for layer, parameter, w in in_layers]
    roles += [_role(w, None, rows[w.name]) for w in outside[pre:]]
    for module, configured in modules.items():
        if module != main:
            roles += [_role(w, None, module) for w in configured.all_weights()]
    return Layout(architectures[0], stack.num_layers(), tuple(roles))
