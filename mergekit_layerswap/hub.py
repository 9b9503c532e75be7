"""Publish a merged model to the Hugging Face Hub, only when the folder is a complete model.

`check_complete` names every missing piece (config, weights listed in the safetensors
index, unreadable shard headers, tokenizer, card) before anything is uploaded. The token
comes from huggingface_hub's usual places (HF_TOKEN, `hf auth login`) and is never printed
or written anywhere by this module.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class PushError(ValueError):
    """The folder is not ready to publish; str() lists what is missing."""


def _header_problem(path: Path) -> str | None:
    """Why a safetensors file's header does not parse (None if it does)."""
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > path.stat().st_size - 8:
                return f"{path.name}: header length {length} runs past the end of the file"
            header = json.loads(handle.read(length))
    except (OSError, struct.error, ValueError) as error:
        return f"{path.name}: unreadable safetensors header ({type(error).__name__})"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + length + end > path.stat().st_size:
        return f"{path.name}: truncated (tensors end at byte {8 + length + end})"
    return None


def check_complete(model_dir: str | Path) -> list[str]:
    """Every reason the folder is not a complete, publishable model (empty if it is)."""
    folder = Path(model_dir)
    if not folder.is_dir():
        return [f"{folder}: no such folder"]
    problems = []
    if not (folder / "config.json").is_file():
        problems.append("config.json is missing")
    if (folder / INDEX).is_file():
        try:
            shards = sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))
        except (ValueError, KeyError):
            shards = []
            problems.append(f"{INDEX} does not parse (no weight_map)")
        missing = [s for s in shards if not (folder / s).is_file()]
        problems += [f"{s} is listed in {INDEX} but missing" for s in missing]
        weights = [folder / s for s in shards if s not in missing]
    else:
        weights = sorted(folder.glob("*.safetensors"))
        if not weights:
            problems.append("no weights: model.safetensors (or an index with shards) is missing")
    problems += [p for p in map(_header_problem, weights) if p]
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        problems.append("no tokenizer: tokenizer.json or tokenizer.model is missing")
    if not (folder / "tokenizer_config.json").is_file():
        problems.append("tokenizer_config.json is missing")
    if not (folder / "README.md").is_file():
        problems.append("README.md (the model card) is missing: mergekit-layerswap card DIR")
    return problems


@dataclass(frozen=True)
class Upload:
    repo_id: str
    files: list[tuple[str, int]]  # (path in the repo, bytes)
    url: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def push(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    endpoint: str | None = None,
) -> Upload:
    """Create the repo if needed and upload the folder (or, with dry_run, only list it)."""
    folder = Path(model_dir)
    problems = check_complete(folder)
    if problems:
        raise PushError(f"{folder} is not a complete model: " + "; ".join(problems))
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PushError(f"--repo-id {repo_id!r}: write NAMESPACE/NAME")
    files = sorted(
        (str(p.relative_to(folder)), p.stat().st_size)
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if dry_run:
        return Upload(repo_id, files)
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        revision=revision,
        commit_message="Upload layer-swap merge (mergekit-layerswap)",
        ignore_patterns=[".*", "*/.*"],
    )
    return Upload(repo_id, files, url=getattr(commit, "commit_url", None) or str(commit))
