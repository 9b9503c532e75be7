"""Strangers' checkpoints: a tiny model of every decoder family mergekit 0.1.5 defines and
transformers 5 builds, made and saved by transformers as a user's would be, swapped
`bottom: 1, top: 1` through the stock `mergekit-yaml` (streamed, and through mergekit's
executor with MERGEKIT_LAYERSWAP_STREAM=0).

Exact means: the output has the host's tensor names, every tensor is bit-identical to the
donor's (embeddings, layers 0 and 3, final norm and head) or the host's (layers 1-2), both
ways write the same files, and transformers loads the output with no missing or unexpected
key. Also: pickled (`.bin`) checkpoints keep their biases, and a transition blends biases the
same both ways. The table in docs/architectures.md is `table()` of FAMILIES (a test
checks it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY_LLAMA, layer_swap, tensors

pytestmark = pytest.mark.slow
DOC = Path(__file__).resolve().parents[1] / "docs" / "architectures.md"
EXACT = "exact"
NOT_DEFINED = "refused (exit 2): mergekit 0.1.5 defines no such single-stack model"
_LLAMA_LIKE = dict(
    TINY_LLAMA, pad_token_id=0
)  # within the tiny vocabulary (GLM-4's default is not)
_GPT2_LIKE = dict(vocab_size=64, n_positions=64, n_embd=32, n_layer=4, n_head=4)
_MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)

#: the table's name -> (transformers config class, its settings, the swap's outcome)
FAMILIES: dict[str, tuple[str, dict, str]] = {
    "Llama": ("LlamaConfig", _LLAMA_LIKE, EXACT),
    "Llama, attention and MLP biases": (
        "LlamaConfig",
        _LLAMA_LIKE | {"attention_bias": True, "mlp_bias": True},
        EXACT,
    ),
    "Mistral": ("MistralConfig", _LLAMA_LIKE, EXACT),
    "Mixtral": (
        "MixtralConfig",
        _LLAMA_LIKE | {"num_local_experts": 4, "num_experts_per_tok": 2},
        EXACT,
    ),
    "Qwen2": ("Qwen2Config", _LLAMA_LIKE, EXACT),
    "Qwen3": ("Qwen3Config", _LLAMA_LIKE | {"head_dim": 8}, EXACT),
    "Qwen3-MoE": ("Qwen3MoeConfig", _LLAMA_LIKE | _MOE | {"head_dim": 8, "num_experts": 4}, EXACT),
    "Gemma": ("GemmaConfig", _LLAMA_LIKE | {"head_dim": 8}, EXACT),
    "Gemma 2": ("Gemma2Config", _LLAMA_LIKE | {"head_dim": 8}, EXACT),
    "Gemma 3 (text)": ("Gemma3TextConfig", _LLAMA_LIKE | {"head_dim": 8}, EXACT),
    "Phi-3 (fused qkv and gate_up)": ("Phi3Config", _LLAMA_LIKE, EXACT),
    "Phi-2": ("PhiConfig", _LLAMA_LIKE, EXACT),
    "OLMo 2": ("Olmo2Config", _LLAMA_LIKE, EXACT),
    "Granite": ("GraniteConfig", _LLAMA_LIKE, EXACT),
    "Starcoder2": ("Starcoder2Config", _LLAMA_LIKE, EXACT),
    "Cohere": ("CohereConfig", _LLAMA_LIKE, EXACT),
    "Cohere2": ("Cohere2Config", _LLAMA_LIKE, EXACT),
    "StableLM": ("StableLmConfig", _LLAMA_LIKE, EXACT),
    "GLM-4": ("Glm4Config", _LLAMA_LIKE | {"head_dim": 8}, EXACT),
    "GLM-4-MoE": (
        "Glm4MoeConfig",
        _LLAMA_LIKE | _MOE | {"head_dim": 8, "n_routed_experts": 4, "first_k_dense_replace": 1},
        EXACT,
    ),
    "AFMoE": (
        "AfmoeConfig",
        _LLAMA_LIKE | _MOE | {"head_dim": 8, "num_experts": 4, "global_attn_every_n_layers": 2},
        EXACT,
    ),
    "LFM2": ("Lfm2Config", _LLAMA_LIKE | {"layer_types": ["conv", "full_attention"] * 2}, EXACT),
    "Granite 4 (hybrid MoE)": (
        "GraniteMoeHybridConfig",
        _LLAMA_LIKE
        | {"num_local_experts": 4, "num_experts_per_tok": 2, "shared_intermediate_size": 32}
        | {"mamba_n_heads": 4, "mamba_d_state": 8, "mamba_chunk_size": 16}
        | {"layer_types": ["linear_attention", "attention"] * 2},
        EXACT,
    ),
    "Arcee": ("ArceeConfig", _LLAMA_LIKE, EXACT),
    "Apertus": ("ApertusConfig", _LLAMA_LIKE, EXACT),
    "GPT-NeoX": (
        "GPTNeoXConfig",
        {k: v for k, v in _LLAMA_LIKE.items() if k != "num_key_value_heads"},
        EXACT,
    ),
    "Falcon": (
        "FalconConfig",
        dict(vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4),
        EXACT,
    ),
    "GPT-2": ("GPT2Config", _GPT2_LIKE, EXACT),
    "GPTBigCode": ("GPTBigCodeConfig", _GPT2_LIKE, EXACT),
    "Mamba": (
        "MambaConfig",
        dict(vocab_size=64, hidden_size=32, num_hidden_layers=4, state_size=4),
        EXACT,
    ),
    "Qwen2-MoE (not in mergekit)": (
        "Qwen2MoeConfig",
        _LLAMA_LIKE | _MOE | {"num_experts": 4, "shared_expert_intermediate_size": 32},
        NOT_DEFINED,
    ),
}


def table() -> str:
    """FAMILIES as docs/architectures.md's Markdown table."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    rows = ["| family | `architectures` | `bottom: 1, top: 1` swap |", "|---|---|---|"]
    for name, (config_class, _, outcome) in FAMILIES.items():
        model_type = getattr(__import__("transformers"), config_class).model_type
        rows.append(f"| {name} | `{MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]}` | {outcome} |")
    return "\n".join(rows)


def build(family: str, seed: int, out: Path) -> Path:
    """A tiny model of `family`, every float tensor drawn at random (no two models alike,
    biases and norms included), saved by transformers."""
    import transformers

    config_class, settings, _ = FAMILIES[family]
    config = getattr(transformers, config_class)(**settings)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    for tensor in model.state_dict().values():
        if tensor.is_floating_point():
            tensor.normal_()
    model.save_pretrained(out)
    return out


def swap_config(host: Path, donor: Path, out: Path) -> Path:
    """The bottom 1 / top 1 swap, without `dtype:` so each tensor keeps its own (GLM-4-MoE's
    router bias stays float32)."""
    raw = layer_swap(host, {donor: {"bottom": 1, "top": 1}})
    del raw["dtype"]
    out.write_text(yaml.safe_dump(raw))
    return out


def stock_mergekit_yaml(jobs: list[list], root: Path) -> dict[str, str]:
    """Run [config, out, streamed] jobs with the stock command in one interpreter
    (mergekit_yaml_many.py); what it said of each output folder."""
    (root / "jobs.json").write_text(json.dumps(jobs))
    driver = Path(__file__).with_name("mergekit_yaml_many.py")
    done = subprocess.run(
        [sys.executable, str(driver), str(root / "jobs.json"), str(root / "results.json")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((root / "results.json").read_text())


@pytest.fixture(scope="module")
def merged(tmp_path_factory) -> dict[str, dict]:
    """Per family: its host, donor, streamed and executed outputs and what the stock
    command said of each."""
    root = tmp_path_factory.mktemp("families")
    jobs, runs = [], {}
    for index, family in enumerate(FAMILIES):
        folder = root / f"family{index}"
        host, donor = build(family, 1, folder / "host"), build(family, 2, folder / "donor")
        config = swap_config(host, donor, folder / "swap.yml")
        runs[family] = {"host": host, "donor": donor}
        for kind, streamed in (("streamed", True), ("executed", False)):
            runs[family][kind] = folder / kind / "swapped"  # one name: the card names it
            jobs.append([str(config), str(runs[family][kind]), streamed])
    said = stock_mergekit_yaml(jobs, root)
    for run in runs.values():
        run["said"] = {kind: said[str(run[kind])] for kind in ("streamed", "executed")}
    return runs


def _layer(name: str) -> int | None:
    match = re.search(r"(?:^|\.)(\d+)\.", name)
    return int(match.group(1)) if match else None


def check_exact(host: Path, donor: Path, out: Path) -> None:
    """`out` has the host's tensor names, each bit for bit the donor's (outside the layers,
    layers 0 and 3) or the host's (layers 1-2), and transformers loads it completely."""
    from transformers import AutoModelForCausalLM

    host, donor, merged = tensors(host), tensors(donor), tensors(out)
    assert sorted(merged) == sorted(host)
    for name, tensor in merged.items():
        source = host if _layer(name) in (1, 2) else donor
        assert not torch.equal(host[name], donor[name]), name  # the check can tell them apart
        assert tensor.dtype == source[name].dtype and torch.equal(tensor, source[name]), name
    _, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info


@pytest.mark.parametrize("family", [f for f, (*_, outcome) in FAMILIES.items() if outcome == EXACT])
def test_bottom_top_swap_is_exact(family, merged):
    run = merged[family]
    assert run["said"] == {"streamed": "ok", "executed": "ok"}
    check_exact(run["host"], run["donor"], run["streamed"])
    streamed, executed = run["streamed"], run["executed"]
    assert sorted(p.name for p in streamed.iterdir()) == sorted(p.name for p in executed.iterdir())
    for path in executed.iterdir():
        assert (streamed / path.name).read_bytes() == path.read_bytes(), path.name


def test_pickled_weights_keep_their_biases_too(tmp_path):
    """`.bin` weights (names read by mergekit's loader, which validation cannot read) are
    planned from the checkpoint's own names as well (mergekit's executor writes them)."""
    models = {}
    for role, seed in (("host", 1), ("donor", 2)):
        built = build("Llama, attention and MLP biases", seed, tmp_path / f"{role}-safetensors")
        models[role] = tmp_path / role
        models[role].mkdir()
        shutil.copy(built / "config.json", models[role])
        torch.save(tensors(built), models[role] / "pytorch_model.bin")
    config = swap_config(models["host"], models["donor"], tmp_path / "swap.yml")
    out = tmp_path / "swapped"
    assert stock_mergekit_yaml([[str(config), str(out), True]], tmp_path) == {str(out): "ok"}
    check_exact(tmp_path / "host-safetensors", tmp_path / "donor-safetensors", out)


def test_blended_biases_are_the_same_both_ways(tmp_path):
    """A transition layer blends biases like weights, streamed as through mergekit's
    executor: (donor + host) / 2 in float32, cast to bfloat16."""
    family = "Llama, attention and MLP biases"
    host, donor = build(family, 1, tmp_path / "host"), build(family, 2, tmp_path / "donor")
    config = tmp_path / "swap.yml"
    config.write_text(yaml.safe_dump(layer_swap(host, {donor: {"bottom": 1}}, transition=1)))
    outs = {kind: tmp_path / kind / "swapped" for kind in ("streamed", "executed")}
    jobs = [[str(config), str(outs[kind]), kind == "streamed"] for kind in outs]
    assert set(stock_mergekit_yaml(jobs, tmp_path).values()) == {"ok"}
    for path in outs["executed"].iterdir():
        assert (outs["streamed"] / path.name).read_bytes() == path.read_bytes(), path.name
    merged, hosts, donors = tensors(outs["streamed"]), tensors(host), tensors(donor)
    bias = "model.layers.1.mlp.down_proj.bias"
    blend = (0.5 * donors[bias].float() + 0.5 * hosts[bias].float()).to(torch.bfloat16)
    assert torch.equal(merged[bias], blend)


@pytest.mark.parametrize("family", [f for f, (*_, outcome) in FAMILIES.items() if outcome != EXACT])
def test_what_mergekit_does_not_define_is_refused_in_one_line(family, merged):
    run = merged[family]
    for kind in ("streamed", "executed"):
        lines = run["said"][kind].splitlines()  # one per model: the host and the donor
        assert len(lines) == 2 and not run[kind].exists()
        assert all("is not a single-stack model mergekit 0.1.5 defines" in line for line in lines)


def test_the_architectures_page_lists_the_families_tested():
    assert table() in DOC.read_text(encoding="utf-8")


def test_the_planner_reads_its_architecture_when_it_plans():
    """Pinned: `plugin._streamed_plan` replaces `MergePlanner.arch_info` before calling
    plan_to_disk; mergekit must read it while planning, not copy it earlier."""
    import inspect

    from mergekit.plan import MergePlanner

    for method in (MergePlanner._out_module_arch, MergePlanner._model_arch):
        assert "self.arch_info" in inspect.getsource(method)
    plan = inspect.getsource(MergePlanner._plan)
    assert plan.index("self.normalize_config()") < plan.index("self.plan_module(")
    assert inspect.getsource(MergePlanner.__init__).count("self.arch_info") == 1  # stored only
