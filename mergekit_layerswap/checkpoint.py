"""What a checkpoint is, read without torch: its config and mergekit's architecture facts.

Used by validation (before any tensor is read) and by the merge method to learn a model's
layer count. mergekit's architecture definitions are read as the JSON data files they are,
so nothing here imports mergekit or torch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)\.")


class CheckpointError(ValueError):
    """A model reference that cannot be resolved or read."""


@dataclass(frozen=True)
class ArchitectureInfo:
    """The parts of a mergekit architecture definition layer swapping needs."""

    name: str
    num_layers_key: str
    pre_weights: tuple[str, ...]
    post_weights: tuple[str, ...]
    tied_head: str | None  # the head weight that may be tied to the embeddings


@dataclass(frozen=True)
class ModelInfo:
    """A model's identity and shape, from its config.json."""

    reference: str
    architecture: str
    num_layers: int
    hidden_size: int | None
    vocab_size: int | None
    tie_word_embeddings: bool
    dtype: str | None


@lru_cache(maxsize=1)
def architectures() -> dict[str, ArchitectureInfo]:
    """mergekit's single-stack architecture definitions, keyed by HF architecture class."""
    spec = importlib.util.find_spec("mergekit")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("mergekit is not installed: pip install mergekit==0.1.5")
    folder = Path(next(iter(spec.submodule_search_locations))) / "_data" / "architectures"
    found: dict[str, ArchitectureInfo] = {}
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if "layer_templates" not in data or "num_layers_config_key" not in data:
            continue  # multi-module definitions (vision towers, MoE partials)
        post = tuple(w["name"] for w in data.get("post_weights", []))
        tied = next((w["name"] for w in data.get("post_weights", []) if w.get("tied_names")), None)
        for arch in data["architectures"]:
            found.setdefault(
                arch,
                ArchitectureInfo(
                    name=arch,
                    num_layers_key=data["num_layers_config_key"],
                    pre_weights=tuple(w["name"] for w in data.get("pre_weights", [])),
                    post_weights=post,
                    tied_head=tied,
                ),
            )
    return found


@lru_cache(maxsize=1)
def _pre_weight_names() -> frozenset[str]:
    return frozenset(name for arch in architectures().values() for name in arch.pre_weights)


def tensor_position(name: str) -> int | str:
    """Where a tensor sits: its layer index, or ``"pre"`` (embeddings) / ``"post"``
    (final norm, head) for tensors outside the layer stack."""
    match = _LAYER_INDEX.search(name)
    if match:
        return int(match.group(1))
    return "pre" if name in _pre_weight_names() else "post"


def split_reference(reference: str) -> tuple[str, str | None]:
    """``"path@rev+lora"`` -> (path, revision) of the model part, as mergekit parses it."""
    model = reference.split("+", 1)[0]
    path, _, revision = model.partition("@")
    return path, revision or None


def looks_local(path: str) -> bool:
    """Paths (not Hub ids): anything existing, or starting with /, ~ or . (./, ../)."""
    return os.path.exists(path) or path.startswith(("/", "~", "."))


def model_folder(reference: str, patterns: tuple[str, ...] = ("config.json",)) -> Path:
    """A local model directory, or a Hub snapshot of the files matching `patterns`."""
    path, revision = split_reference(reference)
    if looks_local(path):
        local = Path(path).expanduser()
        if not local.is_dir():
            raise CheckpointError(f"{reference}: no such model directory ({local})")
        return local
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, revision=revision, allow_patterns=list(patterns)))
    except Exception as error:  # network, auth, missing repo: say which model
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"{reference}: not a local directory and could not be fetched from the "
            f"Hugging Face Hub ({message})"
        ) from None


def read_config(reference: str) -> dict:
    """config.json of a local directory or Hub model (Hub: fetched with huggingface_hub)."""
    config_file = model_folder(reference) / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{reference}: {config_file.parent} has no config.json")
    try:
        return json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{reference}: unreadable config.json ({error})") from None


def _text_config(config: dict) -> dict:
    """Multimodal configs keep the language model's settings under text_config."""
    return config.get("text_config") or config


@lru_cache(maxsize=64)
def model_info(reference: str) -> ModelInfo:
    """Identity and shape of a model, from its config.json (no tensors read)."""
    config = read_config(reference)
    names = config.get("architectures") or []
    if len(names) != 1:
        raise CheckpointError(
            f"{reference}: config.json must name exactly one architecture "
            f'(architectures: {names!r}); add e.g. "architectures": ["LlamaForCausalLM"]'
        )
    arch = architectures().get(names[0])
    if arch is None:
        raise CheckpointError(
            f"{reference}: architecture {names[0]} is not a single-stack model mergekit "
            "0.1.5 defines; layer_swap supports e.g. Llama, Mistral, Qwen2/3, Gemma 1-3"
        )
    text = _text_config(config)
    num_layers = text.get(arch.num_layers_key.split(".")[-1], config.get(arch.num_layers_key))
    if not isinstance(num_layers, int):
        raise CheckpointError(f"{reference}: config.json has no {arch.num_layers_key}")
    # transformers ties the head to the embeddings when the key is absent
    tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", True)))
    return ModelInfo(
        reference=reference,
        architecture=arch.name,
        num_layers=num_layers,
        hidden_size=text.get("hidden_size"),
        vocab_size=text.get("vocab_size"),
        tie_word_embeddings=tied,
        dtype=config.get("dtype") or config.get("torch_dtype"),
    )
