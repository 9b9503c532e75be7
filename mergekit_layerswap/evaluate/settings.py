"""`EvalSettings`: everything that decides how models are scored (MGSM, or any lm-eval tasks),
validated on construction. One pydantic model for `eval`'s options, the suite's `evaluation:`
section and the lab; `InputError` (one line per problem) when a value is wrong."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import InputError
from ..flags import flag
from .mgsm import LANGUAGES, MAX_FEWSHOT, MODES, parse_languages


def parse_tasks(spec: str | Sequence[str]) -> tuple[str, ...]:
    """`"a,b"` or a sequence of lm-eval task or group names -> names, in order, no repeats."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return tuple(dict.fromkeys(str(item).strip() for item in items if str(item).strip()))


#: HF batch size when none is given: fastest of 16/32/64 on CPU. The requests are the same at
#: any batch size; padded batches may round a near-tied greedy token differently.
DEFAULT_HF_BATCH_SIZE = 64
#: lm-eval's own default generation length; shorter would cut chains of thought (and scores).
DEFAULT_MAX_GEN_TOKS = 256
#: The fields that can change a column's scores (batch size and device do not; which task and
#: task files a column comes from is keyed by `columns.TaskSet.key`).
_SCORING = ("mode", "num_fewshot", "limit", "max_gen_toks", "backend")


def _data_dir_from_env() -> Path | None:
    value = os.environ.get("MGSM_DATA_DIR")
    return Path(value) if value else None


def problems(error: ValidationError, section: str = "", as_flags: bool = False) -> list[str]:
    """A pydantic error as our lines: `section.field: message` (or `section: message` for
    a problem of several fields); with `as_flags`, `--field: message`, as the command line
    spells it."""
    lines = []
    for item in error.errors():
        loc = item["loc"]
        if as_flags and loc:
            loc = (flag(str(loc[0])), *loc[1:])
        where = ".".join(str(part) for part in (section, *loc) if part != "")
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key; remove it or check its spelling"
        lines.append(f"{where}: {message}" if where else message)
    return lines


class EvalSettings(BaseModel):
    """How to score models; the fields that change scores key the result cache.

    MGSM unless `tasks` names lm-eval tasks or groups (`"a,b"` or a sequence), which are then
    scored instead, found in `include_path` (a folder of task YAMLs), lm-eval's MGSM folder or
    else all of lm-eval's tasks; `languages`, `mode` and `data_dir` are MGSM's only, and no
    `languages` means all 11. Each field's description is `eval`'s help for its flag
    (`flags.add_flags`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    languages: tuple[str, ...] = Field(
        (), description='MGSM: comma-separated codes, e.g. "sw,te,bn,ja,en", or "all"'
    )
    mode: str = Field("native_cot", description=f"MGSM's prompt: {', '.join(MODES)}")
    num_fewshot: int | None = Field(
        None,
        description=f"exemplars (MGSM: 0-{MAX_FEWSHOT}, default 0; tasks: default each task's own)",
    )
    limit: PositiveInt | None = Field(None, description="only the first N problems per column")
    batch_size: int | str = Field(
        DEFAULT_HF_BATCH_SIZE,
        description=f"N or auto (default: {DEFAULT_HF_BATCH_SIZE} for hf, auto for vllm)",
    )
    max_gen_toks: PositiveInt = Field(
        DEFAULT_MAX_GEN_TOKS, description="tokens generated per answer, as many as lm-eval's"
    )
    backend: Literal["hf", "vllm"] = Field("hf", description="lm-eval's model backend")
    device: str | None = Field(None, description="cpu or cuda[:N] (default: cuda when available)")
    data_dir: Path | None = Field(
        default_factory=_data_dir_from_env,
        description="MGSM: a local copy laid out like juletxara/mgsm (default: $MGSM_DATA_DIR, "
        "else the Hub)",
    )
    log_samples: bool = Field(False, description="also write per-sample generations")
    tasks: tuple[str, ...] = Field(
        (), description="instead of MGSM: comma-separated lm-eval tasks or groups"
    )
    include_path: Path | None = Field(
        None, description="a folder of lm-eval task YAMLs (with --tasks)"
    )

    @classmethod
    def checked(cls, section: str = "", as_flags: bool = False, **values: Any) -> EvalSettings:
        """The settings, or InputError with one line per problem, each naming its field
        (under `section`, e.g. a suite file's `evaluation`), or its flag (`as_flags`)."""
        try:
            return cls(**values)
        except ValidationError as error:
            raise InputError(problems(error, section, as_flags)) from None

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, values: Any) -> Any:
        """Fill what depends on other settings: MGSM or tasks, the backend's batch size."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        given = values.get("tasks")
        values["tasks"] = parse_tasks(given or ())
        if not values["tasks"] and given is not None:  # "", ",", [], [" "]
            raise ValueError(f"tasks: {given!r} names no task; give lm-eval task or group names")
        if values["tasks"]:
            if values.get("languages"):
                raise ValueError("give languages (MGSM) or tasks, not both")
            values["languages"], values["data_dir"] = (), None  # MGSM's only
        else:
            if values.get("include_path") is not None:
                raise ValueError("include_path needs tasks: name the tasks to score in it")
            values["languages"] = parse_languages(values.get("languages") or LANGUAGES)
            values["num_fewshot"] = values.get("num_fewshot") or 0
        if values.get("batch_size") is None:
            hf = values.get("backend", "hf") == "hf"
            values["batch_size"] = DEFAULT_HF_BATCH_SIZE if hf else "auto"
        return values

    @field_validator("mode")
    @classmethod
    def _mode(cls, mode: str) -> str:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: choose from {', '.join(MODES)}")
        return mode

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, size: Any) -> int | str:
        if size == "auto" or (isinstance(size, int) and not isinstance(size, bool) and size >= 1):
            return size
        raise ValueError(f"batch size must be a positive integer or 'auto', not {size!r}")

    @field_validator("device")
    @classmethod
    def _device(cls, device: str | None) -> str | None:
        if device is not None and not (device == "cpu" or device.split(":")[0] == "cuda"):
            raise ValueError(f"unknown device {device!r}: choose cpu or cuda[:N]")
        return device

    @field_validator("data_dir", "include_path")
    @classmethod
    def _folder(cls, path: Path | None) -> Path | None:
        return None if path is None else path.expanduser().resolve()

    @model_validator(mode="after")
    def _fewshot(self) -> EvalSettings:
        top = MAX_FEWSHOT if self.is_mgsm else None
        if self.num_fewshot is not None and not 0 <= self.num_fewshot <= (top or self.num_fewshot):
            limit = f"0..{top} (MGSM has {top} exemplars)" if top else "at least 0"
            raise ValueError(f"num_fewshot must be {limit}")
        return self

    @property
    def is_mgsm(self) -> bool:
        """Whether MGSM is scored (no `tasks` named)."""
        return not self.tasks

    def scoring_key(self) -> dict[str, Any]:
        """The settings that can change a column's scores."""
        return {name: getattr(self, name) for name in _SCORING}

    def replace(self, **changes: Any) -> EvalSettings:
        """A validated copy with `changes` applied."""
        data = self.model_dump(exclude={"tasks"} if self.is_mgsm else set())
        return EvalSettings.checked(**{**data, **changes})

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON (`tasks` and `include_path` only when tasks are named)."""
        data = self.model_dump(mode="json")
        if not self.tasks:
            del data["tasks"], data["include_path"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalSettings:
        data = dict(data)
        if data.get("tasks"):
            data["languages"] = None
        return cls.checked(**data)

    def eval_arguments(self) -> list[str]:
        """`mergekit-layerswap eval`'s options that score as these settings do: what is
        scored (languages, or tasks and their folder), every field in `_SCORING` that is set
        (`mode` for MGSM only), and the batch size where it is not the backend's default
        (padded batches may round a near-tied token differently). The device, the MGSM data
        folder and sample logging are the machine's to choose."""
        languages = "all" if self.languages == LANGUAGES else self.languages
        what = {"languages": languages} if self.is_mgsm else {"tasks": self.tasks}
        if self.include_path is not None:
            what["include_path"] = self.include_path
        scoring = {name: getattr(self, name) for name in _SCORING}
        if not self.is_mgsm:
            del scoring["mode"]
        default_batch = DEFAULT_HF_BATCH_SIZE if self.backend == "hf" else "auto"
        if self.batch_size != default_batch:
            scoring["batch_size"] = self.batch_size
        arguments = []
        for name, value in {**what, **scoring}.items():
            if value is not None:
                text = ",".join(value) if isinstance(value, tuple) else str(value)
                arguments += ["--" + name.replace("_", "-"), text]
        return arguments


def eval_command(models: Sequence[str], settings: EvalSettings, output: str) -> str:
    """The `mergekit-layerswap eval` command line (shell-quoted) that scores `models` as
    `settings` do, into the folder `output`."""
    words = ["mergekit-layerswap", "eval", *models, *settings.eval_arguments()]
    return shlex.join([*words, "--output", output])
