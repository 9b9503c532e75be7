"""The swap rule, exhaustively on small models and with hypothesis on random claims."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mergekit_layerswap.swap import (
    Claim,
    SwapConfig,
    donor_parameters,
    shared_parameters,
    variant_name,
)
from mergekit_layerswap.swap_rule import (
    SwapError,
    format_ranges,
    layer_weights,
    parse_ranges,
    plan_layers,
    problems,
    tensor_weights,
)

H, D, E = "host", "donor", "donor2"


def claimed(claim: Claim, n: int) -> list[int]:
    """The layers a claim names (reference implementation, list based)."""
    out = list(range(claim.bottom)) + (list(range(n - claim.top, n)) if claim.top else [])
    for start, end in parse_ranges(claim.layers):
        out += list(range(start, end + 1))
    return out


def expected(config: SwapConfig, n: int) -> list[dict] | None:
    """Per-layer weights by brute force, or None if the config must be rejected."""
    owner: dict[int, object] = {}
    for claim in config.claims:
        layers = claimed(claim, n)
        if not layers or len(set(layers)) != len(layers) or not 0 <= min(layers) <= max(layers) < n:
            return None
        if any(layer in owner for layer in layers):
            return None
        owner.update(dict.fromkeys(layers, claim.donor))
    t = config.transition
    cover: dict[int, list[tuple[object, float]]] = {}
    for layer, donor in owner.items():
        for step in (-1, 1):
            # an inner edge of a block: the neighbour on this side is unclaimed and in range
            if not 0 <= layer + step < n or (layer + step) in owner:
                continue
            for i in range(1, t + 1):
                target = layer + step * i
                if not 0 <= target < n or target in owner:
                    return None
                cover.setdefault(target, []).append((donor, 1 - i / (t + 1)))
    if any(len(v) > 1 for v in cover.values()):
        return None
    result = []
    for layer in range(n):
        if layer in owner:
            result.append({owner[layer]: 1.0})
        elif layer in cover:
            donor, w = cover[layer][0]
            result.append({donor: w, H: 1 - w})
        else:
            result.append({H: 1.0})
    return result


def agree(config: SwapConfig, n: int) -> None:
    want = expected(config, n)
    found = problems(config, n)
    if want is None:
        assert found, f"{config} on {n} layers should be rejected"
        with pytest.raises(SwapError):
            plan_layers(config, n)
        return
    assert not found, found
    got = plan_layers(config, n)
    assert len(got) == n
    for layer, (g, w) in enumerate(zip(got, want, strict=True)):
        assert set(g) == set(w), (layer, g, w)
        for source in g:
            assert g[source] == pytest.approx(w[source]), (layer, g, w)
        assert sum(g.values()) == pytest.approx(1.0)
        assert layer_weights(layer, n, config) == g


def test_one_donor_bottom_top_exhaustive():
    for n in range(1, 11):
        for bottom, top, t in itertools.product(range(n + 1), range(n + 1), range(4)):
            agree(SwapConfig(H, (Claim(D, bottom=bottom, top=top),), t), n)


def test_one_donor_middle_range_exhaustive():
    for n in range(1, 10):
        for start, end, t in itertools.product(range(n), range(n), range(3)):
            if start <= end:
                agree(SwapConfig(H, (Claim(D, layers=f"{start}-{end}"),), t), n)


def test_two_donors_exhaustive():
    n = 8
    for b1, b2, t in itertools.product(range(5), range(5), range(3)):
        agree(SwapConfig(H, (Claim(D, bottom=b1), Claim(E, top=b2)), t), n)


ranges = st.lists(
    st.tuples(st.integers(0, 13), st.integers(0, 4)).map(lambda p: f"{p[0]}-{p[0] + p[1]}"),
    max_size=2,
).map(",".join)
claims = st.builds(Claim, st.just(D), st.integers(0, 4), st.integers(0, 4), ranges) | st.builds(
    Claim, st.just(D), st.just(0), st.just(0), ranges
)


@settings(max_examples=400, deadline=None)
@given(
    n=st.integers(1, 14),
    first=claims,
    second=st.none() | claims.map(lambda c: Claim(E, c.bottom, c.top, c.layers)),
    t=st.integers(0, 3),
)
def test_random_claims_match_brute_force(n, first, second, t):
    config = SwapConfig(H, (first,) if second is None else (first, second), t)
    agree(config, n)


def test_paper_default_llama_32_layers():
    config = SwapConfig("math", (Claim("sw", bottom=5, top=2),), transition=1)
    layers = plan_layers(config, 32)
    assert [layers[i] for i in range(5)] == [{"sw": 1.0}] * 5
    assert layers[5] == {"sw": 0.5, "math": 0.5}
    assert all(layers[i] == {"math": 1.0} for i in range(6, 29))
    assert layers[29] == {"sw": 0.5, "math": 0.5}
    assert layers[30] == layers[31] == {"sw": 1.0}


def test_middle_swap_2026_follow_up():
    config = SwapConfig("native", (Claim("reasoner", layers="13-22"),), transition=2)
    layers = plan_layers(config, 36)
    assert all(layers[i] == {"reasoner": 1.0} for i in range(13, 23))
    assert layers[12] == pytest.approx({"reasoner": 2 / 3, "native": 1 / 3})
    assert layers[11] == pytest.approx({"reasoner": 1 / 3, "native": 2 / 3})
    assert layers[23] == layers[12] and layers[24] == layers[11]
    assert layers[10] == layers[25] == {"native": 1.0}


def test_outer_tensors_follow_first_and_last_layer_unless_base():
    config = SwapConfig("math", (Claim("sw", bottom=2),), transition=1)
    assert tensor_weights("pre", 8, config) == {"sw": 1.0}
    assert tensor_weights("post", 8, config) == {"math": 1.0}
    pinned = SwapConfig("math", config.claims, 1, embed_source="base", head_source="base")
    assert tensor_weights("pre", 8, pinned) == {"math": 1.0}
    blended = SwapConfig("math", (Claim("sw", layers="1-3"),), transition=1)
    assert tensor_weights("pre", 8, blended) == {"sw": 0.5, "math": 0.5}


@pytest.mark.parametrize(
    ("claim", "transition", "field", "words"),
    [
        (Claim(D), 0, "models", "claims no layers"),
        (Claim(D, bottom=9), 0, "bottom", "exceeds the model's 8 layers"),
        (Claim(D, layers="3-x"), 0, "layers", "not a layer range"),
        (Claim(D, layers="5-3"), 0, "layers", "runs backwards"),
        (Claim(D, layers="6-8"), 0, "layers", "out of bounds"),
        (Claim(D, bottom=3, layers="2-4"), 0, "layers", "overlaps bottom=3"),
        (Claim(D, bottom=5, top=4), 0, "top", "overlaps bottom=5"),
        (Claim(D, bottom=3, top=3), 2, "transition", "runs into"),
        (Claim(D, layers="1-2"), 2, "transition", "past the model edge"),
    ],
)
def test_problems_name_the_field(claim, transition, field, words):
    found = problems(SwapConfig(H, (claim,), transition), 8)
    assert any(p.field == field and words in p.message for p in found), found


@pytest.mark.parametrize(
    "bad",
    [{"bottom": -1}, {"top": 2.5}, {"top": True}, {"layers": 5}, {"transition": -1}, {"head": 1}],
)
def test_parameters_of_the_wrong_type_are_refused_when_declared(bad):
    """The swap parameters are typed where they are declared (strict pydantic): a wrong value
    never reaches the rule."""
    shared = {k: v for k, v in bad.items() if k == "transition"}
    donor = {"layers": "1", **{k: v for k, v in bad.items() if k not in shared}}
    with pytest.raises(ValidationError) as error:
        SwapConfig(H, (Claim(D, **donor),), **shared)
    assert error.value.errors()[0]["loc"][0] in bad


def test_parameters_are_declared_once_and_drive_names():
    assert list(donor_parameters()) == ["bottom", "top", "layers"]
    assert list(shared_parameters()) == ["transition", "embed_source", "head_source"]
    claim = Claim(D, bottom=5, top=2)
    assert variant_name(claim, SwapConfig(H, (claim,), 1)) == "swap-b5-t2-tr1"
    claim = Claim(D, layers="0-4,30-31")
    pinned = SwapConfig(H, (claim,), head_source="base")
    assert variant_name(claim, pinned) == "swap-l0-4_30-31-tr0-headbase"


def test_donors_overlapping_each_other_and_zones_touching():
    found = problems(SwapConfig(H, (Claim(D, bottom=4), Claim(E, layers="3-5"))), 8)
    assert any("overlaps donor" in p.message and p.donor == E for p in found)
    # a gap of exactly 2*t is fine: the two zones touch without overlapping
    assert not problems(SwapConfig(H, (Claim(D, bottom=2), Claim(E, top=2)), 2), 8)
    found = problems(SwapConfig(H, (Claim(D, bottom=2), Claim(E, top=3)), 2), 8)
    assert any("runs into" in p.message for p in found)


def test_range_helpers_round_trip():
    assert parse_ranges("0-4, 30-31,7") == [(0, 4), (30, 31), (7, 7)]
    assert parse_ranges("") == []
    assert format_ranges([0, 1, 2, 3, 4, 7, 30, 31]) == "0-4,7,30-31"
    with pytest.raises(IndexError):
        layer_weights(8, 8, SwapConfig(H, (Claim(D, bottom=1),)))
