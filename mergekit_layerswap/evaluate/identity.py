"""Model identity: what a cached score belongs to, computed cheaply.

A local directory is fingerprinted by its files: small ones (configs, tokenizer files, tiny
weights) by content, large ones (weight shards) by size, mtime and their first MiB, which holds
the safetensors header. A Hub id is pinned to the commit its revision resolves to.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import looks_local
from ..errors import InputError, first_line
from .online import HUB_OFFLINE, offline_switch, probe_failure

#: Files up to this size are hashed in full.
_SMALL_FILE = 16 << 20
#: Of larger files, this many leading bytes are hashed (with size and mtime).
_HEAD = 1 << 20


@dataclass(frozen=True)
class ModelIdentity:
    """A model as given on the command line, where it lives, and its fingerprint."""

    model: str
    source: str  # "local" or "hub"
    location: str  # absolute directory, or Hub id
    revision: str | None  # Hub commit; None for a local directory
    fingerprint: str  # sha256 hex

    @property
    def slug(self) -> str:
        """A short file-name-safe label, unique per fingerprint."""
        return f"{Path(self.location).name}-{self.fingerprint[:10]}"


def fingerprint_dir(
    directory: Path, *, recursive: bool = False, skip: tuple[Path, ...] = ()
) -> str:
    """sha256 over the directory's top-level files (hidden files and *.md excluded); with
    `recursive`, over every such file below it (named by relative path; hidden folders and
    `__pycache__` skipped), as for a task folder whose YAMLs and data decide scores. Files
    under a folder of `skip` (absolute: a run's own output folders) are left out."""
    digest = hashlib.sha256()
    paths = directory.rglob("*") if recursive else directory.iterdir()
    for path in sorted(paths):
        parts = path.relative_to(directory).parts
        if (
            not path.is_file()
            or any(path.absolute().is_relative_to(folder) for folder in skip)
            or any(part.startswith(".") or part == "__pycache__" for part in parts)
            or path.suffix == ".md"
        ):
            continue
        stat = path.stat()
        digest.update(f"{'/'.join(parts)}\0{stat.st_size}\0".encode())
        with path.open("rb") as handle:
            if stat.st_size <= _SMALL_FILE:
                digest.update(handle.read())
            else:
                digest.update(f"{stat.st_mtime_ns}\0".encode())
                digest.update(handle.read(_HEAD))
    return digest.hexdigest()


def resolve_model(model: str) -> ModelIdentity:
    """Identify a local model directory or a Hub id; raise InputError if it is neither.

    What counts as a path is `checkpoint.looks_local`; a path is never looked up on the Hub.
    """
    if looks_local(model):
        path = Path(model).expanduser()
        if not path.is_dir():
            raise InputError(f"model directory not found: {model}")
        if not (path / "config.json").is_file():
            raise InputError(f"not a model directory (no config.json): {model}")
        location = str(path.resolve())
        return ModelIdentity(model, "local", location, None, fingerprint_dir(path))
    if not offline_switch(HUB_OFFLINE) and (failure := probe_failure()):
        raise InputError(
            f"{model!r} is not a local folder and the Hugging Face Hub is unreachable "
            f"({failure}): give the model's folder, or set HF_HUB_OFFLINE=1 to use a cached copy"
        )
    revision = _hub_commit(model)
    fingerprint = hashlib.sha256(f"hub:{model}@{revision}".encode()).hexdigest()
    return ModelIdentity(model, "hub", model, revision, fingerprint)


def _hub_commit(repo_id: str) -> str:
    """The commit `main` of a Hub model resolves to (from the local cache when offline)."""
    from huggingface_hub import hf_hub_download

    try:
        config = hf_hub_download(repo_id, "config.json")
    except Exception as error:  # offline, unknown repo, gated, network: all the same to the user
        reason = first_line(error)
        raise InputError(
            f"{repo_id!r} is neither a local model directory nor a reachable Hugging Face Hub "
            f"model ({reason})"
        ) from error
    return Path(config).parent.name
