"""Swap merges against the read+write floor, mergekit passthrough slices and linear.

Builds two synthetic Llama-layout experts (random bf16, default ~2 GB each), then runs each
case R times, interleaved, from a cold page cache (the inputs are evicted with
posix_fadvise before every run). For each case it prints the median wall time, the net time
(from the moment the tool's interpreter and imports are done until its merge returns,
timed inside each run, so interpreter start-up and exit are not counted), peak
RSS and bytes read from disk (both from GNU time), and the ratios the performance goals are
stated in. `layer_swap` runs streamed (the default) and with MERGEKIT_LAYERSWAP_STREAM=0.

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

BOTTOM, TOP = 4, 2
SWAP = "layer_swap via mergekit-yaml (streamed)"
MERGE = "layer_swap via mergekit-layerswap merge"
EXECUTOR = "layer_swap via mergekit-yaml, streaming off"
PASSTHROUGH = "mergekit passthrough slices (same swap)"
FLOOR_CASE = "floor: safetensors read + write"
SWAP_T = "layer_swap + transition 1 (mergekit-yaml)"
FLOOR_T = "floor + transition 1"

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
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 4096,
    }
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


TIMED = r"""
import runpy, sys, time
report, kind, *argv = sys.argv[1:]
if kind == "floor":
    import safetensors.torch, torch
elif kind == "mergekit-yaml":
    import mergekit.merge, mergekit.scripts.run_yaml
else:
    import mergekit.config, mergekit.merge, mergekit_layerswap.card, mergekit_layerswap.cli
start = time.time()  # interpreter and imports done: the merge starts
sys.argv, code = argv, 0
try:
    if kind == "floor":
        runpy.run_path(argv[0], run_name="__main__")
    elif kind == "mergekit-yaml":
        mergekit.scripts.run_yaml.main()
    else:
        code = mergekit_layerswap.cli.main(argv[1:])
except SystemExit as exit:
    code = exit.code
with open(report, "w") as handle:
    handle.write(repr(time.time() - start))  # the merge is done (interpreter exit not counted)
sys.exit(code)
"""


def measure(kind: str, command: list[str], inputs: list[Path], env: dict, work: Path) -> dict:
    """Wall time, merge time (after interpreter start-up and imports, until the merge
    returns; timed inside the run), peak RSS and bytes read (GNU time) of a cold-cache run."""
    for folder in inputs:
        evict(folder)
    marks = work / "merge-seconds"
    with tempfile.NamedTemporaryFile("r") as report:
        start = time.time()
        subprocess.run(
            [
                "/usr/bin/time",
                "-o",
                report.name,
                "-f",
                "%M %I",
                sys.executable,
                str(work / "timed.py"),
                str(marks),
                kind,
                *command,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        end = time.time()
        rss_kb, blocks = report.read().split()[-2:]
    return {
        "wall": end - start,
        "net": float(marks.read_text()),
        "rss": int(rss_kb) * 1024,
        "read": int(blocks) * 512,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", help="build the experts here and keep them")
    args = parser.parse_args()
    from _support import tiny

    work = Path(args.keep or tempfile.mkdtemp(prefix="merge-speed-"))
    host, donor = work / "math", work / "swahili"
    if not (donor / "model.safetensors").exists():
        tokenizer = tiny.train_tokenizer(work / "tokenizer")
        build_expert(host, 1, args.layers, args.hidden, tokenizer)
        build_expert(donor, 2, args.layers, args.hidden, tokenizer)
    n = args.layers
    swap = {"bottom": BOTTOM, "top": TOP}
    configs = {
        "swap": {
            "merge_method": "layer_swap",
            "base_model": str(host),
            "dtype": "bfloat16",
            "models": [{"model": str(host)}, {"model": str(donor), "parameters": swap}],
        },
        "passthrough": {
            "merge_method": "passthrough",
            "dtype": "bfloat16",
            "slices": [
                {"sources": [{"model": str(donor), "layer_range": [0, BOTTOM]}]},
                {"sources": [{"model": str(host), "layer_range": [BOTTOM, n - TOP]}]},
                {"sources": [{"model": str(donor), "layer_range": [n - TOP, n]}]},
            ],
        },
        "linear": {
            "merge_method": "linear",
            "dtype": "bfloat16",
            "models": [
                {"model": str(host), "parameters": {"weight": 0.5}},
                {"model": str(donor), "parameters": {"weight": 0.5}},
            ],
        },
    }
    configs["swap+transition"] = {**configs["swap"], "parameters": {"transition": 1}}
    for name, config in configs.items():
        (work / f"{name}.yml").write_text(yaml.safe_dump(config))
    (work / "floor.py").write_text(FLOOR)
    (work / "timed.py").write_text(TIMED)
    out = work / "out"

    def floor(transition: int) -> tuple[str, list[str], dict]:
        return (
            "floor",
            [
                str(work / "floor.py"),
                str(host),
                str(donor),
                str(out),
                str(BOTTOM),
                str(TOP),
                str(transition),
                str(n),
            ],
            {},
        )

    def yaml_run(config: str, **env: str) -> tuple[str, list[str], dict]:
        command = ["mergekit-yaml", str(work / f"{config}.yml"), str(out), "--no-copy-tokenizer"]
        return ("mergekit-yaml", command, env)

    merge = [
        "mergekit-layerswap",
        "merge",
        str(work / "swap.yml"),
        str(out),
        "--quiet",
        "--no-copy-tokenizer",
    ]
    cases = {
        SWAP: yaml_run("swap"),
        MERGE: ("ours", merge, {}),
        EXECUTOR: yaml_run("swap", MERGEKIT_LAYERSWAP_STREAM="0"),
        PASSTHROUGH: yaml_run("passthrough"),
        "mergekit linear (reads both experts)": yaml_run("linear"),
        FLOOR_CASE: floor(0),
        SWAP_T: yaml_run("swap+transition"),
        FLOOR_T: floor(1),
    }
    runs: dict[str, list[dict]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (kind, command, env) in cases.items():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            runs[name].append(measure(kind, command, [host, donor], {**os.environ, **env}, work))
    output_bytes = (out / "model.safetensors").stat().st_size  # the last case's (same size)
    shutil.rmtree(out, ignore_errors=True)

    summary = {
        name: {key: statistics.median(v[key] for v in values) for key in values[0]}
        for name, values in runs.items()
    }
    size = (host / "model.safetensors").stat().st_size / 1e9
    print(
        f"experts: 2 x {size:.2f} GB, {n} layers, swap bottom {BOTTOM} + top {TOP}; "
        f"median of {args.repeats} cold-cache runs; net = merge alone (no start-up/exit)"
    )
    print(f"{'case':<48} {'wall s':>7} {'net s':>7} {'RSS GB':>7} {'read GB':>8}")
    for name, s in summary.items():
        print(
            f"{name:<48} {s['wall']:7.2f} {s['net']:7.2f} {s['rss'] / 1e9:7.2f} "
            f"{s['read'] / 1e9:8.2f}"
        )
    print(f"\noutput bytes: {output_bytes / 1e9:.2f} GB")

    def ratio(a: str, b: str, key: str = "net") -> float:
        return summary[a][key] / summary[b][key]

    ratios = {
        "swap net time / floor (target <= 1.10)": ratio(SWAP, FLOOR_CASE),
        "merge command net time / floor (target <= 1.10)": ratio(MERGE, FLOOR_CASE),
        "swap bytes read / output bytes (target <= 1.05)": summary[SWAP]["read"] / output_bytes,
        "swap peak RSS / floor peak RSS (target <= 1.10)": ratio(SWAP, FLOOR_CASE, "rss"),
        "swap net time / passthrough (target <= 1.00)": ratio(SWAP, PASSTHROUGH),
        "merge command net time / passthrough (target <= 1.00)": ratio(MERGE, PASSTHROUGH),
        "swap without streaming / passthrough": ratio(EXECUTOR, PASSTHROUGH),
        "swap wall time / passthrough wall time": ratio(SWAP, PASSTHROUGH, "wall"),
        "swap+transition / floor+transition (target <= 1.25)": ratio(SWAP_T, FLOOR_T),
    }
    for label, value in ratios.items():
        print(f"{label:<62} {value:5.2f}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
