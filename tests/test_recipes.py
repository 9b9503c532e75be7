"""The Llama 3.1 8B language-swap recipe: one file, any of the paper's languages by overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergekit_layerswap import validate
from mergekit_layerswap.errors import InputError
from mergekit_layerswap.suite.schema import load_suite

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
    suite = load_suite(RECIPE, changes)
    assert list(suite.evaluation.languages) == [language, "en"]
    merged = [entry for entry in suite.entries if entry.kind != "input"]
    # the paper's swap and five baselines, a 12-variant sweep (one of them the paper's swap)
    assert (len(merged), list(suite.duplicates.values())) == (6 + 11, ["layer-swap-b5-t2"])
    for entry in merged:
        donors = [validate.reference(m) for m in entry.config["models"]]
        assert paths["lang"] in donors, entry.name
        if entry.method == validate.METHOD:
            assert entry.config["base_model"] == paths["math"]


def test_recipes_share_the_baselines_and_a_top_level_dtype(make_model):
    """The recipe includes baselines.yml (the lab's suite does too); its top-level dtype is
    every merge's, every baseline's and every sweep variant's."""
    paths = {alias: str(make_model("llama", 32, seed=20 + i)) for i, alias in enumerate("ab")}
    changes = [f"models.{alias}={paths[key]}" for alias, key in (("base", "a"), ("math", "a"))]
    suite = load_suite(RECIPE, [*changes, f"models.lang={paths['b']}"])
    merged = [entry for entry in suite.entries if entry.kind != "input"]
    names = {entry.name for entry in merged}
    assert {"soup", "task-arithmetic", "ties", "dare-ties"} <= names
    assert {entry.config["dtype"] for entry in merged} == {"bfloat16"}
    with_dtype = load_suite(RECIPE, [*changes, f"models.lang={paths['b']}", "dtype=float16"])
    assert {e.config["dtype"] for e in with_dtype.entries if e.kind != "input"} == {"float16"}


def test_a_missing_or_circular_include_is_one_line_each(tmp_path):
    (tmp_path / "a.yml").write_text("include: b.yml\nmodels: {m: x}\n")
    (tmp_path / "b.yml").write_text("include: [a.yml, gone.yml]\n")
    with pytest.raises(InputError) as error:
        load_suite(tmp_path / "a.yml")
    problems = error.value.problems
    assert len(problems) == 2
    assert "a.yml includes itself" in problems[0]
    assert "gone.yml: cannot read it" in problems[1]
