"""Small helpers shared by the tests: layer_swap configs and reading merged tensors."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from mergekit_layerswap import cli

#: A tiny Llama's config fields (4 layers, grouped-query attention) for transformers' configs.
TINY_LLAMA = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def layer_swap(host: Path | str, donors: dict, **parameters) -> dict:
    """A layer_swap mergekit config: `donors` maps each donor to its bottom/top/layers."""
    raw = {
        "merge_method": "layer_swap",
        "base_model": str(host),
        "models": [{"model": str(host)}]
        + [{"model": str(d), "parameters": claim} for d, claim in donors.items()],
        "dtype": "bfloat16",
    }
    if parameters:
        raw["parameters"] = parameters
    return raw


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors model folder (single file or shards)."""
    found: dict[str, torch.Tensor] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        found.update(load_file(path))
    return found


def suite_swap(name: str = "swap", **parameters) -> dict:
    """A suite's layer_swap merge of the `aliases` fixture: swahili's bottom 2 layers into
    math, with the top-level `parameters` given."""
    return {
        "name": name,
        "merge_method": "layer_swap",
        "base_model": "math",
        "models": [{"model": "math"}, {"model": "swahili", "parameters": {"bottom": 2}}],
        **({"parameters": parameters} if parameters else {}),
    }


def make_adapter(model: Path, out: Path) -> Path:
    """A real peft LoRA adapter (non-zero B, so it changes the weights) saved to `out`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model)
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(base, lora).save_pretrained(out)
    return out


def refused(tmp_path: Path, raw: dict, capsys) -> str:
    """Run `merge` on `raw`; assert exit 2 and no output; return what it printed."""
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    code = cli.main(["merge", str(path), str(out)])
    text = capsys.readouterr().err
    assert code == 2, text
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    return text
