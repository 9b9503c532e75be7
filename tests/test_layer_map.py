"""A swap as runs of layers with the same sources."""

from __future__ import annotations

from mergekit_layerswap.layer_map import Run, runs
from mergekit_layerswap.swap import Claim, SwapConfig
from mergekit_layerswap.swap_rule import plan_layers


def test_paper_default_compiles_to_runs_of_identical_sources():
    config = SwapConfig("math", (Claim("sw", bottom=5, top=2),), transition=1)
    half = {"sw": 0.5, "math": 0.5}
    assert runs(config, 32) == [
        Run(0, 0, {"sw": 1.0}),
        Run(0, 5, {"sw": 1.0}),
        Run(5, 6, half),
        Run(6, 29, {"math": 1.0}),
        Run(29, 30, half),
        Run(30, 32, {"sw": 1.0}),
        Run(32, 32, {"sw": 1.0}),
    ]


def test_slices_cover_every_layer_once_with_the_rule_weights():
    config = SwapConfig(
        "h",
        (Claim("a", bottom=2), Claim("b", layers="9-12")),
        transition=2,
        embed_source="base",
    )
    slices = runs(config, 16)
    assert slices[0] == Run(0, 0, {"h": 1.0}) and slices[-1] == Run(16, 16, {"h": 1.0})
    covered = [layer for s in slices[1:-1] for layer in range(s.start, s.end)]
    assert covered == list(range(16))
    layers = plan_layers(config, 16)
    for spec in slices[1:-1]:
        assert all(dict(layers[i]) == spec.weights for i in range(spec.start, spec.end))
        assert all(w > 0 for w in spec.weights.values())
    # each two-layer transition zone is two slices: the weights differ layer by layer
    assert [s.end - s.start for s in slices[1:-1]] == [2, 1, 1, 3, 1, 1, 4, 1, 1, 1]
