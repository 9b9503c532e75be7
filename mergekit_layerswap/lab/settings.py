"""The lab's settings: everything that decides its numbers (and its resume keys)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

#: Steps per size: (base, each expert).
STEPS = {"tiny": (500, 200), "deep": (500, 200), "small": (1500, 400)}


class LabSettings(BaseModel):
    """Everything that decides the lab's numbers (and its resume keys)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    seeds: PositiveInt = Field(3, description="pipelines to run, one per seed")
    language: Literal["sw"] = Field("sw", description="the target language")
    size: Literal["tiny", "deep", "small"] = Field(
        "tiny",
        description="the models' size (tiny: 8 layers, width 128; deep: 16 layers, width 64; "
        "small: 12 layers, width 256, for a GPU)",
    )
    device: Literal["cpu", "cuda"] = Field("cpu", description="where to train and score")
    n_test: PositiveInt = Field(
        60,
        description="problems per test task (the verdict detects margins of about "
        "2 sqrt(0.5 / (n_test x seeds)))",
    )
    test_seed: int = 1000
    base_steps: PositiveInt | None = None  # default: STEPS[size]
    expert_steps: PositiveInt | None = None
    base_lr: float = 3e-3
    expert_lr: float = 1e-3
    #: The base's mixture: share of each kind of text (English generic, target generic,
    #: translation pairs, English reading, target reading, bare arithmetic).
    mixture: dict[str, float] = Field(
        default_factory=lambda: {
            "generic_en": 0.30,
            "generic_target": 0.08,
            "parallel": 0.12,
            "reading_en": 0.15,
            "reading_target": 0.05,
            "arithmetic": 0.30,
            "story_en": 0.0,
            "story_target": 0.0,
            "story_parallel": 0.0,
        }
    )
    max_gen_toks: PositiveInt = 48
    tokenizer: Literal["word", "subword"] = Field(
        "word",
        description="word: one token per word; subword: word pieces learned from both "
        "languages (BPE), numbers still whole",
    )
    experts: Literal["full", "frozen", "reverted"] = Field(
        "full",
        description="full: each expert trains every parameter; frozen: the math expert trains "
        "only the middle layers, the language expert only the rest; reverted: every "
        "parameter, then the rest is set back to the base's (Bandarkar & Peng 2025)",
    )

    def steps(self) -> tuple[int, int]:
        base, expert = STEPS[self.size]
        return self.base_steps or base, self.expert_steps or expert
