"""KEY=VALUE overrides of a loaded YAML mapping (`overrides.apply`)."""

from __future__ import annotations

import copy

import pytest

from mergekit_layerswap import validate
from mergekit_layerswap.errors import InputError
from mergekit_layerswap.overrides import apply

RAW = {
    "models": {"math": "org/math", "lang": "org/sw"},
    "merges": [{"name": "soup", "models": [{"model": "math"}, {"model": "lang"}]}],
    "evaluation": {"languages": ["sw", "en"], "num_fewshot": 8},
}


def test_sets_nested_keys_list_items_and_yaml_values_on_a_copy():
    before = copy.deepcopy(RAW)
    changed = apply(
        RAW,
        [
            "models.lang=org/te",
            "evaluation.languages=[te, en]",
            "evaluation.num_fewshot=0",
            "merges.0.models.1.model=math",
            "evaluation.limit=5",  # a new last key: an optional setting the file leaves out
            "keep_weights=true",
            "models.math=org/first",
            "models.math=org/second",  # in order: the last one wins
        ],
    )
    assert before == RAW  # not changed in place
    assert changed["models"] == {"math": "org/second", "lang": "org/te"}
    assert changed["evaluation"] == {"languages": ["te", "en"], "num_fewshot": 0, "limit": 5}
    assert changed["merges"][0]["models"][1] == {"model": "math"}
    assert changed["keep_weights"] is True


def test_a_value_may_hold_equals_signs_and_be_empty():
    changed = apply(RAW, ["models.math=org/a=b", "evaluation.num_fewshot="])
    assert changed["models"]["math"] == "org/a=b"
    assert changed["evaluation"]["num_fewshot"] is None


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("models", "write KEY=VALUE"),
        ("models..lang=x", "write KEY=VALUE"),
        ("=x", "write KEY=VALUE"),
        ("modles.lang=x", "the file has no key 'modles' (keys: models, merges, evaluation)"),
        ("merges.1.name=x", "merges holds 1 items: give an index below 1"),
        ("merges.first.name=x", "merges holds 1 items: give an index below 1"),
        ("merges.-1.name=x", "merges holds 1 items"),
        ("models.math.path=x", "models.math is a single value ('org/math')"),
        ("evaluation.languages=[te, en", "the value is not valid YAML"),
        ('models."math=x', "write KEY=VALUE"),
        ('models.""=x', "write KEY=VALUE"),
    ],
)
def test_a_bad_override_is_one_line_naming_it(override, words):
    with pytest.raises(InputError) as error:
        apply(RAW, [override])
    (problem,) = error.value.problems
    assert problem.startswith(f"override {override!r}: ") and words in problem, problem
    assert "\n" not in problem


def test_every_bad_override_is_reported_at_once():
    with pytest.raises(InputError) as error:
        apply(RAW, ["nope.x=1", "models.lang=ok", "merges.3.name=x"])
    assert [p.split(":")[0] for p in error.value.problems] == [
        "override 'nope.x=1'",
        "override 'merges.3.name=x'",
    ]


def test_an_override_never_leaks_through_a_yaml_anchor(tmp_path):
    """Merges sharing a models list through an anchor: the override changes the merge it
    names, not every merge that uses the anchor."""
    path = tmp_path / "suite.yml"
    path.write_text(
        "models: {math: org/math, lang: org/sw, te: org/te}\n"
        "merges:\n"
        "  - {name: one, models: &shared [{model: math}, {model: lang}]}\n"
        "  - {name: two, models: *shared}\n"
    )
    raw = validate.load(path, ["merges.0.models.1.model=te"])
    assert raw["merges"][0]["models"] == [{"model": "math"}, {"model": "te"}]
    assert raw["merges"][1]["models"] == [{"model": "math"}, {"model": "lang"}]


def test_a_key_given_twice_in_an_override_value_is_refused():
    with pytest.raises(InputError) as error:
        apply(RAW, ["evaluation={num_fewshot: 8, num_fewshot: 0}"])
    (problem,) = error.value.problems
    assert "the value is not valid YAML (key 'num_fewshot' is given twice; keep one)" in problem


def test_a_dotted_alias_is_overridden_in_double_quotes():
    raw = {"models": {"llama3.1": "org/a", "llama3": {"1": "x"}}}
    changed = apply(raw, ['models."llama3.1"=org/b', 'models."qwen2.5"=org/q', "models.llama3.1=y"])
    assert changed["models"] == {"llama3.1": "org/b", "llama3": {"1": "y"}, "qwen2.5": "org/q"}
    with pytest.raises(InputError) as error:
        apply({"models": {"llama3.1": "org/a"}}, ["models.llama3.1=org/b"])
    (problem,) = error.value.problems
    assert problem.endswith('a key holding a dot goes in double quotes: models."llama3.1"')
