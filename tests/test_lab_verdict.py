"""The lab's verdict kinds and the preconditions' arithmetic (the measurements themselves run
in tests/test_lab.py's end-to-end lab)."""

from __future__ import annotations

import pytest

from mergekit_layerswap.lab import preconditions, verdict

TARGET = "lab_math_sw"


def seeds(*margins: float) -> dict:
    """Seeds whose swap scores 0.5 + margin against a best rival at 0.5."""

    def models(margin: float) -> dict:
        scores = {"layer-swap": 0.5 + margin, "math": 0.5, "lang": 0.1, "soup": 0.3}
        return {name: {"columns": {TARGET: {"score": score}}} for name, score in scores.items()}

    return {str(i): {"models": models(m)} for i, m in enumerate(margins)}


def passing(count: int, failed: str | None = None) -> dict:
    records = [
        preconditions.Precondition(name, 0.0 if name == failed else 2.0, 1.0).record()
        for name in preconditions.MEANINGS
    ]
    return {str(i): records for i in range(count)}


def judge(scored: dict, measured: dict, n_items: int) -> dict:
    """verdict.judge of `scored` seeds, each with its preconditions from `measured`."""
    seeds_ = {seed: run | {"preconditions": measured[seed]} for seed, run in scored.items()}
    return verdict.judge(seeds_, TARGET, n_items)


def test_a_margin_beyond_twice_its_standard_error_is_an_effect():
    found = judge(seeds(0.10, 0.12, 0.11), passing(3), 200)
    assert found["kind"] == "effect"
    assert found["mean"] == pytest.approx(0.11) and found["standard_error"] < 0.01


def test_a_margin_within_noise_is_no_effect():
    found = judge(seeds(0.10, -0.05, 0.02), passing(3), 200)
    assert found["kind"] == "no effect"
    assert "detects margins of about 6 points" in found["text"]


def test_one_seed_never_claims_a_win():
    found = judge(seeds(0.30), passing(1), 60)
    assert found["kind"] == "cannot judge" and "one seed" in found["reason"]


def test_a_failing_precondition_is_named_with_its_value_and_threshold():
    found = judge(seeds(0.10, 0.12, 0.11), passing(3, "transfer"), 200)
    assert found["kind"] == "cannot judge"
    assert found["reason"] == "transfer fails (0.00 vs 1.00; on 3 of 3 seeds)"
    mixed = passing(3) | {"0": passing(1, "alignment")["0"]}  # fails on 1 seed of 3
    assert judge(seeds(0.10, 0.12, 0.11), mixed, 200)["kind"] == "effect"


def test_change_profile_wants_outer_language_and_middle_math_changes():
    outer, middle = [1, 1, 0.2, 0.2, 0.2, 0.2, 1, 1], [0.2, 0.2, 1, 1, 1, 1, 0.2, 0.2]
    assert preconditions.profile_ratio(middle, outer) == pytest.approx(5.0)
    assert preconditions.profile_ratio(outer, outer) == pytest.approx(0.2)
    assert preconditions.profile_ratio([1] * 8, [1] * 8) == pytest.approx(1.0)


def test_answers_are_read_after_the_answer_phrase():
    assert preconditions._answer("3 + 4 = 7 . The answer is 7 .\nQuestion:", "en") == 7
    assert preconditions._answer("Jibu ni 12 .", "sw") == 12
    assert preconditions._answer("5 - 2 = 3 .", "en") == 3  # no phrase: the last number
    assert preconditions._answer("hakuna", "sw") is None


def test_the_replaced_layers_are_the_swaps_bottom_and_top():
    swap = {"donor": {"bottom": 2, "top": 1}, "transition": 0}
    assert preconditions.replaced_layers(swap, 8) == [0, 1, 7]


def test_locality_is_the_share_of_the_math_gain_kept():
    assert preconditions.kept_share(base=0.1, math=0.5, reset=0.3) == pytest.approx(0.5)
    assert preconditions.kept_share(base=0.1, math=0.5, reset=0.05) == 0.0
    # an expert that learned nothing keeps nothing (not "all of it")
    assert preconditions.kept_share(base=0.03, math=0.03, reset=0.03) == 0.0
