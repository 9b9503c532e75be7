"""Donors whose tensors do not fit the host, and broken weight files: refused from the
safetensors headers and config.json (no tensor read), one line naming the field and both
values, exit code 2, nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from helpers import layer_swap, refused
from safetensors.torch import load_file, save_file

from mergekit_layerswap import validate


def _grow(axis: int, by: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def grow(tensor: torch.Tensor) -> torch.Tensor:
        shape = list(tensor.shape)
        shape[axis] = by
        return torch.cat([tensor, torch.zeros(shape, dtype=tensor.dtype)], dim=axis)

    return grow


def _variant(source: Path, out: Path, config: dict, resize: dict[str, Callable]) -> Path:
    """A copy of `source` with config.json fields changed and tensors whose name contains a
    key of `resize` rewritten by its function."""
    shutil.copytree(source, out)
    settings = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**settings, **config}))
    tensors = load_file(out / "model.safetensors")
    for name, tensor in tensors.items():
        for part, change in resize.items():
            if part in name:
                tensors[name] = change(tensor)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


#: (id, config.json changes, tensor changes, expected words in the refusal)
SHAPES = [
    (
        "vocab_size",
        {"vocab_size": 336},
        {"embed_tokens": _grow(0, 16), "lm_head": _grow(0, 16)},
        "vocab_size 336 differs from the host's 320",
    ),
    (
        "intermediate_size",
        {"intermediate_size": 256},
        {"gate_proj": _grow(0, 128), "up_proj": _grow(0, 128), "down_proj": _grow(1, 128)},
        "intermediate_size 256 differs from the host's 128",
    ),
    (
        "num_key_value_heads",
        {"num_key_value_heads": 1},
        {"k_proj": lambda t: t[:16], "v_proj": lambda t: t[:16]},
        "num_key_value_heads 1 differs from the host's 2",
    ),
    (
        "tensor shape, config alike",
        {},
        {"layers.1.mlp.up_proj": _grow(0, 2)},
        "tensor model.layers.1.mlp.up_proj.weight has shape [130, 64] "
        "where the host's is [128, 64]",
    ),
]


@pytest.fixture(scope="module")
def host(make_model) -> Path:
    return make_model("llama", 8, seed=1)


@pytest.fixture(scope="module")
def donor(make_model) -> Path:
    return make_model("llama", 8, seed=2)


@pytest.mark.parametrize(
    ("config", "resize", "words"), [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES]
)
def test_shape_mismatch_is_refused_with_field_and_both_values(
    host, donor, tmp_path, capsys, config, resize, words
):
    bad = _variant(donor, tmp_path / "donor", config, resize)
    raw = layer_swap(host, {bad: {"bottom": 2}})
    found = validate.check(raw)
    assert len(found) == 1 and found[0].startswith("models[1].model: ") and words in found[0]
    assert words in refused(tmp_path, raw, capsys)


def _truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def _garbage(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")


def _drop_tensor(folder: Path) -> None:
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.0.mlp.down_proj.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def _missing_shard(folder: Path) -> None:
    names = list(load_file(folder / "model.safetensors"))
    index = {"metadata": {}, "weight_map": {n: "model-00001-of-00002.safetensors" for n in names}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "model.safetensors").rename(folder / "model-00002-of-00002.safetensors")


def _config_list(folder: Path) -> None:
    (folder / "config.json").write_text("[1, 2]")


BROKEN = [
    ("truncated safetensors", _truncate, "truncated (its tensors end at byte"),
    ("corrupt safetensors", _garbage, "not a readable safetensors file"),
    ("missing tensor", _drop_tensor, "has no tensor model.layers.0.mlp.down_proj.weight"),
    ("missing shard", _missing_shard, "shard model-00001-of-00002.safetensors named in"),
    ("config.json not an object", _config_list, "config.json must hold a JSON object (got list)"),
]


@pytest.mark.parametrize(("damage", "words"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_weight_files_are_one_line_each(host, donor, tmp_path, capsys, damage, words):
    bad = tmp_path / "donor"
    shutil.copytree(donor, bad)
    damage(bad)
    raw = layer_swap(host, {bad: {"bottom": 2}})
    found = validate.check(raw)
    assert len(found) == 1 and found[0].startswith("models[1].model: ") and words in found[0]
    assert "re-download" in found[0] or "re-save" in found[0]
    text = refused(tmp_path, raw, capsys)
    assert words in text and "Traceback" not in text


def test_tensor_the_swap_does_not_take_is_not_required(host, donor, tmp_path):
    """Only the tensors a swap takes from a donor are compared (layer 1 is the host's)."""
    bad = _variant(donor, tmp_path / "donor", {}, {"layers.1.mlp.up_proj": _grow(0, 2)})
    assert validate.check(layer_swap(host, {bad: {"top": 2}})) == []


def test_stock_mergekit_yaml_refuses_a_misshapen_donor(host, donor, tmp_path):
    bad = _variant(donor, tmp_path / "donor", {}, {"layers.0.mlp.up_proj": _grow(0, 2)})
    path = tmp_path / "swap.yml"
    path.write_text(yaml.safe_dump(layer_swap(host, {bad: {"bottom": 2}})))
    out = tmp_path / "out"
    mergekit_yaml = Path(sys.executable).with_name("mergekit-yaml")
    result = subprocess.run(
        [str(mergekit_yaml), str(path), str(out)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not out.exists()
    assert "tensor model.layers.0.mlp.up_proj.weight has shape [130, 64]" in result.stderr
