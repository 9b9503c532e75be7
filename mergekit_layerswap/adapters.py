"""LoRA adapters of `model+adapter` references, checked before mergekit merges them into
their models with peft: from the adapter folder's adapter_config.json and safetensors
header and the model's headers, no tensor read, no torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from mergekit_layerswap import checkpoint, config_files
from mergekit_layerswap.checkpoint import Stored
from mergekit_layerswap.errors import InputError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PICKLE = "adapter_model.bin"
#: peft's names: `base_model.model.` + the module's name + the LoRA part (A: rank x inputs,
#: B: outputs x rank; for embeddings A: rank x vocabulary, B: width x rank).
_PREFIX = "base_model.model."
_LORA = re.compile(r"(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.weight)?")
#: which axis of the adapter tensor must equal which axis of the base weight
_AXES = {"lora_A": (1, 1), "lora_B": (0, 0), "lora_embedding_A": (1, 0), "lora_embedding_B": (0, 1)}


def check(reference: str, base: dict[str, Stored] | None) -> None:
    """InputError (one line) unless the LoRA adapter of `reference` (``model+adapter``; none:
    nothing to check) is a local peft adapter folder whose tensors fit the model's tensors
    `base` (None: pickled weights, shapes unknown). Hub adapters are left to peft."""
    _, plus, adapter = reference.partition("+")
    path = adapter.partition("@")[0]
    if not plus or not checkpoint.looks_local(path):
        return
    folder = Path(path)
    fix = "point to a folder a peft LoRA adapter was saved to (save_pretrained)"
    if not path or not folder.is_dir():
        raise InputError(f"LoRA adapter {adapter}: no such folder; {fix}")
    try:
        config = config_files.read_json(folder / CONFIG)
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or error
        raise InputError(f"LoRA adapter {adapter}: unreadable {CONFIG} ({reason}); {fix}") from None
    if not isinstance(config, dict):
        raise InputError(f"LoRA adapter {adapter}: {CONFIG} must hold a JSON object; {fix}")
    if not (folder / WEIGHTS).is_file():
        if (folder / PICKLE).is_file():
            return  # pickled: shapes unknown before loading
        raise InputError(f"LoRA adapter {adapter}: {folder} has no {WEIGHTS}; {fix}")
    try:
        tensors = checkpoint.read_header(str(folder / WEIGHTS))
    except InputError as error:
        raise InputError(f"LoRA adapter {adapter}: {error}") from None
    if not base:
        return
    transposed = bool(config.get("fan_in_fan_out"))
    problem = _fit(tensors, base, transposed) or _targets(config.get("target_modules"), base)
    if problem:
        raise InputError(
            f"LoRA adapter {adapter}: {problem}; use an adapter trained on this model "
            f"({reference.partition('+')[0]})"
        )


def problems(raw: dict) -> list[str]:
    """A line for every `model+adapter` reference of a mergekit config (`base_model`, any
    `model` entry) whose LoRA adapter `check` refuses; the model's headers are read where
    the model is local."""
    lines = []
    for field, reference in _references(raw):
        try:
            local = checkpoint.looks_local(checkpoint.split_reference(reference)[0])
            check(reference, checkpoint.model_tensors(reference) if local else None)
        except InputError as error:
            lines.append(f"{field}: {error}")
    return lines


def _references(value: object, field: str = "") -> Iterator[tuple[str, str]]:
    """(field, reference) of every `base_model` or `model` string naming an adapter."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{field}.{key}" if field else str(key)
            if key in ("base_model", "model") and isinstance(item, str):
                yield from [(where, item)] if "+" in item else []
            else:
                yield from _references(item, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _references(item, f"{field}[{i}]")


def _fit(tensors: dict[str, Stored], base: dict[str, Stored], transposed: bool) -> str | None:
    """Why the adapter's `tensors` do not fit the model's `base` tensors, or None (Conv1D
    weights, `transposed`, store inputs x outputs)."""
    for name, item in sorted(tensors.items()):
        local = name.removeprefix(_PREFIX)
        lora = _LORA.fullmatch(local)
        if lora is None:  # a whole module saved beside the adapter (modules_to_save)
            target = base.get(local)
            if target is not None and target.shape != item.shape:
                return f"{name} has shape {list(item.shape)}, the model's {list(target.shape)}"
            continue
        target = base.get(f"{lora[1]}.weight")
        if target is None:
            return f"{name} adapts {lora[1]}, which the model has no weight for"
        shape = (
            target.shape[::-1] if transposed and lora[2] in ("lora_A", "lora_B") else target.shape
        )
        mine, theirs = _AXES[lora[2]]
        if len(item.shape) != 2 or len(shape) != 2 or item.shape[mine] != shape[theirs]:
            return (
                f"{name} has shape {list(item.shape)}, which does not fit {lora[1]}.weight "
                f"of shape {list(target.shape)}"
            )
    return None


def _targets(targets: object, base: dict[str, Stored]) -> str | None:
    """Why a list of target_modules matches no module of the model (peft refuses it), or
    None (a regular expression is left to peft)."""
    if not isinstance(targets, list) or not targets:
        return None
    modules = {name.rsplit(".", 1)[0] for name in base}
    if any(m == t or m.endswith(f".{t}") for m in modules for t in targets):
        return None
    return f"target_modules {targets} name no module of the model"
