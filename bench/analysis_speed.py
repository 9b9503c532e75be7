"""How fast and how lean is `mergekit-layerswap analyze`? Compared with one plain read.

Writes a synthetic Llama-shaped base and `--experts` fine-tunes of it (bf16, two shards each)
into WORKDIR, then times, each in a fresh process:

- a plain streaming read of every file of every model (16 MiB `readinto` chunks),
- the streaming pass alone (the part of the analysis that grows with the models), and
- the whole analysis (`analysis.analyze`: streaming pass, tables, plots, report),

with the files evicted from the page cache (posix_fadvise DONTNEED: "cold") and cached
("warm"), the fastest of `--repeat` runs each. Prints wall and CPU times, their ratios and
each process's peak RSS next to the largest tensor and a process that only imports the same
libraries.

    python bench/analysis_speed.py --workdir /tmp/lsa-bench          # ~1.1 GB per model
    python bench/analysis_speed.py --workdir /tmp/lsa-bench --keep   # leave the models there
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("base", "expert0", "expert1", "expert2", "expert3")


def generate(
    root: Path, *, layers: int, hidden: int, intermediate: int, vocab: int, experts: int
) -> list[Path]:
    """A random base and experts that change its outer (expert0) or middle (others) layers."""
    import torch
    from safetensors.torch import save_file

    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        }
        shapes |= {p + f"self_attn.{n}_proj.weight": (hidden, hidden) for n in "qkvo"}
        shapes |= {p + f"mlp.{n}_proj.weight": (intermediate, hidden) for n in ("gate", "up")}
        shapes[p + "mlp.down_proj.weight"] = (hidden, intermediate)
    shapes |= {"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden // 128,
        "num_key_value_heads": hidden // 128,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
    }
    names = list(shapes)
    shards = [names[: len(names) // 2], names[len(names) // 2 :]]
    outer = {0, 1, layers - 2, layers - 1}
    dirs = []
    for m, model in enumerate(MODELS[: experts + 1]):
        out = root / model
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config))
        weight_map = {}
        for s, shard in enumerate(shards):
            tensors = {}
            for name in shard:
                torch.manual_seed(hash(name) % 2**31)  # the same base tensor in every model
                t = torch.randn(shapes[name]) * 0.02
                if m:
                    layer = int(name.split(".")[2]) if ".layers." in name else -1
                    strong = (layer in outer) == (m == 1)
                    t += torch.randn(shapes[name]) * (0.004 if strong else 0.0004)
                tensors[name] = t.bfloat16()
                weight_map[name] = f"model-{s + 1:05d}-of-00002.safetensors"
            save_file(tensors, out / weight_map[shard[0]], metadata={"format": "pt"})
        (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        dirs.append(out)
    return dirs


def _files(dirs: list[Path]) -> list[Path]:
    return sorted(f for d in dirs for f in d.iterdir())


def _evict(dirs: list[Path]) -> None:
    for path in _files(dirs):
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def _measure(mode: str, dirs: list[Path], out: Path) -> dict:
    """Run in a child process: one plain read, the streaming pass alone (the part that grows
    with the models), the whole analysis, or the imports alone."""
    import matplotlib.figure  # noqa: F401  (imports are not what is measured)
    import mergekit.architecture  # noqa: F401
    import torch  # noqa: F401

    from mergekit_layerswap import analysis
    from mergekit_layerswap.analysis.inputs import load_models, plan
    from mergekit_layerswap.analysis.measure import stream

    start, cpu = time.perf_counter(), time.process_time()
    if mode == "read":
        buffer = memoryview(bytearray(16 << 20))
        for path in _files(dirs):
            with open(path, "rb", buffering=0) as handle:
                while handle.readinto(buffer):
                    pass
    elif mode == "stream":
        models, layout = load_models(str(dirs[0]), [(d.name, str(d)) for d in dirs[1:]])
        stream(models, plan(models[0], models[1:], layout), lambda _: None)
    elif mode == "analyze":
        experts = [(d.name, str(d)) for d in dirs[1:]]
        analysis.analyze(str(dirs[0]), experts, out, host=experts[-1][0], donor=experts[0][0])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    # VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork and exec.
    status = Path("/proc/self/status").read_text()
    peak_kib = int(
        next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]
    )
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mib": peak_kib / 1024}


def _child(mode: str, dirs: list[Path], out: Path) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--output", str(out), *map(str, dirs)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lsa-bench"))
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--intermediate", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--experts", type=int, default=2, choices=range(1, len(MODELS)))
    parser.add_argument("--keep", action="store_true", help="keep the generated models")
    parser.add_argument("--repeat", type=int, default=2, help="runs per figure; the fastest counts")
    parser.add_argument(
        "--child", choices=("read", "stream", "analyze", "imports"), help=argparse.SUPPRESS
    )
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("dirs", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.child, args.dirs, args.output)))
        return

    start = time.perf_counter()
    dirs = generate(
        args.workdir,
        layers=args.layers,
        hidden=args.hidden,
        intermediate=args.intermediate,
        vocab=args.vocab,
        experts=args.experts,
    )
    sizes = [sum(f.stat().st_size for f in d.iterdir()) for d in dirs]
    largest = 2 * max(args.vocab * args.hidden, args.intermediate * args.hidden)
    print(
        f"generated {len(dirs)} checkpoints of {sizes[0] / 1e9:.2f} GB "
        f"({args.layers} layers, hidden {args.hidden}, bf16) in "
        f"{time.perf_counter() - start:.0f} s; largest tensor {largest / 2**20:.0f} MiB"
    )
    out = args.workdir / "analysis"
    try:
        imports = _child("imports", dirs, out)
        print(f"imports only:           peak RSS {imports['peak_rss_mib']:6.0f} MiB")
        for cache in ("cold", "warm"):
            timings = {}
            for mode in ("read", "stream", "analyze"):
                runs = []
                for _ in range(args.repeat):
                    if cache == "cold":
                        _evict(dirs)
                    runs.append(_child(mode, dirs, out))
                timings[mode] = min(runs, key=lambda run: run["seconds"])
                print(
                    f"{cache} {mode:8s} {timings[mode]['seconds']:7.2f} s wall "
                    f"{timings[mode]['cpu_seconds']:7.2f} s CPU   "
                    f"peak RSS {timings[mode]['peak_rss_mib']:6.0f} MiB"
                )
            stream, whole, read = (timings[m]["seconds"] for m in ("stream", "analyze", "read"))
            print(
                f"{cache}: streaming pass / plain read = {stream / read:.2f}x, "
                f"whole analysis / plain read = {whole / read:.2f}x "
                f"({sum(sizes) / 1e9:.2f} GB in {len(dirs)} models)"
            )
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir)


if __name__ == "__main__":
    main()
