"""Is a folder a complete model? Every reason it is not, read without torch.

One check for `merge` (nothing incomplete is renamed into place) and `push` (nothing
incomplete is uploaded): `config.json` is there, every top-level JSON file parses, the
safetensors index names shards that exist and hold the tensors it lists, every weight
file's header parses and its data is all there, and, when a tokenizer is expected,
`tokenizer.json` or `tokenizer.model` and `tokenizer_config.json` are there and parse.
"""

from __future__ import annotations

import json
from pathlib import Path

from mergekit_layerswap.checkpoint import INDEX, read_header
from mergekit_layerswap.errors import InputError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
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
