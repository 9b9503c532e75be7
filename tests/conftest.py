"""Shared fixtures: tiny local models (random init, locally trained tokenizer) and MGSM data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: The MGSM subset the tests carry (25 problems and the 8 exemplars per language; see its README).
MGSM_SUBSET = Path(__file__).resolve().parent / "data" / "mgsm"


@pytest.fixture(scope="session")
def mgsm_hf_dir() -> Path:
    """A local MGSM copy laid out like the Hub dataset: the tests' own subset."""
    return MGSM_SUBSET


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return tiny.train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def make_model(tmp_path_factory, tokenizer_dir):
    """Build (and cache for the session) a tiny model: make_model(arch, layers, seed, ...)."""
    cache: dict[tuple, Path] = {}

    def build(arch: str = "llama", num_layers: int = 8, seed: int = 0, **kwargs) -> Path:
        key = (arch, num_layers, seed, tuple(sorted(kwargs.items())))
        if key not in cache:
            name = f"{arch}-{num_layers}-{seed}-" + "-".join(f"{k}{v}" for k, v in key[3])
            out = tmp_path_factory.mktemp("models") / name
            cache[key] = tiny.build_model(
                out,
                arch=arch,
                num_layers=num_layers,
                seed=seed,
                tokenizer_dir=tokenizer_dir,
                **kwargs,
            )
        return cache[key]

    return build


@pytest.fixture(scope="session")
def aliases(make_model) -> dict[str, str]:
    """The three tiny 6-layer models of the suite tests: a base and two "experts"."""
    return {
        "base": str(make_model("llama", 6, seed=10)),
        "math": str(make_model("llama", 6, seed=11)),
        "swahili": str(make_model("llama", 6, seed=12)),
    }
