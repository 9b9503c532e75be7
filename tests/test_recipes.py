"""The Llama 3.1 8B language-swap recipe: one file, any of the paper's languages by overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergekit_layerswap import overrides, validate
from mergekit_layerswap.suite.schema import parse_suite

RECIPE = Path(__file__).parents[1] / "recipes" / "llama-3.1-8b-language-swap.yml"


@pytest.mark.parametrize("language", ["sw", "te", "bn", "ja"])
def test_language_swap_recipe_takes_each_paper_language_by_overrides(language, make_model):
    """`models.lang=... evaluation.languages=[xx,en]` makes the suite of language xx: the
    language expert is every layer swap's donor and every baseline's second model."""
    paths = {
        alias: str(make_model("llama", 32, seed=20 + i))
        for i, alias in enumerate(["base", "math", "lang"])
    }
    changes = [f"models.{alias}={path}" for alias, path in paths.items()]
    if language != "sw":  # the recipe as written is the Swahili suite
        changes.append(f"evaluation.languages=[{language},en]")
    suite = parse_suite(overrides.apply(validate.load(RECIPE), changes))
    assert list(suite.evaluation.languages) == [language, "en"]
    merged = [entry for entry in suite.entries if entry.kind != "input"]
    # the paper's swap and five baselines, a 12-variant sweep (one of them the paper's swap)
    assert (len(merged), list(suite.duplicates.values())) == (6 + 11, ["layer-swap-b5-t2"])
    for entry in merged:
        donors = [validate.reference(m) for m in entry.config["models"]]
        assert paths["lang"] in donors, entry.name
        if entry.method == validate.METHOD:
            assert entry.config["base_model"] == paths["math"]
