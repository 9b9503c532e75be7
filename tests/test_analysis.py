"""`mergekit-layerswap analyze` on synthetic experts with known, injected changes."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tiny
import torch
import yaml
from safetensors.torch import load_file, save_file

from mergekit_layerswap import analysis, cli

LAYERS = 8
OUTER = [0, 1, 6, 7]  # where the "language" expert changed
MIDDLE = [2, 3, 4, 5]  # where the "math" expert changed
MERGEKIT_YAML = Path(sys.executable).with_name("mergekit-yaml")


def _weights(model: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(model.glob("*.safetensors")):
        tensors |= load_file(file)
    return tensors


def write_expert(
    base: Path,
    out: Path,
    strong: list[int],
    *,
    seed: int,
    dtype: str = "bfloat16",
    shards: int = 1,
) -> Path:
    """A fine-tune of `base`: every tensor moves by 0.2 % of its RMS, tensors of the `strong`
    layers by 5 %; written in `dtype`, in `shards` files (with an index when more than one)."""
    shutil.copytree(base, out, ignore=shutil.ignore_patterns("*.safetensors*"))
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, weight in _weights(base).items():
        w = weight.float()
        layer = int(name.split(".")[2]) if ".layers." in name else None
        scale = 0.05 if layer in strong else 0.002
        noise = torch.randn(w.shape, generator=generator)
        tensors[name] = (w + scale * w.pow(2).mean().sqrt() * noise).to(getattr(torch, dtype))
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
        return out
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i::shards]}
        save_file(part, out / file, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, file)
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return out


@pytest.fixture(scope="module")
def family(make_model, tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama base and three experts: language (outer layers, sharded), math (middle
    layers) and a fp16 one that changed a little everywhere."""
    base = make_model("llama", LAYERS, seed=0)
    root = tmp_path_factory.mktemp("experts")
    return {
        "base": base,
        "swahili": write_expert(base, root / "swahili", OUTER, seed=1, shards=2),
        "math": write_expert(base, root / "math", MIDDLE, seed=2),
        "code": write_expert(base, root / "code", [], seed=3, dtype="float16"),
    }


@pytest.fixture(scope="module")
def result(family, tmp_path_factory) -> analysis.Analysis:
    experts = [(name, str(family[name])) for name in ("math", "swahili", "code")]
    out = tmp_path_factory.mktemp("analysis")
    return analysis.analyze(str(family["base"]), experts, out, host="math", donor="swahili")


def test_figures_show_where_each_expert_changed(result):
    swahili, maths = result.layer_change("swahili"), result.layer_change("math")
    assert min(swahili[i] for i in OUTER) > 5 * max(swahili[i] for i in MIDDLE)
    assert min(maths[i] for i in MIDDLE) > 5 * max(maths[i] for i in OUTER)
    # where the fine-tuning concentrated: the largest 1 % of changes
    top = {e: [result.cell(e, i, "total").top_share for i in range(LAYERS)] for e in result.experts}
    assert sum(top["swahili"][i] for i in OUTER) > 0.95
    assert sum(top["math"][i] for i in MIDDLE) > 0.95
    for expert in result.experts:
        cells = [r for r in result.rows if r.expert == expert and r.parameter != "total"]
        assert sum(r.top_share for r in cells) == pytest.approx(1.0)


def test_parameter_types_and_rows_come_from_mergekit(result):
    assert result.parameters == [
        "input_layernorm",
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "post_attention_layernorm",
        "up_proj",
        "gate_proj",
        "down_proj",
    ]
    outside = [name for layer, name in result.order if layer is None]
    assert outside == ["embed_tokens", "norm", "lm_head"]
    assert [layer for layer, _ in result.order if layer is not None] == list(range(LAYERS))
    assert result.summary["code"]["dtype"] == "float16"
    assert result.summary["swahili"]["dtype"] == "bfloat16"


@pytest.mark.parametrize("expert", ["swahili", "code"])
def test_figures_match_a_direct_computation(result, family, expert):
    """Every tensor's relative change and mean |ΔW|, and every row's top-1 % share, against
    the whole models held in memory (the exact top-k by sorting)."""
    base, other = _weights(family["base"]), _weights(family[expert])
    names = sorted(base)
    deltas = {n: other[n].float() - base[n].float() for n in names}
    for name in names:
        layer = int(name.split(".")[2]) if ".layers." in name else None
        cell = result.cell(expert, layer, name.split(".")[-2])
        assert cell.relative_change == pytest.approx(
            float(deltas[name].norm() / base[name].float().norm()), rel=1e-5
        )
        assert cell.mean_abs_change == pytest.approx(float(deltas[name].abs().mean()), rel=1e-5)
    flat = torch.cat([deltas[n].abs().reshape(-1) for n in names])
    k = math.ceil(analysis.TOP_FRACTION * flat.numel())
    assert result.summary[expert]["top_count"] == k
    owner = torch.cat([torch.full((deltas[n].numel(),), i) for i, n in enumerate(names)])
    counts = torch.bincount(owner[flat.topk(k).indices], minlength=len(names))
    exact: dict[tuple[int | None, str], float] = {}
    for name, count in zip(names, counts.tolist(), strict=True):
        layer = int(name.split(".")[2]) if ".layers." in name else None
        key = (layer, "total") if layer is not None else (None, name.split(".")[-2])
        exact[key] = exact.get(key, 0.0) + count / k
    # the threshold's bin is apportioned (in fp16/bf16 it mostly holds ties of one value)
    bound = result.summary[expert]["top_boundary_share"]
    for (layer, parameter), share in exact.items():
        assert abs(result.cell(expert, layer, parameter).top_share - share) <= bound + 1e-9


def test_outputs(result):
    out = result.files[0].parent
    names = {p.name for p in result.files}
    assert names == {
        "analysis.json",
        "analysis.csv",
        "heatmap-math.png",
        "heatmap-swahili.png",
        "heatmap-code.png",
        "layers.png",
        "suggested-layerswap.yml",
        "report.md",
    }
    data = json.loads((out / "analysis.json").read_text())
    assert data["num_layers"] == LAYERS and data["architecture"] == "LlamaForCausalLM"
    with open(out / "analysis.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(data["rows"]) == len(result.rows)
    # 3 experts x (8 layers x (9 types + total) + embeddings, norm, head)
    assert len(table) == 3 * (LAYERS * 10 + 3)
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| layer 7 |" in report and "| embed_tokens |" in report
    assert "take the donor's layers 0-1 (bottom: 2) and layers 6-7 (top: 2)" in report


def test_suggestion_claims_exactly_the_injected_outer_layers(result, family):
    s = result.suggestion
    assert (s.host, s.donor, s.bottom, s.top, s.transition) == ("math", "swahili", 2, 2, 1)
    text = (result.files[0].parent / analysis.SUGGESTION_FILE).read_text()
    config = yaml.safe_load(text)
    host, donor = str(family["math"].resolve()), str(family["swahili"].resolve())
    assert config == {
        "merge_method": "layer_swap",
        "base_model": host,
        "models": [{"model": host}, {"model": donor, "parameters": {"bottom": 2, "top": 2}}],
        "parameters": {"transition": 1},
        "dtype": "bfloat16",
    }
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert any("r_donor(l) > 1 x r_host(l)" in line for line in comments)
    assert sum("<- donor" in line for line in comments) == 4  # one row per layer, with numbers


@pytest.mark.slow
def test_suggested_config_runs_with_stock_mergekit_yaml(result, family, tmp_path):
    config = result.files[0].parent / analysis.SUGGESTION_FILE
    run = subprocess.run(
        [str(MERGEKIT_YAML), str(config), str(tmp_path / "merged")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    merged = _weights(tmp_path / "merged")
    host, donor = _weights(family["math"]), _weights(family["swahili"])
    for layer in range(LAYERS):
        name = f"model.layers.{layer}.mlp.down_proj.weight"
        if layer in OUTER:
            assert torch.equal(merged[name], donor[name])
        elif layer in (2, 5):  # transition 1: a half/half blend next to each block
            blend = (host[name].float() + donor[name].float()) / 2
            torch.testing.assert_close(merged[name].float(), blend, rtol=1e-2, atol=1e-3)
        else:
            assert torch.equal(merged[name], host[name])


@pytest.mark.parametrize(
    ("host", "donor", "bottom", "top", "transition"),
    [
        ([1, 1, 5, 5, 5, 1], [2, 2, 1, 1, 1, 2], 2, 1, 1),
        ([1, 1, 5, 1, 1, 1], [2, 2, 1, 2, 2, 2], 2, 3, 0),  # one host layer: no room to blend
        ([1, 1, 1, 1], [2, 2, 2, 2], 4, 0, 0),  # the donor everywhere
        ([1, 1, 1, 1], [0.5, 2, 2, 0.5], 0, 0, 0),  # middle only: nothing to swap
        ([5, 5, 5, 1], [1, 1, 1, 2], 0, 1, 1),
    ],
)
def test_suggestion_rule(host, donor, bottom, top, transition):
    s = analysis.suggest("h", "d", host, donor)
    assert (s.bottom, s.top, s.transition) == (bottom, top, transition)
    assert ("no swap" in s.describe()) == (not bottom and not top)


def test_ratio_raises_the_bar():
    assert analysis.suggest("h", "d", [1, 1, 1], [1.5, 3, 1], ratio=2).bottom == 0
    assert analysis.suggest("h", "d", [1, 1, 1], [2.5, 3, 1], ratio=2).bottom == 2


_HF_NAMES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
}


@pytest.mark.parametrize("arch", tiny.ARCHITECTURES)
def test_parameter_types_for_every_tiny_architecture(arch, tmp_path):
    config = tiny.tiny_config(arch, 3, 320)
    config.architectures = [_HF_NAMES[arch]]
    config.save_pretrained(tmp_path)
    layout = analysis.read_layout("base", tmp_path)
    assert layout.num_layers == 3
    types = {role.parameter for role in layout.roles if role.layer is not None}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= types
    assert {"input_layernorm", "post_attention_layernorm"} <= types
    extra = {
        "qwen2": {"q_proj.bias", "k_proj.bias", "v_proj.bias"},
        "qwen3": {"q_norm", "k_norm"},
        "gemma2": {"pre_feedforward_layernorm", "post_feedforward_layernorm"},
    }
    assert extra.get(arch, set()) <= types
    assert [r.parameter for r in layout.roles if r.layer is None] == [
        "embed_tokens",
        "norm",
        "lm_head",
    ]


def test_cli_tied_gemma2_without_host_or_donor(make_model, tmp_path, capsys):
    base = make_model("gemma2", 4, seed=0, tie=True)
    expert = write_expert(base, tmp_path / "expert", [0], seed=5)
    out = tmp_path / "out"
    argv = ["analyze", "--base", str(base), "--expert", f"only={expert}", "--output", str(out)]
    assert cli.main([*argv, "--quiet"]) == 0
    data = json.loads((out / "analysis.json").read_text())
    rows = {(r["layer"], r["parameter"]) for r in data["rows"]}
    assert (None, "embed_tokens") in rows and (None, "lm_head") not in rows  # tied head
    assert (3, "pre_feedforward_layernorm") in rows
    assert not (out / analysis.SUGGESTION_FILE).exists()
    assert "Pass `--host` and `--donor`" in (out / "report.md").read_text()
    assert "wrote" in capsys.readouterr().out


def test_cli_no_outer_layer_won_writes_no_config(family, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(
        [
            "analyze",
            "--base",
            str(family["base"]),
            "--expert",
            f"swahili={family['swahili']}",
            "--expert",
            f"math={family['math']}",
            "--output",
            str(out),
            "--quiet",
            "--host",
            "swahili",
            "--donor",
            "math",
        ]
    )
    assert code == 0
    assert "no outer layer changed more in math than in swahili" in capsys.readouterr().out
    assert not (out / analysis.SUGGESTION_FILE).exists()


@pytest.fixture(scope="module")
def broken(family, make_model, tmp_path_factory) -> dict[str, Path]:
    """Experts that do not fit the base."""
    root = tmp_path_factory.mktemp("broken")
    narrow = root / "narrow"
    shutil.copytree(family["math"], narrow)
    tensors = load_file(narrow / "model.safetensors")
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"][:-8].clone()
    save_file(tensors, narrow / "model.safetensors", metadata={"format": "pt"})
    shard_lost = root / "shard-lost"
    shutil.copytree(family["swahili"], shard_lost)
    (shard_lost / "model-00002-of-00002.safetensors").unlink()
    pickled = root / "pickled"
    shutil.copytree(family["math"], pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    return {
        "narrow": narrow,
        "shard_lost": shard_lost,
        "pickled": pickled,
        "shallow": make_model("llama", 6),
    }


@pytest.mark.parametrize(
    ("experts", "extra", "message"),
    [
        (["a=narrow"], [], "expert 'a': tensor model.embed_tokens.weight has shape ["),
        (["a=shallow"], [], "expert 'a' has 6 layers, the base has 8"),
        (["a=shard_lost"], [], "shard model-00002-of-00002.safetensors named in"),
        (["a=pickled"], [], "holds pickled (.bin) weights; analyze reads safetensors"),
        (["a=/nonexistent/model"], [], "a: /nonexistent/model: no such model directory"),
        (["a=nobody/no-such-model"], [], "could not be fetched from the Hugging Face Hub"),
        (["a=math", "a=swahili"], [], "expert 'a' is given twice"),
        (["a=math", "b=math"], [], "experts 'a' and 'b' are the same model"),
        (["a=math", "b=swahili"], ["--host", "a", "--donor", "c"], "--donor 'c' is not among"),
        (["a=math", "b=swahili"], ["--host", "a"], "give --host and --donor together"),
        (["a=math", "b=swahili"], ["--host", "a", "--donor", "a"], "two different experts"),
        (["math"], [], "--expert takes NAME=MODEL, got 'math'"),
        (["a/b=math"], [], "expert name 'a/b' may hold only"),
    ],
)
def test_bad_input_is_one_line_before_any_tensor_is_read(
    family, broken, tmp_path, capsys, experts, extra, message
):
    paths = {**family, **broken}
    argv = ["analyze", "--base", str(family["base"]), "--output", str(tmp_path / "out")]
    for spec in experts:
        name, _, model = spec.rpartition("=")
        argv += ["--expert", f"{name}={paths.get(model, model)}" if name else spec]
    assert cli.main([*argv, *extra, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mergekit-layerswap analyze: error: ") and "\n" not in err
    assert message in err
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_is_refused(family, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("not a folder")
    argv = ["analyze", "--base", str(family["base"]), "--expert", f"a={family['math']}"]
    assert cli.main([*argv, "--output", str(out), "--quiet"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_torch_threads_are_the_callers(family, tmp_path, monkeypatch):
    """`analysis.analyze` leaves torch's thread count to its caller; the `analyze` command
    runs with `--threads` and restores the count after."""
    import torch

    from mergekit_layerswap.analysis import measure

    before = torch.get_num_threads()
    seen = []
    real = measure._stream_expert

    def stream_expert(*args, **kwargs):  # a spy: the real pass still runs
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(measure, "_stream_expert", stream_expert)
    experts = [("math", str(family["math"]))]
    analysis.analyze(str(family["base"]), experts, tmp_path / "api")
    argv = ["analyze", "--base", str(family["base"]), "--expert", f"math={family['math']}"]
    assert cli.main([*argv, "--output", str(tmp_path / "cli"), "--quiet", "--threads", "2"]) == 0
    assert seen == [before, 2] and torch.get_num_threads() == before
