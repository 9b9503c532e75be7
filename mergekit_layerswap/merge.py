"""Run a mergekit config into a folder, all or nothing.

Before any work: the config (for `layer_swap`: every problem, from config.json files only),
the output path (a new or empty folder, not a symbolic link, not under a file) and the
options are checked, every problem at once. mergekit writes into a hidden sibling
`.NAME.partial-PID`, which also holds the merged LoRA donors (`model+adapter`) until the
merge ends unless `lora_merge_cache` names a folder for them; the folder is renamed into
place only once it is a complete model (`complete.problems`), with a card that names the
final folder. Partials of the same output name left by killed merges are removed.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from mergekit_layerswap import complete, validate
from mergekit_layerswap.complete import CARD_FILE, CONFIG_FILE
from mergekit_layerswap.errors import InputError, RunError

if TYPE_CHECKING:
    from mergekit.config import MergeConfiguration
    from mergekit.options import MergeOptions

#: Written into the output folder before it is renamed into place (see `run(metadata=...)`).
METADATA_FILE = "layerswap-merge.json"
#: Inside the partial folder: mergekit's cache of LoRA donors merged into their base models.
LORA_CACHE = ".lora-merged"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
#: MergeOptions a rerun needs to write the same model: the saved config's first line (the
#: `mergekit-yaml` command) repeats those that differ from mergekit's defaults.
_REPRODUCED = (
    "allow_crimes",
    "unsafe_truncate_embeddings",
    "trust_remote_code",
    "lora_merge_dtype",
    "out_shard_size",
    "copy_tokenizer",
    "clone_tensors",
    "random_seed",
)


def check_output(out_path: str | Path) -> Path:
    """The absolute output folder; InputError unless it is new or empty, not a symbolic
    link, and its nearest existing parent is a writable folder."""
    out = Path(os.path.abspath(out_path))
    if out.is_symlink():
        raise InputError(
            f"{out_path} is a symbolic link; give the folder it points to ({out.resolve()})"
        )
    if out.exists():
        if not out.is_dir():
            raise InputError(f"{out_path} exists and is not a folder; choose another output path")
        held = sorted(path.name for path in out.iterdir())
        if held:
            listed = ", ".join(held[:3]) + (", …" if len(held) > 3 else "")
            raise InputError(f"{out_path} is not empty (holds {listed}); choose a new folder")
    existing = next(p for p in out.parents if p.exists())
    if not existing.is_dir():
        raise InputError(f"{out_path}: {existing} is a file; choose an output path outside it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {existing}; choose a writable output folder")
    return out


def check(raw: dict, out_path: str | Path, options: MergeOptions | None = None) -> Path:
    """The output folder, once config, output path and options are valid (InputError lists
    every problem of all three)."""
    problems = validate.check(raw) if raw.get("merge_method") == validate.METHOD else []
    try:
        out = check_output(out_path)
    except InputError as error:
        problems.append(str(error))
    if options is not None and not options.safe_serialization:
        problems.append(
            "--no-safe-serialization: merge writes safetensors only (its completeness check "
            "reads their headers); use mergekit-yaml for .bin output"
        )
    if problems:
        raise InputError(problems)
    return out


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate it: keep every partial
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove `.OUT.partial-PID` folders beside `out` whose process is gone; return them."""
    pattern = re.compile(re.escape(f".{out.name}.partial-") + r"([0-9]+)")
    stale = []
    for path in out.parent.iterdir() if out.parent.is_dir() else ():
        match = pattern.fullmatch(path.name)
        if match and path.is_dir() and not path.is_symlink() and not _alive(int(match[1])):
            shutil.rmtree(path)
            stale.append(path)
    return stale


class _HeldErrors(logging.Filter):
    """Holds back the ERROR records of a logger: mergekit logs a failed tokenizer copy as an
    error (with a traceback) and carries on; the caller fails instead, or releases them."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        self.records.append(record)
        return False


@contextmanager
def _held_errors(name: str) -> Iterator[list[logging.LogRecord]]:
    held = _HeldErrors()
    logging.getLogger(name).addFilter(held)
    try:
        yield held.records
    finally:
        logging.getLogger(name).removeFilter(held)


def _disk_full(error: BaseException | None) -> bool:
    """Whether `error` (or what caused it) is a full disk or an exceeded quota."""
    while error is not None:
        if getattr(error, "errno", None) in _DISK_FULL or "No space left" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _expects_tokenizer(config: MergeConfiguration, options: MergeOptions) -> bool:
    """mergekit builds a tokenizer, or copies one from the donor model that has one."""
    from mergekit.common import ModelReference

    if config.tokenizer or config.tokenizer_source:
        return True
    if not options.copy_tokenizer:
        return False
    donor = config.base_model or config.referenced_models()[0]
    folder = Path(ModelReference(model=donor.model).local_path(options.transformers_cache))
    return any((folder / name).is_file() for name in complete.TOKENIZER_FILES)


def _finish(
    partial: Path,
    out: Path,
    config: MergeConfiguration,
    options: MergeOptions,
    source: str,
    logged: list[logging.LogRecord],
    card: bool,
) -> None:
    """Config, checks and (if `card`) the card on a merged `partial`; RunError if it is not
    complete."""
    import mergekit.merge

    shutil.rmtree(partial / LORA_CACHE, ignore_errors=True)
    expected = _expects_tokenizer(config, options)
    failed = [r for r in logged if expected or _disk_full(r.exc_info and r.exc_info[1])]
    if failed:
        error = failed[0].exc_info[1] if failed[0].exc_info else None
        if _disk_full(error):
            raise error  # mergekit logged it and went on
        what = failed[0].getMessage().split(".")[0]  # "Failed to copy tokenizer"
        raise RunError(f"mergekit: {what} ({error}); nothing was written")
    for record in logged:  # a donor without a tokenizer: mergekit's own error, as before
        logging.getLogger(record.name).handle(record)
    # the hooked generate_card: ours for layer_swap, mergekit's for other methods
    if card:
        text = mergekit.merge.generate_card(config=config, config_yaml=source, name=out.name)
        (partial / CARD_FILE).write_text(text, encoding="utf-8")
    (partial / CONFIG_FILE).write_text(source, encoding="utf-8")
    problems = complete.problems(partial, tokenizer=expected)
    if problems:
        raise RunError(f"the merge is incomplete ({'; '.join(problems)}); nothing was written")


def reproduce_command(options: MergeOptions) -> str:
    """The `mergekit-yaml` command that writes the same model from the saved config: the
    options in _REPRODUCED that differ from mergekit's defaults, spelled as mergekit does."""
    defaults = type(options)()
    flags = [f"mergekit-yaml {CONFIG_FILE} OUT"]
    for name in _REPRODUCED:
        value, flag = getattr(options, name), "--" + name.replace("_", "-")
        if value == getattr(defaults, name):
            continue
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        else:
            flags.append(f"{flag} {value}")
    return " ".join(flags)


def run(
    raw: dict,
    out_path: str | Path,
    options: MergeOptions | None = None,
    *,
    metadata: dict | None = None,
) -> Path:
    """Merge `raw` (a loaded mergekit config) into `out_path` atomically with mergekit's
    `options` (default: mergekit's defaults); returns the folder.

    InputError lists every problem of the config, the output path and the options, before
    any work; RunError says why a merge that ran left nothing (a full disk: "disk full").
    `options.write_model_card` writes our card, which names the final folder, not mergekit's.
    `metadata`, if given, is written to METADATA_FILE inside the folder before it appears.
    The saved mergekit_config.yml says how plain `mergekit-yaml` reproduces the merge.
    """
    out = check(raw, out_path, options)

    import mergekit.merge
    from mergekit.config import MergeConfiguration
    from mergekit.options import MergeOptions

    config = MergeConfiguration.model_validate(raw)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    options = options or MergeOptions()
    card = options.write_model_card
    options = options.model_copy(
        update={
            "lora_merge_cache": options.lora_merge_cache or str(partial / LORA_CACHE),
            "write_model_card": False,  # mergekit would name the card after the partial folder
        }
    )
    source = f"# reproduce: {reproduce_command(options)}\n" + yaml.safe_dump(raw, sort_keys=False)
    try:
        with _held_errors(mergekit.merge.__name__) as logged:
            mergekit.merge.run_merge(config, str(partial), options=options, config_source=source)
        _finish(partial, out, config, options, source, logged, card)
        if metadata is not None:
            (partial / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
        if out.exists():
            out.rmdir()  # the empty folder check_output accepted
        os.replace(partial, out)
    except Exception as error:
        if _disk_full(error):
            raise RunError(
                f"disk full while writing {out}; nothing was written: free space on "
                f"{out.parent} (the merge needs about the model's size) or choose another folder"
            ) from None
        raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out
