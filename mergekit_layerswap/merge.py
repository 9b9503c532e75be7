"""Run a mergekit config into a folder, all or nothing.

The config is checked first (for `layer_swap`: every problem, from config.json files only);
the output folder must not already hold a model; mergekit writes into a hidden sibling
folder that is renamed into place only once the model is complete, so an interrupted merge
never leaves a folder that looks like a finished model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from mergekit_layerswap import validate

MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")
#: Written into the output folder before it is renamed into place (see `run(metadata=...)`).
METADATA_FILE = "layerswap-merge.json"


class OutputError(ValueError):
    """The output folder cannot receive a model."""


def check_output(out_path: str | Path) -> Path:
    """Refuse an output folder that already holds a model or is not a folder."""
    out = Path(out_path)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder; choose another output path")
    held = [name for name in MODEL_FILES if (out / name).exists()]
    if held:
        raise OutputError(
            f"{out} already holds a model ({', '.join(held)}); choose another folder or delete it"
        )
    existing = next(p for p in out.resolve().parents if p.exists())
    if not os.access(existing, os.W_OK):
        raise OutputError(f"cannot write to {existing}; choose a writable output folder")
    return out


def run(
    raw: dict,
    out_path: str | Path,
    *,
    cuda: bool = False,
    copy_tokenizer: bool = True,
    quiet: bool = False,
    random_seed: int | None = None,
    metadata: dict | None = None,
) -> Path:
    """Merge `raw` (a loaded mergekit config) into `out_path` atomically; returns the folder.

    layer_swap configs are validated in full first (ConfigError lists every problem).
    `metadata`, if given, is written to METADATA_FILE inside the folder before it appears.
    The saved mergekit_config.yml says how plain `mergekit-yaml` reproduces the merge.
    """
    if raw.get("merge_method") == validate.METHOD:
        validate.plan(raw)
    out = check_output(out_path)

    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    # importing the hook registers layer_swap (and its checks) if the .pth did not
    from mergekit_layerswap import _hook  # noqa: F401

    config = MergeConfiguration.model_validate(raw)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    options = MergeOptions(
        cuda=cuda,
        copy_tokenizer=copy_tokenizer,
        quiet=quiet,
        random_seed=random_seed,
    )
    seed = f" --random-seed {random_seed}" if random_seed is not None else ""
    source = f"# reproduce: mergekit-yaml mergekit_config.yml OUT{seed}\n" + yaml.safe_dump(
        raw, sort_keys=False
    )
    try:
        run_merge(config, str(partial), options=options, config_source=source)
        if metadata is not None:
            (partial / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
        if out.exists():
            out.rmdir()  # an empty folder the user made for us (check_output saw no model)
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out
