"""`EvalSettings`: everything that decides how MGSM is run, validated on construction."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .tasks import LANGUAGES, MAX_FEWSHOT, MODES, EvalInputError, parse_languages

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
    """How to score models on MGSM; the fields that change scores key the result cache.

    `languages` also accepts `"all"` or `"sw,te"`; `batch_size=None` means 64 for `hf` and
    `"auto"` for `vllm`; `device=None` means CUDA when available; `data_dir=None` means the
    `MGSM_DATA_DIR` environment variable, or the Hub dataset when that is unset too.
    """

    languages: tuple[str, ...] = LANGUAGES
    mode: str = "native_cot"
    num_fewshot: int = 0
    limit: int | None = None
    batch_size: int | str | None = None
    max_gen_toks: int = DEFAULT_MAX_GEN_TOKS
    backend: str = "hf"
    device: str | None = None
    data_dir: Path | None = field(default_factory=_data_dir_from_env)
    log_samples: bool = False

    def __post_init__(self) -> None:
        def fix(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        fix("languages", parse_languages(self.languages))
        if self.mode not in MODES:
            raise EvalInputError(f"unknown mode {self.mode!r}: choose from {', '.join(MODES)}")
        if not 0 <= self.num_fewshot <= MAX_FEWSHOT:
            raise EvalInputError(f"num_fewshot must be 0..{MAX_FEWSHOT} (MGSM has 8 exemplars)")
        if self.limit is not None and self.limit < 1:
            raise EvalInputError("limit must be at least 1")
        if self.max_gen_toks < 1:
            raise EvalInputError("max_gen_toks must be at least 1")
        if self.backend not in BACKENDS:
            raise EvalInputError(f"unknown backend {self.backend!r}: choose from hf, vllm")
        if self.batch_size is None:
            fix("batch_size", DEFAULT_HF_BATCH_SIZE if self.backend == "hf" else "auto")
        if self.batch_size != "auto" and not (
            isinstance(self.batch_size, int) and self.batch_size >= 1
        ):
            raise EvalInputError(
                f"batch size must be a positive integer or 'auto', not {self.batch_size!r}"
            )
        if self.device is not None and not (
            self.device == "cpu" or self.device.split(":")[0] == "cuda"
        ):
            raise EvalInputError(f"unknown device {self.device!r}: choose cpu or cuda[:N]")
        if self.data_dir is not None:
            fix("data_dir", Path(self.data_dir).expanduser().resolve())

    def scoring_key(self) -> dict[str, Any]:
        """The settings that can change a language's scores (batch size and device do not)."""
        return {
            "mode": self.mode,
            "num_fewshot": self.num_fewshot,
            "limit": self.limit,
            "max_gen_toks": self.max_gen_toks,
            "backend": self.backend,
        }

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["languages"] = list(self.languages)
        data["data_dir"] = str(self.data_dir) if self.data_dir else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalSettings:
        data_dir = data.get("data_dir")
        return cls(**{**data, "data_dir": Path(data_dir) if data_dir else None})
