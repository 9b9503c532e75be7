"""Donors that would give a silently wrong model: tensors no merge would write (a donor's
tensors the host lacks, tensors no merge can place), configs that compute otherwise than
the host's, integer or quantised weights. Each is one line naming the field, exit 2,
before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY_LLAMA, layer_swap
from safetensors.torch import load_file, save_file

from mergekit_layerswap import cli, compat


def _edited(source: Path, out: Path, **config) -> Path:
    """A copy of `source` with config.json fields set (None: removed)."""
    shutil.copytree(source, out)
    settings = json.loads((out / "config.json").read_text()) | config
    settings = {k: v for k, v in settings.items() if v is not None}
    (out / "config.json").write_text(json.dumps(settings))
    return out


def _validate(tmp_path: Path, host: Path, donor: Path, capsys) -> tuple[int, str, str]:
    config = tmp_path / "swap.yml"
    config.write_text(yaml.safe_dump(layer_swap(host, {donor: {"bottom": 1, "top": 1}})))
    code = cli.main(["validate", str(config)])
    out, err = capsys.readouterr()
    return code, out, err


def _llama(out: Path, seed: int, **settings) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**TINY_LLAMA, architectures=["LlamaForCausalLM"], **settings)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def test_a_donor_tensor_the_host_lacks_is_refused_not_dropped(tmp_path, capsys):
    """Biases are carried (tests/test_architectures.py); a donor holding tensors the host
    lacks (biases its config is silent about) would lose them in the host's layout."""
    host = _llama(tmp_path / "host", 0)
    biased = _llama(tmp_path / "biased", 1, attention_bias=True, mlp_bias=True)
    donor = _edited(biased, tmp_path / "donor", attention_bias=None, mlp_bias=None)
    code, _, err = _validate(tmp_path, host, donor, capsys)
    assert code == 2
    assert "has tensor model.layers.0.mlp.down_proj.bias (13 more such), which the host" in err
    assert "re-download" not in err  # the files are fine: the message does not blame them


def test_tensors_no_merge_can_place_are_refused(tmp_path, capsys):
    """A layer past the config's count, or a tensor outside the layers that no mergekit
    definition places: one line each, nothing dropped silently."""
    host = _edited(_llama(tmp_path / "plain", 0), tmp_path / "host")
    weights = load_file(host / "model.safetensors")
    extra = {"model.layers.7.mlp.down_proj.weight": torch.ones(2), "model.mystery": torch.ones(2)}
    save_file(weights | extra, host / "model.safetensors", metadata={"format": "pt"})
    code, _, err = _validate(tmp_path, host, _llama(tmp_path / "donor", 1), capsys)
    assert code == 2
    assert "has tensor model.layers.7.mlp.down_proj.weight in a layer past the 4 layers" in err
    assert "has tensor model.mystery outside the layers that no mergekit 0.1.5" in err


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' differs from the host's 'silu'"),
        ({"rms_norm_eps": 1e-05}, "rms_norm_eps 1e-05 differs from the host's 1e-06"),
        (
            {"rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}},
            "rope {'rope_theta': 500000.0} differs from the host's {'rope_theta': 10000.0}",
        ),
    ],
)
def test_a_donor_that_computes_otherwise_is_refused(change, expected, make_model, tmp_path, capsys):
    host = make_model("llama", 4, seed=1)
    donor = _edited(make_model("llama", 4, seed=2), tmp_path / "donor", **change)
    code, _, err = _validate(tmp_path, host, donor, capsys)
    assert code == 2
    assert f"models[1].model: {expected} (config.json)" in err


def test_rope_written_by_transformers_4_equals_the_same_rope_in_transformers_5(
    make_model, tmp_path, capsys
):
    """A donor saved by an older transformers (top-level rope_theta) is not a difference."""
    host = make_model("llama", 4, seed=1)
    donor = _edited(
        make_model("llama", 4, seed=2), tmp_path / "donor", rope_parameters=None, rope_theta=10000.0
    )
    code, out, _ = _validate(tmp_path, host, donor, capsys)
    assert code == 0 and ": OK (4 layers)" in out


def test_fields_that_change_no_layer_are_notes(make_model, tmp_path, capsys):
    host = make_model("llama", 4, seed=1)
    donor = _edited(make_model("llama", 4, seed=2), tmp_path / "d", max_position_embeddings=64)
    code, out, _ = _validate(tmp_path, host, donor, capsys)
    assert code == 0
    assert "note: models[1].model: max_position_embeddings 64 differs from the host's" in out


def test_integer_and_quantised_donors_are_refused(make_model, tmp_path, capsys):
    host = make_model("llama", 4, seed=1)
    donor = make_model("llama", 4, seed=2)
    int8 = _edited(donor, tmp_path / "int8")
    tensors = load_file(int8 / "model.safetensors")
    save_file({k: (v * 100).to(torch.int8) for k, v in tensors.items()}, int8 / "model.safetensors")
    code, _, err = _validate(tmp_path, host, int8, capsys)
    assert code == 2 and "is I8" in err and "dequantise the model to bfloat16 first" in err
    quantised = _edited(donor, tmp_path / "q", quantization_config={"quant_method": "gptq"})
    code, _, err = _validate(tmp_path, host, quantised, capsys)
    assert code == 2 and "quantization_config (quant_method gptq)" in err


def test_unset_fields_are_not_compared():
    """An absent field is the architecture's default, which only transformers knows."""
    host = {"hidden_act": "silu", "rms_norm_eps": 1e-6}
    assert compat.config_differences(host, {"hidden_act": "silu"}) == ([], [])
    wrong, _ = compat.config_differences(host, {"hidden_act": "relu", "rms_norm_eps": 1e-6})
    assert wrong == ["hidden_act 'relu' differs from the host's 'silu'"]
