"""`EvalSettings`: everything that decides how models are scored (MGSM, or any lm-eval tasks),
validated on construction."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .tasks import LANGUAGES, MAX_FEWSHOT, MODES, parse_languages


def parse_tasks(spec: str | Sequence[str]) -> tuple[str, ...]:
    """`"a,b"` or a sequence of lm-eval task or group names -> names, in order, no repeats."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return tuple(dict.fromkeys(str(item).strip() for item in items if str(item).strip()))


BACKENDS = ("hf", "vllm")
#: HF batch size when none is given: fastest of 16/32/64 on CPU. The requests are the same at
#: any batch size; padded batches may round a near-tied greedy token differently.
DEFAULT_HF_BATCH_SIZE = 64
#: lm-eval's own default generation length; shorter would cut chains of thought (and scores).
DEFAULT_MAX_GEN_TOKS = 256


def _data_dir_from_env() -> Path | None:
    value = os.environ.get("MGSM_DATA_DIR")
    return Path(value) if value else None


@dataclass(frozen=True)
class EvalSettings:
    """How to score models; the fields that change scores key the result cache.

    MGSM unless `tasks` names lm-eval tasks or groups (`"a,b"` or a sequence), which are then
    scored instead, found in `include_path` (a folder of task YAMLs), lm-eval's MGSM folder or
    else all of lm-eval's tasks; `languages`, `mode` and `data_dir` are MGSM's only.
    `languages=None` means all 11 (also `"all"` or `"sw,te"`); `num_fewshot=None` means 0 for
    MGSM and each task's own setting otherwise; `batch_size=None` means 64 for `hf` and
    `"auto"` for `vllm`; `device=None` means CUDA when available; `data_dir=None` means the
    `MGSM_DATA_DIR` environment variable, or the Hub dataset when that is unset too.
    """

    languages: tuple[str, ...] | None = None
    mode: str = "native_cot"
    num_fewshot: int | None = None
    limit: int | None = None
    batch_size: int | str | None = None
    max_gen_toks: int = DEFAULT_MAX_GEN_TOKS
    backend: str = "hf"
    device: str | None = None
    data_dir: Path | None = field(default_factory=_data_dir_from_env)
    log_samples: bool = False
    tasks: tuple[str, ...] = ()
    include_path: Path | None = None

    def __post_init__(self) -> None:
        def fix(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        fix("tasks", parse_tasks(self.tasks))
        if self.tasks:
            if self.languages:
                raise InputError("give languages (MGSM) or tasks, not both")
            fix("languages", ())
            fix("data_dir", None)  # MGSM's only (it may come from MGSM_DATA_DIR)
            if self.num_fewshot is not None and self.num_fewshot < 0:
                raise InputError("num_fewshot must be at least 0")
        else:
            if self.include_path is not None:
                raise InputError("include_path needs tasks: name the tasks to score in it")
            fix("languages", parse_languages(self.languages or LANGUAGES))
            fix("num_fewshot", 0 if self.num_fewshot is None else self.num_fewshot)
            if not 0 <= self.num_fewshot <= MAX_FEWSHOT:
                raise InputError(f"num_fewshot must be 0..{MAX_FEWSHOT} (MGSM has 8 exemplars)")
        if self.mode not in MODES:
            raise InputError(f"unknown mode {self.mode!r}: choose from {', '.join(MODES)}")
        if self.limit is not None and self.limit < 1:
            raise InputError("limit must be at least 1")
        if self.max_gen_toks < 1:
            raise InputError("max_gen_toks must be at least 1")
        if self.backend not in BACKENDS:
            raise InputError(f"unknown backend {self.backend!r}: choose from hf, vllm")
        if self.batch_size is None:
            fix("batch_size", DEFAULT_HF_BATCH_SIZE if self.backend == "hf" else "auto")
        if self.batch_size != "auto" and not (
            isinstance(self.batch_size, int) and self.batch_size >= 1
        ):
            raise InputError(
                f"batch size must be a positive integer or 'auto', not {self.batch_size!r}"
            )
        if self.device is not None and not (
            self.device == "cpu" or self.device.split(":")[0] == "cuda"
        ):
            raise InputError(f"unknown device {self.device!r}: choose cpu or cuda[:N]")
        for name in ("data_dir", "include_path"):
            if getattr(self, name) is not None:
                fix(name, Path(getattr(self, name)).expanduser().resolve())

    @property
    def is_mgsm(self) -> bool:
        """Whether MGSM is scored (no `tasks` named)."""
        return not self.tasks

    def scoring_key(self) -> dict[str, Any]:
        """The settings that can change a column's scores (batch size and device do not; which
        task and task files a column comes from is keyed by `columns.TaskSet.key`)."""
        return {
            "mode": self.mode,
            "num_fewshot": self.num_fewshot,
            "limit": self.limit,
            "max_gen_toks": self.max_gen_toks,
            "backend": self.backend,
        }

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON (`tasks` and `include_path` only when tasks are named)."""
        data = asdict(self)
        data["languages"], data["tasks"] = list(self.languages), list(self.tasks)
        for name in ("data_dir", "include_path"):
            data[name] = str(data[name]) if data[name] else None
        if not self.tasks:
            del data["tasks"], data["include_path"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalSettings:
        data = dict(data)
        if data.get("tasks"):
            data["languages"] = None
        return cls(**data)
