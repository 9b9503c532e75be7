"""Where a suite keeps its work, and how it knows what has finished.

A finished step is decided by a key (a hash of its configuration and inputs), never by a
folder existing: a merge is done when `merges/NAME/layerswap-merge.json` (written inside the
folder before it is renamed into place) holds its key; a score is done when
`results/NAME.json` (written to a temporary file, then renamed) holds the merge key and the
evaluation key. Killing a run at any moment therefore loses no finished result.

Every path the store deletes or writes is proven to lie inside its root first (names are
checked again, symlinks resolved), and one run at a time holds the root (`lock`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergekit_layerswap.errors import RunError
from mergekit_layerswap.files import hold, write_atomic
from mergekit_layerswap.merge import METADATA_FILE
from mergekit_layerswap.suite.schema import name_problem

LOCK_FILE = ".layerswap-suite.lock"

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def digest(*parts: Any) -> str:
    """A stable sha256 of JSON-serialisable parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=float))


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None when it is missing or does not read back as one
    (truncated, not UTF-8, not an object): a step whose record is unreadable is redone."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class Store:
    root: Path

    def _inside(self, folder: str, name: str, suffix: str = "") -> Path:
        """ROOT/folder/NAME+suffix, once proven to lie strictly inside ROOT/folder."""
        if (problem := name_problem(name, "name")) is not None:
            raise RunError(problem)
        path = self.root / folder / f"{name}{suffix}"
        parent = (self.root / folder).resolve()
        if path.resolve().parent != parent or not parent.is_relative_to(self.root.resolve()):
            raise RunError(f"{path} resolves outside {self.root}; refusing to touch it")
        return path

    def merge_dir(self, name: str) -> Path:
        return self._inside("merges", name)

    def result_path(self, name: str) -> Path:
        return self._inside("results", name, ".json")

    def eval_dir(self, name: str) -> Path:
        return self._inside("evals", name)

    def cache_dir(self) -> Path:
        """ROOT/cache, the evaluations' cache (not a link out of ROOT)."""
        return self._inside(".", "cache")

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold the output folder for this run (`files.hold`): a second run on it is an
        InputError naming the first one's pid."""
        return hold(self.root, LOCK_FILE, "suite run", "OUT_DIR")

    def merge_done(self, name: str, key: str) -> bool:
        """The merge with this key finished and its weights are still there."""
        marker = read_json(self.merge_dir(name) / METADATA_FILE)
        return bool(marker and marker.get("key") == key and self.has_weights(name))

    def has_weights(self, name: str) -> bool:
        folder = self.merge_dir(name)
        return folder.is_dir() and any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir())

    def clear_merge(self, name: str) -> None:
        """Remove a stale or foreign merge folder (it lives inside our output folder)."""
        shutil.rmtree(self.merge_dir(name), ignore_errors=True)

    def drop_weights(self, name: str) -> None:
        """keep_weights: false — delete the weight files once the model is scored."""
        for path in self.merge_dir(name).iterdir():
            if path.suffix in WEIGHT_SUFFIXES or path.name.endswith(".safetensors.index.json"):
                path.unlink()

    def result(self, name: str, merge_key: str, eval_key: str) -> dict | None:
        """The stored score of `name` if it belongs to these keys."""
        record = read_json(self.result_path(name))
        if record and record.get("key") == merge_key and record.get("eval_key") == eval_key:
            return record
        return None

    def write_result(self, key: str, eval_key: str, record: dict) -> None:
        """Store a finished score under the keys it belongs to."""
        write_json(self.result_path(record["name"]), {**record, "key": key, "eval_key": eval_key})
