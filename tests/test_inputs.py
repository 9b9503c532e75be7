"""Bad input files found before any merge (issue 22.6): an index that disagrees with its
shards, LoRA adapters that cannot be merged, safetensors headers whose offsets do not fit
the shapes, config files too large or nested too deep; and inputs wrongly refused: YAML
merge keys, untied configs that leave tie_word_embeddings out."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import transformers
from helpers import layer_swap, make_adapter, refused
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from mergekit_layerswap import checkpoint, cli, hf_defaults, validate
from mergekit_layerswap.errors import InputError
from mergekit_layerswap.suite.schema import parse_suite


@pytest.fixture(scope="module")
def host(make_model) -> Path:
    return make_model("llama", 8, seed=1)


@pytest.fixture(scope="module")
def donor(make_model) -> Path:
    return make_model("llama", 8, seed=2)


def _one_line(raw: dict, tmp_path: Path, capsys, words: str) -> None:
    """`validate` finds one problem, on the donor, holding `words`; `merge` refuses it."""
    found = validate.check(raw)
    assert len(found) == 1 and found[0].startswith("models[1].model: "), found
    assert words in found[0], found
    text = refused(tmp_path, raw, capsys)
    assert words in text and "Traceback" not in text


def _sharded(source: Path, out: Path) -> dict[str, str]:
    """A copy of `source` in two shards with an index; returns its weight map."""
    shutil.copytree(source, out)
    tensors = load_file(out / "model.safetensors")
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for shard, held in shards.items():
        save_file({n: tensors[n] for n in held}, out / shard, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(held, shard)
    (out / "model.safetensors").unlink()
    return weight_map


def _write_index(folder: Path, weight_map: dict[str, str]) -> None:
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / checkpoint.INDEX).write_text(json.dumps(index))


def test_index_that_puts_a_tensor_in_the_wrong_shard_is_one_line(host, donor, tmp_path, capsys):
    bad = tmp_path / "donor"
    weight_map = _sharded(donor, bad)
    _write_index(bad, weight_map)
    assert validate.check(layer_swap(host, {bad: {"bottom": 2}})) == []  # sharded, right
    name = "model.layers.0.mlp.down_proj.weight"
    other = next(s for s in set(weight_map.values()) if s != weight_map[name])
    _write_index(bad, {**weight_map, name: other})
    words = f"puts tensor {name} in {other}, which does not hold it (1 of"
    _one_line(layer_swap(host, {bad: {"bottom": 2}}), tmp_path, capsys, words)


def _rewrite_header(path: Path, change) -> None:
    """`path` with its safetensors header changed by `change` (tensor bytes kept)."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    change(header)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length :])


def _halve_norm(header: dict) -> None:
    header["model.norm.weight"]["shape"] = [32]


def _append(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\0" * 16)


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda p: _rewrite_header(p, _halve_norm), "tensor model.norm.weight lies at bytes"),
        (_append, "16 bytes follow its last tensor"),
    ],
    ids=["offsets unlike dtype x shape", "bytes after the last tensor"],
)
def test_header_offsets_that_do_not_fit_the_shapes_are_one_line(
    host, donor, tmp_path, capsys, damage, words
):
    """What safetensors itself refuses when mergekit loads the file."""
    bad = tmp_path / "donor"
    shutil.copytree(donor, bad)
    damage(bad / "model.safetensors")
    with pytest.raises(SafetensorError):
        safe_open(str(bad / "model.safetensors"), "pt")
    _one_line(layer_swap(host, {bad: {"top": 2}}), tmp_path, capsys, words)


@pytest.fixture(scope="module")
def adapter(donor, tmp_path_factory) -> Path:
    return make_adapter(donor, tmp_path_factory.mktemp("adapters") / "adapter")


def test_a_lora_adapter_that_fits_passes(host, donor, adapter):
    assert validate.check(layer_swap(host, {f"{donor}+{adapter}": {"bottom": 2}})) == []


def _no_config(folder: Path) -> None:
    (folder / "adapter_config.json").unlink()


def _truncate(folder: Path) -> None:
    path = folder / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (shutil.rmtree, "no such folder"),
        (_no_config, "unreadable adapter_config.json"),
        (_truncate, "adapter_model.safetensors: truncated"),
    ],
    ids=["missing folder", "no adapter_config.json", "truncated adapter_model.safetensors"],
)
def test_broken_lora_adapter_is_one_line_before_the_merge(
    host, donor, adapter, tmp_path, capsys, damage, words
):
    bad = tmp_path / "adapter"
    shutil.copytree(adapter, bad)
    damage(bad)
    raw = layer_swap(host, {f"{donor}+{bad}": {"bottom": 2}})
    _one_line(raw, tmp_path, capsys, f"LoRA adapter {bad}")
    assert words in validate.check(raw)[0]


def test_lora_adapter_for_another_hidden_size_is_one_line(
    make_model, host, donor, tmp_path, capsys
):
    wide = make_adapter(make_model("llama", 8, seed=8, hidden_size=96), tmp_path / "wide")
    raw = layer_swap(host, {f"{donor}+{wide}": {"bottom": 2}})
    words = "lora_A.weight has shape [4, 96], which does not fit model.layers.0.self_attn"
    _one_line(raw, tmp_path, capsys, words)


def test_lora_adapter_is_checked_for_every_merge_method(host, donor, tmp_path, capsys):
    """A linear merge's `model+adapter`: one line from `merge` and from a suite's check."""
    missing = tmp_path / "nope"
    weight = {"weight": 0.5}
    raw = {
        "merge_method": "linear",
        "models": [
            {"model": str(host), "parameters": weight},
            {"model": f"{donor}+{missing}", "parameters": weight},
        ],
        "dtype": "bfloat16",
    }
    words = f"models[1].model: LoRA adapter {missing}: no such folder"
    assert words in refused(tmp_path, raw, capsys)
    models = [
        {"model": "host", "parameters": weight},
        {"model": f"donor+{missing}", "parameters": weight},
    ]
    suite = {
        "models": {"host": str(host), "donor": str(donor)},
        "merges": [{**raw, "name": "soup", "models": models}],
        "evaluation": {"languages": ["sw"]},
    }
    with pytest.raises(InputError) as error:
        parse_suite(suite, tmp_path)
    (problem,) = [p for p in error.value.problems if "LoRA" in p]
    assert problem.startswith(f"soup: {words}; ")


def test_yaml_merge_keys_are_accepted(host, donor, tmp_path, capsys):
    """`<<: *defaults`, which PyYAML and the stock mergekit-yaml read; a key given twice in
    one mapping is still refused."""
    text = f"""
defaults: &swap {{bottom: 2, top: 1}}
merge_method: layer_swap
base_model: {host}
models:
  - model: {host}
  - model: {donor}
    parameters:
      <<: *swap
      top: 2
"""
    raw = validate.load(_write(tmp_path / "swap.yml", text))
    assert raw["models"][1]["parameters"] == {"bottom": 2, "top": 2}
    twice = _write(tmp_path / "twice.yml", text.replace("top: 2", "top: 2\n      top: 3"))
    assert cli.main(["validate", str(twice)]) == 2
    assert "key 'top' is given twice" in capsys.readouterr().err


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"])
def test_tie_default_is_the_config_class_default(model_type):
    """Read from transformers' source without torch; equal to what its class gives."""
    config = transformers.AutoConfig.for_model(model_type)
    assert hf_defaults.tied(model_type) is bool(config.tie_word_embeddings)


def _without_tie_key(source: Path, out: Path) -> Path:
    shutil.copytree(source, out)
    config = json.loads((out / "config.json").read_text())
    config.pop("tie_word_embeddings", None)
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_untied_llama_config_without_the_key_takes_a_bottom_only_swap(host, donor, tmp_path):
    """transformers reads Llama without tie_word_embeddings as untied; so does validate."""
    bare_host = _without_tie_key(host, tmp_path / "host")
    bare_donor = _without_tie_key(donor, tmp_path / "donor")
    assert validate.check(layer_swap(bare_host, {bare_donor: {"bottom": 2}})) == []


def test_gemma_config_without_the_key_stays_tied(make_model, tmp_path):
    bare_host = _without_tie_key(make_model("gemma2", 4, seed=1, tie=True), tmp_path / "host")
    bare_donor = _without_tie_key(make_model("gemma2", 4, seed=2, tie=True), tmp_path / "donor")
    (problem,) = validate.check(layer_swap(bare_host, {bare_donor: {"bottom": 2}}))
    assert "the models tie the head to the embeddings" in problem


def test_dev_zero_is_refused_without_reading_it_all(capsys):
    assert cli.main(["validate", "/dev/zero"]) == 2
    assert "/dev/zero: holds more than 64 MiB" in capsys.readouterr().err


def test_yaml_nested_thousands_deep_is_one_line(tmp_path, capsys):
    path = _write(tmp_path / "deep.yml", "merge_method: " + "[" * 5000 + "]" * 5000)
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "nested deeper than 100 levels" in err and "Traceback" not in err


def test_config_json_nested_thousands_deep_is_one_line(host, donor, tmp_path, capsys):
    bad = tmp_path / "donor"
    shutil.copytree(donor, bad)
    (bad / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    _one_line(layer_swap(host, {bad: {"bottom": 2}}), tmp_path, capsys, "nested too deep")
