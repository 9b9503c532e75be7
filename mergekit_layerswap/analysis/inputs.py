"""Everything `analyze` checks before a tensor is read: the options, each model's
safetensors headers and config, and the tensors to stream, matched across the models.
Every problem is an InputError that names the model or option."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mergekit_layerswap.analysis.layout import Layout, Role, read_layout
from mergekit_layerswap.checkpoint import (
    FLOAT_DTYPES,
    Stored,
    looks_local,
    model_folder,
    model_tensors,
)
from mergekit_layerswap.errors import InputError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def parse_expert(spec: str) -> tuple[str, str]:
    """``"math=./math-expert"`` -> ``("math", "./math-expert")``."""
    name, sep, reference = spec.partition("=")
    if not sep or not name or not reference:
        raise InputError(f"--expert takes NAME=MODEL, got {spec!r}")
    return name, reference


def check_options(names: Sequence[str], host: str | None, donor: str | None, ratio: float) -> None:
    """The expert names (they name output files), --host/--donor and --ratio."""
    if not names:
        raise InputError("give at least one --expert NAME=MODEL")
    for name in names:
        if not _NAME.match(name):
            raise InputError(
                f"expert name {name!r} may hold only letters, digits, '_', '-' and '.' "
                "(it names output files)"
            )
        if names.count(name) > 1:
            raise InputError(f"expert {name!r} is given twice; give each expert once")
    if (host is None) != (donor is None):
        raise InputError("give --host and --donor together (or neither)")
    for option, name in (("--host", host), ("--donor", donor)):
        if name is not None and name not in names:
            raise InputError(f"{option} {name!r} is not among the experts ({', '.join(names)})")
    if host is not None and host == donor:
        raise InputError("--host and --donor must be two different experts")
    if not ratio > 0:
        raise InputError(f"--ratio must be positive, got {ratio}")


@dataclass(frozen=True)
class Model:
    """A model under analysis: its name in the outputs, the reference as the user gave it,
    its local folder (a Hub snapshot for Hub ids) and its tensors (safetensors headers)."""

    name: str
    reference: str
    folder: Path
    tensors: dict[str, Stored]

    @property
    def merge_reference(self) -> str:
        """How a mergekit config names this model: its absolute path, or the Hub id."""
        return str(self.folder.resolve()) if looks_local(self.reference) else self.reference

    def nbytes(self, key: str) -> int:
        stored = self.tensors[key]
        return stored.end - stored.start

    def dtype(self, keys: Sequence[str]) -> str:
        """The storage dtype of most of the bytes of `keys`, in mergekit's spelling."""
        sizes: dict[str, int] = {}
        for key in keys:
            dtype = self.tensors[key].dtype
            sizes[dtype] = sizes.get(dtype, 0) + self.nbytes(key)
        return FLOAT_DTYPES[max(sizes, key=sizes.__getitem__)][0]


def read_model(name: str, reference: str) -> Model:
    """Resolve `reference` (a local folder, or a Hub snapshot of its safetensors and JSON
    files) and read its safetensors headers, sharded or single-file. A LoRA adapter
    (`MODEL+ADAPTER`) is refused: its change is not in the model's weights."""
    if "+" in reference and not Path(reference).expanduser().exists():
        raise InputError(
            f"{name}: {reference} adds a LoRA adapter (+{reference.partition('+')[2]}), which "
            "analyze does not apply; merge it into the model first (e.g. peft's "
            "merge_and_unload) and give that folder"
        )
    try:
        folder = model_folder(reference, ("*.safetensors", "*.json"))
        tensors = model_tensors(str(folder))
    except InputError as error:
        raise InputError(f"{name}: {error}") from None
    if tensors is None:
        raise InputError(
            f"{name}: {folder} holds pickled (.bin) weights; analyze reads safetensors "
            "(re-save the model with safe_serialization=True)"
        )
    return Model(name, reference, folder, tensors)


def load_models(base: str, experts: Sequence[tuple[str, str]]) -> tuple[list[Model], Layout]:
    """Read every model's headers and config (the base first); check they have the same
    architecture and number of layers and that no expert is given twice under two names."""
    models = [read_model("base", base)]
    seen: dict[Path, str] = {}
    for name, reference in experts:
        model = read_model(name, reference)
        where = model.folder.resolve()
        if where in seen:
            raise InputError(f"experts {seen[where]!r} and {name!r} are the same model ({where})")
        seen[where] = name
        models.append(model)
    layout = read_layout("base", models[0].folder)
    for model in models[1:]:
        other = read_layout(model.name, model.folder)
        if other.architecture != layout.architecture:
            raise InputError(
                f"expert {model.name!r} is a {other.architecture}, the base a "
                f"{layout.architecture}; an expert must be a fine-tune of the base"
            )
        layers = other.num_layers
        if layers != layout.num_layers:
            raise InputError(
                f"expert {model.name!r} has {layers} layers, the base has {layout.num_layers}"
            )
    return models, layout


@dataclass(frozen=True)
class Item:
    """One tensor to stream: its role, its name in the base then in each expert, its shape."""

    role: Role
    keys: tuple[str, ...]
    shape: tuple[int, ...]


def _find(model: Model, role: Role) -> str | None:
    return next((n for n in role.names if n in model.tensors), None)


def plan(base: Model, experts: Sequence[Model], layout: Layout) -> list[Item]:
    """Match every architecture tensor across the models; raise on any mismatch."""
    items = []
    for role in layout.roles:
        key = _find(base, role)
        if key is None:
            if role.optional:
                continue  # e.g. a head tied to the embeddings
            raise InputError(
                f"base: lacks tensor {role.names[0]}, which mergekit's "
                f"{layout.architecture} definition requires"
            )
        shape = base.tensors[key].shape
        keys = [key]
        for expert in experts:
            other = _find(expert, role)
            if other is None:
                raise InputError(
                    f"expert {expert.name!r}: lacks tensor {role.names[0]}, which the base has"
                )
            if expert.tensors[other].shape != shape:
                raise InputError(
                    f"expert {expert.name!r}: tensor {other} has shape "
                    f"{list(expert.tensors[other].shape)}, the base's is {list(shape)}"
                )
            keys.append(other)
        for model, name in zip((base, *experts), keys, strict=True):
            if model.tensors[name].dtype not in FLOAT_DTYPES:
                raise InputError(
                    f"{model.name}: tensor {name} is {model.tensors[name].dtype}; "
                    "analyze reads bf16, fp16, fp32 and fp64 weights"
                )
        items.append(Item(role, tuple(keys), shape))
    return items
