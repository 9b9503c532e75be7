"""What a checkpoint is, read without torch: its config, its tensors' shapes (safetensors
headers) and mergekit's architecture facts.

Used by validation (before any tensor is read), by the merge method to learn a model's
layer count and by the streamed writer to find tensors' bytes. mergekit's architecture
definitions are read as the JSON data files they are, so nothing here imports mergekit or
torch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from mergekit_layerswap import config_files, hf_defaults
from mergekit_layerswap.errors import InputError, first_line

_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)\.")
#: config.json fields that decide tensor shapes; a donor must match the host's.
SHAPE_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "vocab_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "moe_intermediate_size",
    "num_local_experts",
    "num_experts",
)
#: The weight files mergekit 0.1.5 looks for, in its order (ShardedTensorIndex.from_disk).
SAFETENSORS = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLE = "pytorch_model.bin"
#: The floating-point safetensors dtypes a merge reads and writes: name -> (the name torch
#: and mergekit give it, bytes per element). The one dtype table of the package.
FLOAT_DTYPES = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "BF16": ("bfloat16", 2),
    "F16": ("float16", 2),
}
#: Bits per element of every safetensors dtype (the float ones from FLOAT_DTYPES).
DTYPE_BITS = {
    **{name: 8 * size for name, (_, size) in FLOAT_DTYPES.items()},
    **dict.fromkeys(("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0"), 8),
    **dict.fromkeys(("I16", "U16"), 16),
    **dict.fromkeys(("I32", "U32"), 32),
    **dict.fromkeys(("I64", "U64", "C64"), 64),
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}
#: safetensors refuses larger headers (MAX_HEADER_SIZE).
_MAX_HEADER = 100_000_000
#: Architectures mergekit 0.1.5 defines in Python (mergekit.architecture.moe_defs) on top
#: of a JSON definition: the JSON's layer count key and outer weights are theirs.
_BUILT_ON = {"AfmoeForCausalLM": "_AfmoePartialForCausalLM"}
#: Weights mergekit 0.1.5 lists on the wrong side of the layers: transformers' LFM2 applies
#: `embedding_norm` after the last layer (it is the final norm), its lfm2.json lists it first.
_MISPLACED = {"model.embedding_norm.weight": "post"}
#: What a Hugging Face Hub model id looks like: `name` or `namespace/name`.
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


@dataclass(frozen=True)
class ArchitectureInfo:
    """The parts of a mergekit architecture definition layer swapping needs."""

    name: str
    model_type: str | None
    num_layers_key: str
    #: the names (and aliases) of the weights before and after the layers
    pre_weights: tuple[str, ...]
    post_weights: tuple[str, ...]


@dataclass(frozen=True)
class ModelInfo:
    """A model's identity and shape, from its config.json."""

    architecture: str
    num_layers: int
    tie_word_embeddings: bool
    #: the config.json fields that shape tensors (SHAPE_FIELDS), where the config sets them
    shape: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Stored:
    """Where a tensor's bytes lie in a safetensors file (from its header)."""

    path: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offsets
    end: int


@lru_cache(maxsize=1)
def _definitions() -> tuple[ArchitectureInfo, ...]:
    """Every single-stack architecture definition mergekit ships, once per architecture
    class it names, in file order."""
    spec = importlib.util.find_spec("mergekit")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("mergekit is not installed: pip install mergekit==0.1.5")
    folder = Path(next(iter(spec.submodule_search_locations))) / "_data" / "architectures"
    found = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if "layer_templates" not in data or "num_layers_config_key" not in data:
            continue  # multi-module definitions (vision towers, MoE partials)
        found += [
            ArchitectureInfo(
                name=arch,
                model_type=data.get("model_type"),
                num_layers_key=data["num_layers_config_key"],
                pre_weights=_names(data.get("pre_weights", [])),
                post_weights=_names(data.get("post_weights", [])),
            )
            for arch in data["architectures"]
        ]
    return tuple(found)


def definition(architecture: str, model_type: str | None) -> ArchitectureInfo | None:
    """mergekit's definition of an HF architecture class; where several files define it
    (Phi), the one for this `model_type`, as mergekit picks it."""
    built_on = _BUILT_ON.get(architecture, architecture)
    found = [arch for arch in _definitions() if arch.name == built_on]
    chosen = next((arch for arch in found if arch.model_type == model_type), None)
    chosen = chosen or next(iter(found), None)
    return None if chosen is None else replace(chosen, name=architecture)


def _names(weights: list[dict]) -> tuple[str, ...]:
    return tuple(n for w in weights for n in (w["name"], *w.get("aliases", ())))


@lru_cache(maxsize=1)
def _outer_places() -> dict[str, str]:
    """Every name a mergekit definition gives a weight outside the layers -> "pre"/"post"."""
    places = {}
    for arch in _definitions():
        places |= dict.fromkeys(arch.post_weights, "post") | dict.fromkeys(arch.pre_weights, "pre")
    return places | _MISPLACED


def outer_place(name: str) -> str | None:
    """``"pre"`` or ``"post"`` where some mergekit definition names `name` as a weight before
    or after the layers (`_MISPLACED` corrected); None where none does."""
    return _outer_places().get(name)


def tensor_position(name: str) -> int | str:
    """Where a tensor sits: its layer index, or ``"pre"`` (embeddings) / ``"post"``
    (final norm, head, and any other name outside the layers) for the rest."""
    match = _LAYER_INDEX.search(name)
    if match:
        return int(match.group(1))
    return "pre" if outer_place(name) == "pre" else "post"


def split_reference(reference: str) -> tuple[str, str | None]:
    """``"path@rev+lora"`` -> (path, revision) of the model part, as mergekit parses it."""
    model = reference.split("+", 1)[0]
    path, _, revision = model.partition("@")
    return path, revision or None


def looks_local(path: str) -> bool:
    """A local path, never to be looked up on the Hub: anything that exists; anything starting
    with /, ~ or . (./, ../); anything not shaped like a Hub id (`name` or `namespace/name`:
    letters, digits, `_.-`), such as `a/b/c` or `C:\\x`; and `folder/name` where `folder` exists
    here (a typo inside a local folder is not a Hub id)."""
    return (
        os.path.exists(path)
        or path.startswith(("/", "~", "."))
        or not _HUB_ID.fullmatch(path)
        or ("/" in path and os.path.isdir(path.split("/", 1)[0]))
    )


def identity(reference: str) -> str:
    """What a reference points to: a local folder's resolved path (so `./A`, an absolute
    path and a symlink to it are one model), or the Hub id as written."""
    path, _ = split_reference(reference)
    return str(Path(path).resolve()) if looks_local(path) else reference


def model_folder(reference: str, patterns: tuple[str, ...] = ("config.json",)) -> Path:
    """A local model directory, or a Hub snapshot of the files matching `patterns`."""
    path, revision = split_reference(reference)
    if looks_local(path):
        local = Path(path).expanduser()
        if not local.is_dir():
            raise InputError(f"{reference}: no such model directory ({local})")
        return local
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, revision=revision, allow_patterns=list(patterns)))
    except Exception as error:  # network, auth, missing repo: say which model
        raise InputError(
            f"{reference}: not a local directory and could not be fetched from the "
            f"Hugging Face Hub ({first_line(error)})"
        ) from None


def read_config(reference: str) -> dict:
    """config.json of a local directory or Hub model (Hub: fetched with huggingface_hub)."""
    config_file = model_folder(reference) / "config.json"
    if not config_file.is_file():
        raise InputError(f"{reference}: {config_file.parent} has no config.json")
    try:
        config = config_files.read_json(config_file)
    except (OSError, ValueError) as error:  # ValueError: bad JSON or not UTF-8
        message = str(error).splitlines()[0]
        raise InputError(
            f"{reference}: unreadable config.json ({message}); re-download or re-save the model"
        ) from None
    if not isinstance(config, dict) or not isinstance(text_config(config), dict):
        raise InputError(
            f"{reference}: config.json must hold a JSON object (got {type(config).__name__}); "
            "re-download or re-save the model"
        )
    return config


def text_config(config: dict) -> dict:
    """Multimodal configs keep the language model's settings under text_config."""
    return config.get("text_config") or config


@lru_cache(maxsize=64)
def model_info(reference: str) -> ModelInfo:
    """Identity and shape of a model, from its config.json (no tensors read)."""
    config = read_config(reference)
    names = config.get("architectures") or []
    if len(names) != 1:
        raise InputError(
            f"{reference}: config.json must name exactly one architecture "
            f'(architectures: {names!r}); add e.g. "architectures": ["LlamaForCausalLM"]'
        )
    arch = definition(names[0], config.get("model_type"))
    if arch is None:
        raise InputError(
            f"{reference}: architecture {names[0]} is not a single-stack model mergekit "
            "0.1.5 defines; layer_swap swaps the layers of those (README, Architectures "
            "tested)"
        )
    text = text_config(config)
    num_layers = text.get(arch.num_layers_key.split(".")[-1], config.get(arch.num_layers_key))
    if not isinstance(num_layers, int):
        raise InputError(f"{reference}: config.json has no {arch.num_layers_key}")
    setting = [c["tie_word_embeddings"] for c in (config, text) if "tie_word_embeddings" in c]
    tied = bool(setting[0]) if setting else hf_defaults.tied(config.get("model_type"))
    return ModelInfo(
        architecture=arch.name,
        num_layers=num_layers,
        tie_word_embeddings=tied,
        shape=tuple((key, text[key]) for key in SHAPE_FIELDS if text.get(key) is not None),
    )


def read_header(path: str) -> dict[str, Stored]:
    """Every tensor of one safetensors file, from its header alone; InputError (one line)
    unless the file is complete as safetensors requires it: tensors laid end to end from
    the header on, each as long as its dtype and shape say, the last ending the file."""
    problem = "re-download or re-save the model"
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > min(size - 8, _MAX_HEADER):
                raise ValueError(f"its header length {length} runs past the end of the file")
            header = json.loads(handle.read(length))
        base, stored = 8 + length, {}
        for name, info in header.items():
            if name != "__metadata__":
                start, end = (base + int(offset) for offset in info["data_offsets"])
                stored[name] = Stored(path, info["dtype"], tuple(info["shape"]), start, end)
    except (OSError, struct.error, ValueError, KeyError, TypeError, AttributeError) as error:
        reason = first_line(error)
        raise InputError(f"{path}: not a readable safetensors file ({reason}); {problem}") from None
    reason = _layout_problem(stored, base, size)
    if reason:
        raise InputError(f"{path}: {reason}; {problem}")
    return stored


def _layout_problem(stored: dict[str, Stored], base: int, size: int) -> str | None:
    """Why tensors starting at byte `base` of a file of `size` bytes are not laid out as
    safetensors reads them, or None."""
    end = base
    for name, item in sorted(stored.items(), key=lambda pair: (pair[1].start, pair[1].end)):
        if item.dtype not in DTYPE_BITS:
            return f"tensor {name} has an unknown dtype {item.dtype!r}"
        if not all(isinstance(dim, int) and dim >= 0 for dim in item.shape):
            return f"tensor {name} has shape {list(item.shape)}, not a list of sizes"
        count = 1
        for dim in item.shape:
            count *= dim
        length = count * DTYPE_BITS[item.dtype] // 8
        if item.start != end or item.end - item.start != length:
            return (
                f"tensor {name} lies at bytes {item.start}-{item.end}, but a {item.dtype} "
                f"tensor of shape {list(item.shape)} takes {length} bytes from byte {end}"
            )
        end = item.end
    if end > size:
        return f"truncated (its tensors end at byte {end}, the file has {size})"
    if end < size:
        return f"{size - end} bytes follow its last tensor (at byte {end})"
    return None


def model_tensors(reference: str) -> dict[str, Stored] | None:
    """Every tensor of a model's safetensors weights, from headers only (no tensor read),
    found as mergekit finds them; None for pickled (.bin) weights, whose shapes cannot be
    read without loading them. InputError names a missing shard or unreadable file."""
    path, revision = split_reference(reference)
    if not looks_local(path):
        return _hub_tensors(reference, path, revision)
    folder = model_folder(reference)
    if (folder / INDEX).is_file():
        try:
            weight_map = config_files.read_json(folder / INDEX)["weight_map"]
            shards = sorted(set(weight_map.values()))
            if not all(isinstance(shard, str) for shard in shards):
                raise TypeError("its weight_map must map tensor names to file names")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise InputError(
                f"{folder / INDEX}: unreadable index ({error}); re-download or re-save the model"
            ) from None
        missing = [shard for shard in shards if not (folder / shard).is_file()]
        if missing:
            raise InputError(
                f"{reference}: shard {missing[0]} named in {INDEX} is missing "
                f"({len(missing)} of {len(shards)} missing); re-download the model"
            )
        headers = {shard: read_header(str(folder / shard)) for shard in shards}
        wrong = [name for name, shard in weight_map.items() if name not in headers[shard]]
        if wrong:
            raise InputError(
                f"{reference}: {INDEX} puts tensor {wrong[0]} in {weight_map[wrong[0]]}, which "
                f"does not hold it ({len(wrong)} of {len(weight_map)} entries wrong); "
                "re-download the model or rebuild its index"
            )
        return {name: headers[shard][name] for name, shard in weight_map.items()}
    if (folder / SAFETENSORS).is_file():
        return read_header(str(folder / SAFETENSORS))
    if (folder / PICKLE).is_file() or (folder / f"{PICKLE}.index.json").is_file():
        return None
    raise InputError(
        f"{reference}: {folder} has no {SAFETENSORS}, {INDEX} or {PICKLE}; "
        "point to a folder holding the model's weights"
    )


def _hub_tensors(reference: str, repo: str, revision: str | None) -> dict[str, Stored] | None:
    """A Hub model's tensors from its safetensors headers (fetched without the weights)."""
    from huggingface_hub import get_safetensors_metadata
    from huggingface_hub.errors import NotASafetensorsRepoError

    try:
        metadata = get_safetensors_metadata(repo, revision=revision)
    except NotASafetensorsRepoError:
        return None
    except Exception as error:  # network, auth, missing repo: say which model
        raise InputError(
            f"{reference}: cannot read its safetensors headers from the "
            f"Hugging Face Hub ({first_line(error)})"
        ) from None
    return {
        name: Stored(f"{repo}/{file}", info.dtype, tuple(info.shape), *info.data_offsets)
        for file, shard in metadata.files_metadata.items()
        for name, info in shard.tensors.items()
    }
