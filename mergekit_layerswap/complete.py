"""Is a folder a complete model? Every reason it is not, read without torch.

One check for `merge` (nothing incomplete is renamed into place) and `push` (nothing
incomplete is uploaded): `config.json` is there, every top-level JSON file parses, the
safetensors index names shards that exist and hold the tensors it lists, every weight
file's header parses and its data is all there, and, when a tokenizer is expected,
`tokenizer.json` or `tokenizer.model` and `tokenizer_config.json` are there and parse.
`nonfinite` names the floating-point tensors that hold NaN or infinite values (`merge`
publishes none), read in chunks with numpy.
"""

from __future__ import annotations

import json
from pathlib import Path

from mergekit_layerswap.checkpoint import INDEX, Stored, read_header
from mergekit_layerswap.errors import InputError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
#: Each safetensors float dtype as unsigned integers, and its exponent bits: a value whose
#: exponent bits are all set is NaN or infinite.
_EXPONENT = {
    "F64": ("<u8", 0x7FF0000000000000),
    "F32": ("<u4", 0x7F800000),
    "BF16": ("<u2", 0x7F80),
    "F16": ("<u2", 0x7C00),
}
_CHUNK = 1 << 24  # bytes read at a time: a multiple of every item size
#: The mergekit config and the model card a merged folder holds beside the weights.
CONFIG_FILE = "mergekit_config.yml"
CARD_FILE = "README.md"


def _header(path: Path) -> tuple[dict, str | None]:
    """A safetensors file's tensors and why it is unusable (None when it is whole)."""
    try:
        return read_header(str(path)), None
    except InputError as error:
        return {}, str(error)


def _weight_problems(folder: Path) -> list[str]:
    """Shards, headers and the index agree; every byte of every tensor is there."""
    if not (folder / INDEX).is_file():
        weights = sorted(folder.glob("*.safetensors"))
        if not weights:
            return ["no weights: model.safetensors (or an index with shards) is missing"]
        return [problem for _, problem in map(_header, weights) if problem]
    try:
        weight_map = json.loads((folder / INDEX).read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError):
        return []  # reported by the JSON check, or below when the map is missing
    problems = []
    for shard in sorted(set(weight_map.values())):
        if not (folder / shard).is_file():
            problems.append(f"{shard} is listed in {INDEX} but missing")
            continue
        header, problem = _header(folder / shard)
        absent = sorted(n for n, s in weight_map.items() if s == shard and n not in header)
        problems += [problem] if problem else []
        if absent and not problem:
            problems.append(f"{shard} lacks {len(absent)} tensor(s) {INDEX} puts there")
    return problems


def _json_problems(folder: Path) -> list[str]:
    problems = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            problems.append(f"{path.name} does not parse as JSON (truncated?)")
            continue
        if path.name == INDEX and not isinstance(data.get("weight_map"), dict):
            problems.append(f"{INDEX} has no weight_map")
    return problems


def _sentencepiece_problem(path: Path) -> str | None:
    try:
        import sentencepiece
    except ImportError:  # transformers loads tokenizer.model without it only in some cases
        return None
    try:
        sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError):
        return "tokenizer.model does not load (sentencepiece; truncated?)"
    return None


def _tokenizer_problems(folder: Path) -> list[str]:
    problems = []
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        problems.append("no tokenizer: tokenizer.json or tokenizer.model is missing")
    elif (folder / "tokenizer.model").is_file():
        problems += filter(None, [_sentencepiece_problem(folder / "tokenizer.model")])
    if not (folder / "tokenizer_config.json").is_file():
        problems.append("tokenizer_config.json is missing")
    return problems


def problems(model_dir: str | Path, *, tokenizer: bool = True) -> list[str]:
    """Every reason the folder is not a complete model (empty if it is); `tokenizer`: one
    is expected."""
    folder = Path(model_dir)
    if not folder.is_dir():
        return [f"{folder}: no such folder"]
    found = [] if (folder / "config.json").is_file() else ["config.json is missing"]
    found += _json_problems(folder) + _weight_problems(folder)
    return found + (_tokenizer_problems(folder) if tokenizer else [])


def _finite(handle, item: Stored) -> bool:
    """Whether a stored float tensor holds no NaN and no infinity (read chunk by chunk)."""
    import numpy as np

    kind, mask = _EXPONENT[item.dtype]
    handle.seek(item.start)
    for start in range(item.start, item.end, _CHUNK):
        bits = np.frombuffer(handle.read(min(_CHUNK, item.end - start)), dtype=kind)
        if np.any((bits & mask) == mask):
            return False
    return True


def nonfinite(model_dir: str | Path) -> list[str]:
    """The floating-point tensors of a complete folder's safetensors files that hold NaN or
    infinite values, by name (empty if none)."""
    found = []
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        stored = sorted(read_header(str(path)).items(), key=lambda pair: pair[1].start)
        with open(path, "rb") as handle:
            found += [
                n for n, item in stored if item.dtype in _EXPONENT and not _finite(handle, item)
            ]
    return found
