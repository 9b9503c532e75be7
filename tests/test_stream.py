"""The streamed writer: safetensors layout and sharding equal to safetensors' and mergekit's
own writers byte for byte, all-or-nothing files, and whole merges equal to mergekit's
per-tensor executor (the stock `mergekit-yaml`, with and without streaming)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import layer_swap, tensors
from safetensors.torch import save_file

from mergekit_layerswap import stream
from mergekit_layerswap.stream_swap import STREAM_ENV

MERGEKIT_YAML = Path(sys.executable).with_name("mergekit-yaml")


def sample_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)

    def rand(*shape, dtype=torch.float32):
        return torch.randn(shape, generator=generator).to(dtype)

    return {
        "model.embed_tokens.weight": rand(50, 8, dtype=torch.bfloat16),
        "model.layers.0.mlp.weight": rand(8, 8, dtype=torch.bfloat16),
        "model.layers.10.mlp.weight": rand(8, 8, dtype=torch.bfloat16),
        "model.layers.2.mlp.weight": rand(16, 8, dtype=torch.float16),
        "model.norm.weight": rand(8),
        "lm_head.weight": rand(50, 8, dtype=torch.float64),
        "scalar": rand(dtype=torch.float32),
        "empty": rand(0, 3, dtype=torch.bfloat16),
        "ids": torch.arange(7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "bytes": torch.arange(5, dtype=torch.uint8),
    }


def split_sources(tmp_path: Path, data: dict[str, torch.Tensor]) -> dict[str, stream.Stored]:
    """Store `data` across two files (every other tensor), as the writer's inputs."""
    names = list(data)
    for index, part in enumerate((names[::2], names[1::2])):
        save_file({n: data[n] for n in part}, tmp_path / f"in{index}.safetensors")
    stored = {}
    for index in range(2):
        stored |= stream.read_header(str(tmp_path / f"in{index}.safetensors"))
    return stored


def as_output(data, stored, computed=("model.norm.weight",)) -> list[stream.OutputTensor]:
    """Copies of the stored tensors, except `computed` ones, which come from a callback."""
    out = []
    for name, tensor in data.items():
        item = stored[name]
        if name in computed:
            raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
            out.append(
                stream.OutputTensor(name, item.dtype, item.shape, compute=lambda read, r=raw: r)
            )
        else:
            out.append(stream.OutputTensor(name, item.dtype, item.shape, source=item))
    return out


def test_single_file_is_byte_identical_to_save_file(tmp_path):
    data = sample_tensors()
    stored = split_sources(tmp_path, data)
    names = stream.write_model(tmp_path / "ours", as_output(data, stored), quiet=True)
    save_file(data, tmp_path / "reference.safetensors", metadata={"format": "pt"})
    assert names == ["model.safetensors"]
    ours = (tmp_path / "ours" / "model.safetensors").read_bytes()
    assert ours == (tmp_path / "reference.safetensors").read_bytes()
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["model.safetensors"]


def test_shards_and_index_match_mergekits_tensor_writer(tmp_path):
    from mergekit.io.tensor_writer import TensorWriter

    data = sample_tensors()
    stored = split_sources(tmp_path, data)
    limit = 900  # bytes: several shards, some tensors alone in theirs
    writer = TensorWriter(str(tmp_path / "mergekit"), max_shard_size=limit)
    for name, tensor in data.items():
        writer.save_tensor(name, tensor)
    writer.finalize()
    names = stream.write_model(
        tmp_path / "ours",
        as_output(data, stored),
        max_shard_size=limit,
        index_metadata={"mergekit_version": "0.1.5"},
        quiet=True,
    )
    theirs = sorted(p.name for p in (tmp_path / "mergekit").iterdir())
    assert len(names) > 2 and sorted([*names, "model.safetensors.index.json"]) == theirs
    ours, mergekit = tmp_path / "ours", tmp_path / "mergekit"
    for name in theirs:
        assert (ours / name).read_bytes() == (mergekit / name).read_bytes(), name


def test_a_failed_write_leaves_no_model_file(tmp_path):
    data = sample_tensors()
    stored = split_sources(tmp_path, data)
    tensors_out = as_output(data, stored)
    norm = next(i for i, t in enumerate(tensors_out) if t.name == "model.norm.weight")
    short = stream.OutputTensor("model.norm.weight", "F32", (8,), compute=lambda read: b"\0" * 4)
    tensors_out[norm] = short
    with pytest.raises(ValueError, match="computed 4 bytes, expected 32"):
        stream.write_model(tmp_path / "out", tensors_out, max_shard_size=900, quiet=True)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("system", ["filesystem without copy_file_range", "macOS"])
def test_copies_without_copy_file_range(system, tmp_path, monkeypatch):
    """Filesystems refusing copy_file_range (EXDEV, ENOSYS, ...) and systems without it or
    posix_fadvise get a read/write copy with the same bytes."""
    data = sample_tensors()
    stored = split_sources(tmp_path, data)

    def unsupported(*args):
        raise OSError(errno.EXDEV, "cross-device")

    if system == "macOS":
        monkeypatch.delattr(os, "copy_file_range")
        monkeypatch.delattr(os, "posix_fadvise")
    else:
        monkeypatch.setattr(os, "copy_file_range", unsupported)
    stream.write_model(tmp_path / "ours", as_output(data, stored, computed=()), quiet=True)
    save_file(data, tmp_path / "reference.safetensors", metadata={"format": "pt"})
    ours = (tmp_path / "ours" / "model.safetensors").read_bytes()
    assert ours == (tmp_path / "reference.safetensors").read_bytes()


def run_mergekit(raw: dict, parent: Path, *args: str, stream_on: bool = True) -> Path:
    parent.mkdir()
    config = parent / "config.yml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, STREAM_ENV: "1" if stream_on else "0"}
    result = subprocess.run(
        [str(MERGEKIT_YAML), str(config), str(parent / "merged"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return parent / "merged"


CASES = {
    "llama bottom+top, transition 1": ("llama", {"bottom": 2, "top": 1}, {"transition": 1}, {}),
    "gemma2 (tied head)": ("gemma2", {"top": 2}, {}, {}),
    "qwen3 middle, transition 2, float32 math": (
        "qwen3",
        {"layers": "3-4"},
        {"transition": 2},
        {"dtype": "float32"},
    ),
    "mistral, float16 output": ("mistral", {"bottom": 3}, {}, {"out_dtype": "float16"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_streamed_merge_equals_mergekits_executor_file_for_file(case, make_model, tmp_path):
    arch, claim, parameters, extra = CASES[case]
    host, donor = make_model(arch, 8, seed=1), make_model(arch, 8, seed=2)
    raw = layer_swap(host, {donor: claim}, **parameters) | extra
    streamed = run_mergekit(raw, tmp_path / "streamed")
    executed = run_mergekit(raw, tmp_path / "executed", stream_on=False)
    files = sorted(p.name for p in executed.iterdir())
    assert sorted(p.name for p in streamed.iterdir()) == files
    assert "model.safetensors" in files and "tokenizer.json" in files
    for name in files:
        assert (streamed / name).read_bytes() == (executed / name).read_bytes(), name


def reshard(model: Path, out: Path, shards: int) -> Path:
    """A copy of `model` whose weights are split over `shards` files plus an index, as Hub
    checkpoints are."""
    out.mkdir()
    for path in model.iterdir():
        if path.suffix != ".safetensors":
            (out / path.name).write_bytes(path.read_bytes())
    data = tensors(model)
    names = sorted(data)
    weight_map = {}
    for index in range(shards):
        shard = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = names[index::shards]
        save_file({n: data[n] for n in part}, out / shard, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, shard)
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    return out


@pytest.mark.slow
def test_sharded_inputs_stream_the_same_files(make_model, tmp_path):
    host = reshard(make_model("llama", 8, seed=1), tmp_path / "host", 3)
    donor = reshard(make_model("llama", 8, seed=2), tmp_path / "donor", 2)
    raw = layer_swap(host, {donor: {"bottom": 2, "layers": "5-6"}}, transition=1)
    streamed = run_mergekit(raw, tmp_path / "streamed", "--no-copy-tokenizer")
    executed = run_mergekit(raw, tmp_path / "executed", "--no-copy-tokenizer", stream_on=False)
    files = sorted(p.name for p in executed.iterdir())
    assert sorted(p.name for p in streamed.iterdir()) == files
    for name in files:
        assert (streamed / name).read_bytes() == (executed / name).read_bytes(), name


@pytest.mark.slow
def test_streamed_shards_hold_the_same_tensors(make_model, tmp_path):
    host, donor = make_model("llama", 8, seed=1), make_model("llama", 8, seed=2)
    raw = layer_swap(host, {donor: {"bottom": 2, "top": 2}}, transition=1)
    args = ("--out-shard-size", "200000", "--no-copy-tokenizer")
    streamed = run_mergekit(raw, tmp_path / "streamed", *args)
    executed = run_mergekit(raw, tmp_path / "executed", *args, stream_on=False)
    ours, theirs = tensors(streamed), tensors(executed)
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    index = json.loads((streamed / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(ours)
    assert len(set(index["weight_map"].values())) > 1
    assert all((streamed / shard).is_file() for shard in index["weight_map"].values())


def planned_tasks(raw: dict, out: Path) -> list[str]:
    """The task types mergekit's planner returns for `raw` (with our hook installed)."""
    from mergekit.architecture import get_architecture_info
    from mergekit.config import MergeConfiguration
    from mergekit.io.tasks import LoaderCache
    from mergekit.options import MergeOptions
    from mergekit.plan import MergePlanner
    from transformers import AutoConfig

    config, options = MergeConfiguration.model_validate(raw), MergeOptions()
    LoaderCache().setup(options)
    planner = MergePlanner(
        config,
        get_architecture_info(config, options),
        options=options,
        out_model_config=AutoConfig.from_pretrained(raw["base_model"]),
    )
    return sorted({type(task).__name__ for task in planner.plan_to_disk(str(out))})


def test_planner_hook_streams_what_it_can_and_leaves_the_rest_to_mergekit(
    make_model, tmp_path, monkeypatch
):
    """Pinned hook point: run_merge executes what MergePlanner.plan_to_disk returns."""
    import inspect

    import mergekit.merge

    assert ".plan_to_disk(" in inspect.getsource(mergekit.merge.run_merge)
    host, donor = make_model("llama", 8, seed=1), make_model("llama", 8, seed=2)
    raw = layer_swap(host, {donor: {"bottom": 2}}, transition=1)
    assert planned_tasks(raw, tmp_path) == ["StreamSwap"]
    # a tokenizer section re-maps embeddings: mergekit's own tasks do it
    tokenized = raw | {"tokenizer_source": "base"}
    assert "StreamSwap" not in planned_tasks(tokenized, tmp_path)
    monkeypatch.setenv(STREAM_ENV, "0")
    assert planned_tasks(raw, tmp_path) == ["FinalizeModel", "SaveTensor"]
