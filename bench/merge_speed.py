"""Swap merges against the read+write floor, mergekit passthrough slices and linear.

Builds two synthetic Llama-layout experts (random bf16, default ~2 GB each), then runs each
case R times, interleaved, from a cold page cache (the inputs are evicted with
posix_fadvise before every run). For each case it prints the median wall time, the same
minus the interpreter + import start-up of its tool, peak RSS and bytes read from disk
(both from GNU time), and the ratios the performance goals are stated in.

Usage: python bench/merge_speed.py [--layers 16] [--hidden 2048] [--repeats 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BIN = Path(sys.executable).parent
BOTTOM, TOP = 4, 2

FLOOR = r"""
import json, sys, torch
from safetensors import safe_open
from safetensors.torch import save_file
host, donor, out, bottom, top, transition, n = sys.argv[1:8]
bottom, top, transition, n = int(bottom), int(top), int(transition), int(n)
def weights(name):
    if ".layers." not in name:
        return {donor: 1.0} if "embed" in name or top else {host: 1.0}
    i = int(name.split(".layers.")[1].split(".")[0])
    if i < bottom or i >= n - top:
        return {donor: 1.0}
    for edge, step in ((bottom - 1, 1), (n - top, -1)):
        d = (i - edge) * step
        if 0 < d <= transition:
            return {donor: 1 - d / (transition + 1), host: d / (transition + 1)}
    return {host: 1.0}
files = {m: safe_open(m + "/model.safetensors", "pt") for m in (host, donor)}
result = {}
for name in files[host].keys():
    w = weights(name)
    if len(w) == 1:
        result[name] = files[next(iter(w))].get_tensor(name)
    else:
        acc = sum(x * files[m].get_tensor(name).float() for m, x in w.items())
        result[name] = acc.to(torch.bfloat16)
save_file(result, out + "/model.safetensors", metadata={"format": "pt"})
"""


def build_expert(folder: Path, seed: int, layers: int, hidden: int, tokenizer: Path) -> None:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    inter, vocab, kv = int(hidden * 2.75), 32000, hidden // 4
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 16,
        "num_key_value_heads": 4, "vocab_size": vocab, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "rms_norm_eps": 1e-5, "max_position_embeddings": 4096,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer / name, folder / name)
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float32).to(torch.bfloat16)

    tensors = {"model.embed_tokens.weight": rand(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors |= {
            p + "input_layernorm.weight": rand(hidden),
            p + "self_attn.q_proj.weight": rand(hidden, hidden),
            p + "self_attn.k_proj.weight": rand(kv, hidden),
            p + "self_attn.v_proj.weight": rand(kv, hidden),
            p + "self_attn.o_proj.weight": rand(hidden, hidden),
            p + "post_attention_layernorm.weight": rand(hidden),
            p + "mlp.gate_proj.weight": rand(inter, hidden),
            p + "mlp.up_proj.weight": rand(inter, hidden),
            p + "mlp.down_proj.weight": rand(hidden, inter),
        }
    tensors |= {"model.norm.weight": rand(hidden), "lm_head.weight": rand(vocab, hidden)}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def evict(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def measure(command: list[str], inputs: list[Path]) -> dict:
    for folder in inputs:
        evict(folder)
    with tempfile.NamedTemporaryFile("r") as report:
        start = time.perf_counter()
        subprocess.run(
            ["/usr/bin/time", "-o", report.name, "-f", "%M %I", *command],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wall = time.perf_counter() - start
        rss_kb, blocks = report.read().split()[-2:]
    return {"wall": wall, "rss": int(rss_kb) * 1024, "read": int(blocks) * 512}


def startup(code: str) -> float:
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", help="build the experts here and keep them")
    args = parser.parse_args()
    from mergekit_layerswap import tiny

    work = Path(args.keep or tempfile.mkdtemp(prefix="merge-speed-"))
    host, donor = work / "math", work / "swahili"
    if not (donor / "model.safetensors").exists():
        tokenizer = tiny.train_tokenizer(work / "tokenizer")
        build_expert(host, 1, args.layers, args.hidden, tokenizer)
        build_expert(donor, 2, args.layers, args.hidden, tokenizer)
    n = args.layers
    swap = {"bottom": BOTTOM, "top": TOP}
    configs = {
        "swap": {"merge_method": "layer_swap", "base_model": str(host), "dtype": "bfloat16",
                 "models": [{"model": str(host)}, {"model": str(donor), "parameters": swap}]},
        "passthrough": {"merge_method": "passthrough", "dtype": "bfloat16", "slices": [
            {"sources": [{"model": str(donor), "layer_range": [0, BOTTOM]}]},
            {"sources": [{"model": str(host), "layer_range": [BOTTOM, n - TOP]}]},
            {"sources": [{"model": str(donor), "layer_range": [n - TOP, n]}]}]},
        "linear": {"merge_method": "linear", "dtype": "bfloat16", "models": [
            {"model": str(host), "parameters": {"weight": 0.5}},
            {"model": str(donor), "parameters": {"weight": 0.5}}]},
    }  # fmt: skip
    configs["swap+transition"] = {**configs["swap"], "parameters": {"transition": 1}}
    for name, config in configs.items():
        (work / f"{name}.yml").write_text(yaml.safe_dump(config))
    (work / "floor.py").write_text(FLOOR)
    out = work / "out"

    def floor(transition: int) -> list[str]:
        return [sys.executable, str(work / "floor.py"), str(host), str(donor), str(out),
                str(BOTTOM), str(TOP), str(transition), str(n)]  # fmt: skip

    mergekit_yaml = [str(BIN / "mergekit-yaml"), "--no-copy-tokenizer"]
    cases = {
        "layer_swap (mergekit-yaml)": [*mergekit_yaml[:1], str(work / "swap.yml"), str(out),
                                       *mergekit_yaml[1:]],
        "layer_swap (mergekit-layerswap merge)": [str(BIN / "mergekit-layerswap"), "merge",
                                                  str(work / "swap.yml"), str(out), "--quiet",
                                                  "--no-copy-tokenizer"],
        "passthrough slices": [*mergekit_yaml[:1], str(work / "passthrough.yml"), str(out),
                               *mergekit_yaml[1:]],
        "linear": [*mergekit_yaml[:1], str(work / "linear.yml"), str(out), *mergekit_yaml[1:]],
        "floor (safetensors read+write)": floor(0),
        "layer_swap + transition 1 (mergekit-yaml)": [*mergekit_yaml[:1],
                                                      str(work / "swap+transition.yml"),
                                                      str(out), *mergekit_yaml[1:]],
        "floor + transition 1": floor(1),
    }  # fmt: skip
    boot = {
        "mergekit": startup("import mergekit.scripts.run_yaml, mergekit.merge"),
        "ours": startup("import mergekit_layerswap.merge, mergekit.merge, mergekit.config"),
        "floor": startup("import torch, safetensors.torch"),
    }
    runs: dict[str, list[dict]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, command in cases.items():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            runs[name].append(measure(command, [host, donor]))
            output_bytes = (
                (out / "model.safetensors").stat().st_size
                if "floor" in name
                else sum(p.stat().st_size for p in out.glob("*.safetensors"))
            )
    shutil.rmtree(out, ignore_errors=True)

    def boot_of(name: str) -> float:
        return boot["floor" if "floor" in name else "ours" if "merge)" in name else "mergekit"]

    summary = {}
    print(f"experts: 2 x {(host / 'model.safetensors').stat().st_size / 1e9:.2f} GB, {n} layers,"
          f" swap bottom {BOTTOM} + top {TOP}; {args.repeats} runs each, cold cache")  # fmt: skip
    print(f"start-up subtracted: mergekit {boot['mergekit']:.2f} s, ours {boot['ours']:.2f} s, "
          f"floor {boot['floor']:.2f} s")  # fmt: skip
    print(f"{'case':<42} {'wall s':>7} {'net s':>7} {'RSS GB':>7} {'read GB':>8}")
    for name, values in runs.items():
        wall = statistics.median(v["wall"] for v in values)
        summary[name] = {
            "wall": wall, "net": wall - boot_of(name),
            "rss": statistics.median(v["rss"] for v in values),
            "read": statistics.median(v["read"] for v in values),
        }  # fmt: skip
        s = summary[name]
        print(
            f"{name:<42} {wall:7.2f} {s['net']:7.2f} {s['rss'] / 1e9:7.2f} {s['read'] / 1e9:8.2f}"
        )
    floor0, floor1 = summary["floor (safetensors read+write)"], summary["floor + transition 1"]
    ours = summary["layer_swap (mergekit-yaml)"]
    print(f"\noutput bytes: {output_bytes / 1e9:.2f} GB")
    ratios = {
        "swap net time / floor (target <= 1.10)": ours["net"] / floor0["net"],
        "merge command net time / floor (target <= 1.10)":
            summary["layer_swap (mergekit-layerswap merge)"]["net"] / floor0["net"],
        "swap bytes read / output bytes (target <= 1.05)": ours["read"] / output_bytes,
        "swap peak RSS / floor peak RSS (target <= 1.10)": ours["rss"] / floor0["rss"],
        "swap net time / passthrough net time (target <= 1.00)":
            ours["net"] / summary["passthrough slices"]["net"],
        "swap net time / linear net time": ours["net"] / summary["linear"]["net"],
        "swap+transition net time / floor+transition (target <= 1.25)":
            summary["layer_swap + transition 1 (mergekit-yaml)"]["net"] / floor1["net"],
    }  # fmt: skip
    for label, value in ratios.items():
        print(f"{label:<62} {value:5.2f}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
