"""End to end: the stock `mergekit-yaml` executable runs layer_swap on tiny local models.

Expected layer maps are written out by hand here (not computed with our swap rule), and
every output tensor is compared with its source: copies bit for bit, blends numerically.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import layer_swap, tensors

from mergekit_layerswap import cli

pytestmark = pytest.mark.slow
MERGEKIT_YAML = Path(sys.executable).with_name("mergekit-yaml")


def mergekit_yaml(raw: dict, tmp_path: Path, name: str = "out", **env: str) -> Path:
    config = tmp_path / f"{name}.yml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / name
    result = subprocess.run(
        [str(MERGEKIT_YAML), str(config), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def check(out: Path, sources: dict[str, Path], layer_map: list[dict], outer: dict) -> None:
    """Every tensor of `out` against its expected sources: {"pre"/"post": weights} in outer."""
    merged = tensors(out)
    inputs = {name: tensors(path) for name, path in sources.items()}
    host = next(iter(inputs.values()))
    assert set(merged) == set(host)
    for name, tensor in merged.items():
        if ".layers." in name:
            weights = layer_map[int(name.split(".layers.")[1].split(".")[0])]
        else:
            weights = outer["pre" if "embed" in name else "post"]
        if len(weights) == 1:
            (source,) = weights
            assert torch.equal(tensor, inputs[source][name]), name
            assert tensor.dtype == inputs[source][name].dtype
            continue
        expected = sum(w * inputs[s][name].float() for s, w in weights.items())
        torch.testing.assert_close(tensor.float(), expected, atol=1e-2, rtol=1e-2)
        first, second = (inputs[s][name] for s in list(weights)[:2])
        if not torch.equal(first, second):  # norms start as ones in every random init
            assert not any(torch.equal(tensor, inputs[s][name]) for s in weights), name


def forward(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    logits = model(**tokenizer("Jibu ni 18", return_tensors="pt")).logits
    assert logits.shape[-1] == model.config.vocab_size
    assert torch.isfinite(logits).all()


H, D, E = "host", "donor", "donor2"
HALF = {D: 0.5, H: 0.5}


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "gemma2"])
def test_bottom_top_swap_with_transitions(arch, make_model, tmp_path):
    host, donor = make_model(arch, 8, seed=1), make_model(arch, 8, seed=2)
    raw = layer_swap(host, {donor: {"bottom": 2, "top": 1}}, transition=1)
    out = mergekit_yaml(raw, tmp_path)
    layer_map = [{D: 1}, {D: 1}, HALF, {H: 1}, {H: 1}, {H: 1}, HALF, {D: 1}]
    check(out, {H: host, D: donor}, layer_map, {"pre": {D: 1}, "post": {D: 1}})
    forward(out)


def test_middle_swap_two_layer_transitions(make_model, tmp_path):
    native, reasoner = make_model("qwen3", 8, seed=1), make_model("qwen3", 8, seed=2)
    raw = layer_swap(native, {reasoner: {"layers": "3-4"}}, transition=2)
    out = mergekit_yaml(raw, tmp_path)
    third, two_thirds = {D: 1 / 3, H: 2 / 3}, {D: 2 / 3, H: 1 / 3}
    layer_map = [{H: 1}, third, two_thirds, {D: 1}, {D: 1}, two_thirds, third, {H: 1}]
    check(out, {H: native, D: reasoner}, layer_map, {"pre": {H: 1}, "post": {H: 1}})
    forward(out)


def test_head_after_a_last_layer_transition_is_blended(make_model, tmp_path):
    """The head blends two models while the embeddings come from one: mergekit 0.1.5 plans
    the head with the first slice's source count, which the compiled slices must allow for."""
    host, donor = make_model("llama", 8, seed=1), make_model("llama", 8, seed=2)
    raw = layer_swap(host, {donor: {"layers": "5-6"}}, transition=1)
    layer_map = [{H: 1}, {H: 1}, {H: 1}, {H: 1}, HALF, {D: 1}, {D: 1}, HALF]
    for streamed in ("1", "0"):
        out = mergekit_yaml(raw, tmp_path, f"out-{streamed}", MERGEKIT_LAYERSWAP_STREAM=streamed)
        check(out, {H: host, D: donor}, layer_map, {"pre": {H: 1}, "post": HALF})
    forward(out)


def test_two_donors_and_our_merge_command_match_stock_cli(make_model, tmp_path, capsys):
    host, first, second = (make_model("llama", 8, seed=s) for s in (1, 2, 3))
    raw = layer_swap(
        host, {first: {"bottom": 2}, second: {"top": 2}}, transition=1, embed_source="base"
    )
    out = mergekit_yaml(raw, tmp_path)
    layer_map = [{D: 1}, {D: 1}, HALF, {H: 1}, {H: 1}, {E: 0.5, H: 0.5}, {E: 1}, {E: 1}]
    check(out, {H: host, D: first, E: second}, layer_map, {"pre": {H: 1}, "post": {E: 1}})

    config = tmp_path / "ours.yml"
    config.write_text(yaml.safe_dump(raw))
    ours = tmp_path / "ours"
    assert cli.main(["merge", str(config), str(ours), "--quiet"]) == 0
    stock, mine = tensors(out), tensors(ours)
    assert set(stock) == set(mine)
    assert all(torch.equal(stock[name], mine[name]) for name in stock)
    assert (ours / "tokenizer.json").is_file() and (ours / "mergekit_config.yml").is_file()
    assert not list(tmp_path.glob(".ours.partial-*"))


def test_in_memory_merge_state_dicts(make_model):
    from mergekit.merge_methods import merge_state_dicts

    host, donor = make_model("llama", 8, seed=1), make_model("llama", 8, seed=2)
    a, b = tensors(host), tensors(donor)
    merged = merge_state_dicts(
        {"math": a, "sw": b},
        "layer_swap",
        base="math",
        parameters={"bottom": {"sw": 1}, "layers": {"sw": "5-6"}, "num_layers": 8},
    )
    for name, tensor in merged.items():
        layer = int(name.split(".layers.")[1].split(".")[0]) if ".layers." in name else None
        from_donor = layer in (0, 5, 6) or "embed" in name
        assert torch.equal(tensor, (b if from_donor else a)[name]), name
    with pytest.raises(ValueError, match="num_layers"):
        merge_state_dicts(
            {"math": a, "sw": b}, "layer_swap", base="math", parameters={"bottom": {"sw": 1}}
        )


def test_compiled_slices_equal_the_rule_bit_for_bit(make_model, tmp_path):
    """The stock CLI (compiled into minimal-read slices) matches the in-memory rule path."""
    from mergekit.merge_methods import merge_state_dicts

    host, first, second = (make_model("qwen2", 16, seed=s) for s in (4, 5, 6))
    raw = layer_swap(
        host,
        {first: {"bottom": 2, "layers": "6-7"}, second: {"top": 2}},
        transition=2,
        head_source="base",
    )
    out = mergekit_yaml(raw, tmp_path)
    expected = merge_state_dicts(
        {"h": tensors(host), "a": tensors(first), "b": tensors(second)},
        "layer_swap",
        base="h",
        parameters={
            "bottom": {"a": 2, "b": 0},
            "top": {"a": 0, "b": 2},
            "layers": {"a": "6-7", "b": ""},
            "transition": 2,
            "head_source": "base",
            "num_layers": 16,
        },
    )
    merged = tensors(out)
    assert set(merged) == set(expected)
    assert all(torch.equal(merged[name], expected[name]) for name in merged)


def test_tensors_a_layer_does_not_use_are_never_read(make_model, tmp_path):
    """Prune the donor's checkpoint to the layers it gives: the merge must still succeed."""
    from safetensors.torch import save_file

    host, donor = make_model("llama", 8, seed=1), make_model("llama", 8, seed=2)
    pruned = tmp_path / "pruned-donor"
    pruned.mkdir()
    for path in donor.iterdir():
        if path.suffix != ".safetensors":
            (pruned / path.name).write_bytes(path.read_bytes())
    kept = {
        name: tensor
        for name, tensor in tensors(donor).items()
        if ".layers." not in name or int(name.split(".layers.")[1].split(".")[0]) in (0, 1, 7)
    }
    save_file(kept, pruned / "model.safetensors", metadata={"format": "pt"})
    raw = layer_swap(host, {pruned: {"bottom": 2, "top": 1}})
    out = mergekit_yaml(raw, tmp_path)
    layer_map = [{D: 1}, {D: 1}, {H: 1}, {H: 1}, {H: 1}, {H: 1}, {H: 1}, {D: 1}]
    check(out, {H: host, D: donor}, layer_map, {"pre": {D: 1}, "post": {D: 1}})
