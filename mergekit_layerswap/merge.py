"""Run a mergekit config into a folder, all or nothing.

Before any work: the config (for `layer_swap`: every problem, from config.json files only;
for any method: what mergekit's own schema refuses), the output path (a new or empty
folder, not a symbolic link, not under a file) and the options are checked, every problem
at once. mergekit writes into a hidden sibling
`.NAME.partial-PID` (inside the output folder, `.partial-PID`, when that exists already: it
may be a mount point, and nothing is written beside it), which also holds the merged LoRA
donors (`model+adapter`) until the merge ends unless `lora_merge_cache` names a folder for
them; the folder is renamed into place (its files moved into the existing folder, the
suite's completion marker last) only once it is a complete model (`complete.problems`)
whose weights are all finite (`complete.nonfinite`), with a card that names the final
folder. Partials of the same output left by killed merges are removed.
"""

from __future__ import annotations

import errno
import hashlib
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

from mergekit_layerswap import adapters, checkpoint, complete, mergekit_schema, validate
from mergekit_layerswap import card as layer_card
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
#: The partial folder's name inside an existing output folder, before the PID.
INSIDE = ".partial-"
#: Bytes of an output name kept in its sibling partial's name (file names hold 255 bytes).
_NAME_ROOM = 200
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
    link, and writable: the folder itself when it exists (it is written inside itself, its
    parent may be read-only), else its nearest existing parent."""
    out = Path(os.path.abspath(out_path))
    if out.is_symlink():
        raise InputError(
            f"{out_path} is a symbolic link; give the folder it points to ({out.resolve()})"
        )
    if out.exists():
        if not out.is_dir():
            raise InputError(f"{out_path} exists and is not a folder; choose another output path")
        stale = _stale(out, INSIDE)
        held = sorted(path.name for path in out.iterdir() if path not in stale)
        if held:
            listed = ", ".join(held[:3]) + (", …" if len(held) > 3 else "")
            raise InputError(f"{out_path} is not empty (holds {listed}); choose a new folder")
    existing = out if out.exists() else next(p for p in out.parents if p.exists())
    if not existing.is_dir():
        raise InputError(f"{out_path}: {existing} is a file; choose an output path outside it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {existing}; choose a writable output folder")
    return out


def review(raw: dict) -> tuple[validate.CheckedSwap | None, list[str]]:
    """The check of a config: for layer_swap, its checked swap (None if invalid) and every
    problem (`validate.merge_check`); for any other method, None and the fields mergekit's
    own schema refuses (`mergekit_schema`; imports torch) and LoRA adapters that do not fit
    their models (`adapters`)."""
    if raw.get("merge_method") == validate.METHOD:
        return validate.merge_check(raw)
    return None, mergekit_schema.check(raw) + adapters.problems(raw)


def config_problems(raw: dict) -> list[str]:
    """Every problem of a config, one line each (`review`)."""
    return review(raw)[1]


def _tokenizer_problems(raw: dict) -> list[str]:
    """A tokenizer source naming a local folder that is not there (mergekit would try it as
    a Hub id, and fail, after the whole merge)."""
    sources = {"tokenizer_source": raw.get("tokenizer_source")}
    if isinstance(raw.get("tokenizer"), dict):
        sources["tokenizer.source"] = raw["tokenizer"].get("source")
    problems = []
    for where, value in sources.items():
        if not isinstance(value, str) or value in ("union", "base"):
            continue
        path = checkpoint.split_reference(value)[0]
        if checkpoint.looks_local(path) and not Path(path).expanduser().is_dir():
            problems.append(
                f"{where}: {path} is not a folder (a local path is never tried as a Hub id); "
                "give the folder of a model with a tokenizer, a Hub id, base or union"
            )
    return problems


def check(
    raw: dict, out_path: str | Path, options: MergeOptions | None = None
) -> tuple[Path, validate.CheckedSwap | None]:
    """The output folder and (layer_swap) the checked swap, once config, output path and
    options are valid (InputError lists every problem of all three)."""
    checked, problems = review(raw)
    problems += _tokenizer_problems(raw)
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
    return out, checked


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


def _prefix(name: str) -> str:
    """`.NAME.partial-`; a NAME of more than _NAME_ROOM bytes is cut there and given a hash
    of the whole name, so that the partial's name stays a valid file name."""
    if len(name.encode()) > _NAME_ROOM:
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        name = name.encode()[: _NAME_ROOM - 17].decode(errors="ignore") + "-" + digest
    return f".{name}.partial-"


def partial_path(out: Path) -> Path:
    """The folder mergekit writes `out` into: inside `out` when it exists (an empty folder,
    maybe a mount point), else the hidden sibling `.NAME.partial-PID`."""
    if out.is_dir():
        return out / f"{INSIDE}{os.getpid()}"
    return out.parent / f"{_prefix(out.name)}{os.getpid()}"


def _stale(folder: Path, prefix: str) -> list[Path]:
    """The `PREFIX + PID` folders in `folder` whose process is gone."""
    pattern = re.compile(re.escape(prefix) + r"([0-9]+)")
    return [
        path
        for path in (folder.iterdir() if folder.is_dir() and not folder.is_symlink() else ())
        if (match := pattern.fullmatch(path.name))
        and path.is_dir()
        and not path.is_symlink()
        and not _alive(int(match[1]))
    ]


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove the partial folders of `out` (beside it, or inside it) whose process is gone;
    return them."""
    stale = _stale(out.parent, _prefix(out.name)) + _stale(out, INSIDE)
    for path in stale:
        shutil.rmtree(path)
    return stale


def _move_into(partial: Path, out: Path) -> None:
    """Move a finished partial inside `out` into place: its files, the completion marker
    (METADATA_FILE) last, so that a kill meanwhile never leaves a marked, incomplete model."""
    entries = sorted(partial.iterdir(), key=lambda path: path.name == METADATA_FILE)
    for path in entries:
        os.replace(path, out / path.name)
    partial.rmdir()


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
    checked: validate.CheckedSwap | None,
) -> None:
    """Config, checks and (if `card`) the card on a merged `partial` (ours for a `checked`
    layer_swap, else mergekit's); RunError if it is not complete."""
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
    if card and checked is not None:
        raw = yaml.safe_load(source)
        text = layer_card.render(raw, source, name=out.name, num_layers=checked.num_layers)
        (partial / CARD_FILE).write_text(text, encoding="utf-8")
    elif card:
        text = mergekit.merge.generate_card(config=config, config_yaml=source, name=out.name)
        (partial / CARD_FILE).write_text(text, encoding="utf-8")
    (partial / CONFIG_FILE).write_text(source, encoding="utf-8")
    problems = complete.problems(partial, tokenizer=expected)
    if problems:
        raise RunError(f"the merge is incomplete ({'; '.join(problems)}); nothing was written")
    broken = complete.nonfinite(partial)
    if broken:
        more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
        raise RunError(
            f"the merged model holds NaN or infinite values ({broken[0]}{more}); nothing was "
            "written: check the merge's weights and that the input models are finite"
        )


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
    out, checked = check(raw, out_path, options)

    import mergekit.merge
    from mergekit.config import MergeConfiguration
    from mergekit.options import MergeOptions

    from mergekit_layerswap import plugin

    plugin.install()
    if checked is None:
        config = MergeConfiguration.model_validate(raw)
    else:  # the planner takes this check rather than making its own
        config = plugin.configuration(raw, checked)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    partial = partial_path(out)
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
        _finish(partial, out, config, options, source, logged, card, checked)
        if metadata is not None:
            (partial / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
        if partial.parent == out:
            _move_into(partial, out)
        else:
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
