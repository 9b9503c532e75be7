"""The Llama 3.1 8B language-swap recipe: one file, any of the paper's languages by overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mergekit_layerswap import cli, validate
from mergekit_layerswap.suite import include
from mergekit_layerswap.suite.schema import load_suite

RECIPE = Path(__file__).parents[1] / "recipes" / "llama-3.1-8b-language-swap.yml"
BASELINES = ("soup", "task-arithmetic", "ties", "dare-ties")


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
    assert set(BASELINES) <= names
    assert {entry.config["dtype"] for entry in merged} == {"bfloat16"}
    with_dtype = load_suite(RECIPE, [*changes, f"models.lang={paths['b']}", "dtype=float16"])
    assert {e.config["dtype"] for e in with_dtype.entries if e.kind != "input"} == {"float16"}


def test_every_suite_recipe_takes_the_baselines_from_one_file():
    """The suite recipes include baselines.yml and spell out no baseline themselves."""
    recipes = [
        p for p in RECIPE.parent.glob("*.yml") if p.name not in ("layerswap.yml", "baselines.yml")
    ]
    assert len(recipes) >= 2
    for recipe in recipes:
        raw = validate.load(recipe)
        assert raw["include"] == "baselines.yml", recipe.name
        assert not {merge["name"] for merge in raw["merges"]} & set(BASELINES), recipe.name


def test_a_merge_own_dtype_wins_over_the_top_level_one(tmp_path, make_model):
    """Included baselines take the suite's top-level dtype; a merge naming its own keeps it."""
    base, lang = (make_model("llama", 32, seed=seed) for seed in (20, 21))
    pair = [{"model": alias, "parameters": {"weight": 0.5}} for alias in ("math", "lang")]
    suite = {
        "include": str(include.BASELINES),
        "dtype": "float16",
        "models": {"base": str(base), "math": str(base), "lang": str(lang)},
        "merges": [{"name": "own", "merge_method": "linear", "models": pair, "dtype": "bfloat16"}],
        "evaluation": {"languages": ["sw"]},
    }
    (tmp_path / "suite.yml").write_text(yaml.safe_dump(suite))
    dtypes = {e.name: e.config["dtype"] for e in load_suite(tmp_path / "suite.yml").entries}
    assert dtypes == {"own": "bfloat16"} | dict.fromkeys(BASELINES, "float16")


def test_include_problems_come_with_the_others_and_exit_2(tmp_path, capsys):
    """A missing and a circular include are a line each, with the file's other problems,
    before anything is done."""
    folder = tmp_path.resolve()
    (folder / "a.yml").write_text("include: [b.yml, gone.yml]\nmodels: {m: x}\nbogus: 1\n")
    (folder / "b.yml").write_text("include: a.yml\n")
    assert cli.main(["suite", str(folder / "a.yml"), str(folder / "out"), "--dry-run"]) == 2
    assert capsys.readouterr().err.splitlines()[1:] == [
        "  include: a.yml includes itself (a.yml -> b.yml -> a.yml); remove one of these includes",
        f"  include: gone.yml: no such file ({folder / 'gone.yml'}); give a path relative to the "
        "file that includes it",
        "  bogus: unknown key; remove it or check its spelling",
    ]
    assert not (folder / "out").exists()
