"""`mergekit-layerswap lab`: the paper's experiment in miniature, every stage with our commands.

Per seed: a word-level tokenizer; a base pretrained from scratch on both languages (English
high-resource, the target low-resource, some translation pairs, bare arithmetic); a math
expert (English word problems with step-by-step answers) and a language expert (generic
target-language text, no arithmetic) fine-tuned from it; `analyze` of both experts against
the base, whose suggested `layer_swap` is the lab's designated swap; the preconditions of a
swap measured (`preconditions`: can this seed judge it at all?); a suite (the swap, a
small sweep, soup, task arithmetic, TIES, DARE-TIES, the base and both experts) scored with
lm-eval on the lab's own tasks (`testsets.py`). Then `verdict` judges and `report` writes
the seeds' results.

Every stage is resumable: a model folder appears under its name only when complete, with the
settings that made it (`lab-stage.json`); a rerun with the same settings reuses it, and the
suite reuses its finished merges and scores.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
from pathlib import Path

import yaml

from mergekit_layerswap.errors import RunError, first_line
from mergekit_layerswap.evaluate.quiet import hf_bars_off
from mergekit_layerswap.files import write_atomic
from mergekit_layerswap.lab import preconditions, samplers, testsets, train
from mergekit_layerswap.lab.settings import LabSettings
from mergekit_layerswap.merge import remove_stale_partials
from mergekit_layerswap.suite import include
from mergekit_layerswap.threads import torch_threads

STAGE_FILE = "lab-stage.json"
#: In a seed's analysis folder: each expert's per-layer relative change (from `analyze`).
CHANGE_FILE = "change-profile.json"
#: In a seed's folder: its measured preconditions.
PRECONDITIONS_FILE = "preconditions.json"


#: The settings each stage's result depends on (how many seeds run, the device and the
#: evaluation settings do not change a trained model or an analysis).
_BASE = {"language", "size", "n_test", "test_seed", "base_steps", "base_lr", "mixture", "tokenizer"}
_EXPERT = _BASE | {"expert_steps", "expert_lr", "experts"}
_STAGE_FIELDS = {"base": _BASE, "math": _EXPERT, "lang": _EXPERT, "analysis": _EXPERT}


def _stage_key(settings: LabSettings, seed: int, stage: str) -> dict:
    fields = settings.model_dump(include=_STAGE_FIELDS[stage])
    return {"stage": stage, "seed": seed, "settings": {**fields, "steps": list(settings.steps())}}


def _done(folder: Path, key: dict) -> bool:
    try:
        return json.loads((folder / STAGE_FILE).read_text()) == key
    except (OSError, ValueError):
        return False


def _publish(partial: Path, folder: Path, key: dict) -> Path:
    """Mark a finished stage folder and move it under its final name."""
    (partial / STAGE_FILE).write_text(json.dumps(key, sort_keys=True))
    if folder.exists():
        shutil.rmtree(folder)  # an earlier run's stage with other settings (inside OUT_DIR)
    os.replace(partial, folder)
    return folder


def _outer(size: str):
    """The language expert's part (`frozen`/`reverted` experts): everything outside the middle
    layers (the bottom quarter and the top eighth of the stack, as in the paper's 5 + 2 of
    32, with the embeddings, final norm and head); the math expert's part is the rest."""
    layers = train.SIZES[size][1]
    bottom, top = max(1, layers // 4), max(1, layers // 8)

    def outer(name: str) -> bool:
        index = train.layer_index(name)
        return index is None or index < bottom or index >= layers - top

    return outer


def train_models(settings: LabSettings, seed: int, folder: Path, excluded, log) -> dict[str, Path]:
    """The seed's base and two experts (reused when already trained with these settings)."""
    import torch
    from transformers import AutoModelForCausalLM

    names = ("base", "math", "lang")
    paths = {name: folder / name for name in names}
    keys = {name: _stage_key(settings, seed, name) for name in names}
    if all(_done(paths[n], keys[n]) for n in names):
        return paths
    torch.manual_seed(seed)
    base_sampler, math_sampler, lang_sampler = samplers.samplers(settings, excluded)
    base_steps, expert_steps = settings.steps()
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths.values():  # what a killed run left behind
        remove_stale_partials(path)
    partial = {n: folder / f".{n}.partial-{os.getpid()}" for n in names}
    device = settings.device
    if _done(paths["base"], keys["base"]):
        with hf_bars_off():
            base = AutoModelForCausalLM.from_pretrained(paths["base"], dtype=torch.float32)
        tokenizer = train.load_tokenizer(paths["base"])
    else:
        tokenizer = train.build_tokenizer(partial["base"], settings.tokenizer)
        base = train.new_model(settings.size, len(tokenizer), seed).to(device)
        schedule = train.Schedule(base_steps, settings.base_lr)
        train.train(
            base,
            tokenizer,
            base_sampler,
            schedule,
            seed=seed,
            progress=log(f"seed {seed}: pretraining the base", base_steps),
        )
        _save(base, tokenizer, partial["base"], paths["base"])
        _publish(partial["base"], paths["base"], keys["base"])
    outer = _outer(settings.size)
    experts = (
        ("math", math_sampler, "math expert (English word problems)", lambda n: not outer(n)),
        ("lang", lang_sampler, f"language expert ({settings.language} text)", outer),
    )
    for offset, (name, sampler, what, part) in enumerate(experts, 1):
        if _done(paths[name], keys[name]):
            continue
        model = copy.deepcopy(base).to(device)
        schedule = train.Schedule(expert_steps, settings.expert_lr)
        train.train(
            model,
            tokenizer,
            sampler,
            schedule,
            seed=seed + offset,
            trainable=part if settings.experts == "frozen" else None,
            progress=log(f"seed {seed}: fine-tuning the {what}", expert_steps),
        )
        if settings.experts == "reverted":
            train.revert(model, base, keep=part)
        _save(model, tokenizer, partial[name], paths[name])
        _publish(partial[name], paths[name], keys[name])
    return paths


def _save(model, tokenizer, partial: Path, final: Path) -> None:
    """`train.save` into `partial`, or RunError naming the model that could not be written
    (a full disk, say), with `partial` removed."""
    from safetensors import SafetensorError

    try:
        train.save(model.cpu(), tokenizer, partial)
    except (OSError, SafetensorError) as error:
        shutil.rmtree(partial, ignore_errors=True)
        raise RunError(f"could not write the model {final}: {first_line(error)}") from None


def suite_config(
    settings: LabSettings, models: dict[str, Path], swap: dict, task_folder: Path
) -> dict:
    """The seed's suite: the designated swap, a sweep, the usual baselines (the recipes'
    `include.BASELINES`), both experts."""
    num_layers = train.SIZES[settings.size][1]
    return {
        "include": str(include.BASELINES),
        "models": {name: str(path) for name, path in models.items()},
        "evaluate_inputs": ["base", "math", "lang"],
        "merges": [
            {
                "name": "layer-swap",
                "merge_method": "layer_swap",
                "base_model": "math",
                "models": [{"model": "math"}, {"model": "lang", "parameters": swap["donor"]}],
                "parameters": {"transition": swap["transition"]},
            },
        ],
        "sweep": {
            "base_model": "math",
            "donor": "lang",
            "bottom": [1, 2],
            "top": [0, 1, max(2, num_layers // 8)],
            "transition": [0, 1],
        },
        "evaluation": {
            "tasks": list(testsets.task_names(settings.language)),
            "include_path": str(task_folder),
            "device": settings.device,
        },
        "seed": 0,
    }


def designated_swap(result) -> dict:
    """The layer_swap `analyze` suggests (host: math expert, donor: language expert); when no
    outer layer qualifies, the smallest swap (bottom 1, top 1), said as such."""
    suggestion = result.suggestion
    if suggestion is not None and suggestion.donor_layers:
        donor = {k: v for k, v in (("bottom", suggestion.bottom), ("top", suggestion.top)) if v}
        return {"donor": donor, "transition": suggestion.transition, "source": "analyze"}
    return {"donor": {"bottom": 1, "top": 1}, "transition": 0, "source": "fallback"}


def run_seed(settings: LabSettings, seed: int, out: Path, task_folder: Path, excluded, log):
    """One seed end to end; returns {model name: {column: result record}} and the swap."""
    from mergekit_layerswap import analysis
    from mergekit_layerswap.evaluate.results import columns_json
    from mergekit_layerswap.suite.runner import run_suite
    from mergekit_layerswap.suite.schema import parse_suite

    folder = out / f"seed-{seed}"
    models = train_models(settings, seed, folder / "models", excluded, log)
    swap_file = folder / "analysis" / "designated-swap.json"
    change_file = folder / "analysis" / CHANGE_FILE
    key = _stage_key(settings, seed, "analysis")
    if not _done(folder / "analysis", key) or not change_file.is_file():
        print(f"seed {seed}: analyze (where did each expert change?)", flush=True)
        remove_stale_partials(folder / "analysis")
        partial = folder / f".analysis.partial-{os.getpid()}"
        result = analysis.analyze(
            str(models["base"]),
            [("math", str(models["math"])), ("lang", str(models["lang"]))],
            partial,
            host="math",
            donor="lang",
        )
        (partial / swap_file.name).write_text(json.dumps(designated_swap(result), indent=2))
        change = {name: list(result.layer_change(name)) for name in ("math", "lang")}
        (partial / CHANGE_FILE).write_text(json.dumps(change, indent=2))
        _publish(partial, folder / "analysis", key)
    swap = json.loads(swap_file.read_text())
    measured = measure_preconditions(settings, seed, folder, models, swap, excluded)
    config = suite_config(settings, models, swap, task_folder)
    config["evaluation"]["max_gen_toks"] = settings.max_gen_toks
    (folder / "suite.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    names = ", ".join(config["evaluation"]["tasks"])
    print(f"seed {seed}: suite (merges, then lm-eval on {names})", flush=True)
    run_suite(parse_suite(config, folder), folder / "suite")
    scores = {}
    for path in sorted((folder / "suite" / "results").glob("*.json")):
        record = json.loads(path.read_text())
        scores[record["name"]] = {
            "kind": record["kind"],
            "method": record["method"],
            "columns": columns_json(record),
        }
    return scores, swap, measured


def measure_preconditions(
    settings: LabSettings, seed: int, folder: Path, models: dict[str, Path], swap: dict, excluded
) -> list[dict]:
    """The seed's preconditions (`preconditions.measure`), kept in PRECONDITIONS_FILE and
    reused while the analysis they depend on, the generation length and the measurements'
    version are the same."""
    path = folder / PRECONDITIONS_FILE
    key = _stage_key(settings, seed, "analysis") | {
        "max_gen_toks": settings.max_gen_toks,
        "version": preconditions.VERSION,
    }
    with contextlib.suppress(OSError, ValueError):
        kept = json.loads(path.read_text())
        if kept["key"] == key:
            return kept["preconditions"]
    print(f"seed {seed}: preconditions (can this seed judge a swap?)", flush=True)
    change = json.loads((folder / "analysis" / CHANGE_FILE).read_text())
    found = preconditions.measure(
        models,
        swap,
        change,
        target=settings.language,
        seed=seed,
        excluded=excluded,
        max_tokens=settings.max_gen_toks,
        device=settings.device,
    )
    records = [item.record() for item in found]
    write_atomic(path, json.dumps({"key": key, "preconditions": records}, indent=2))
    return records


def _progress(description: str, total: int):
    """A progress bar for `total` training steps that shows the running loss."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=description, unit="step")

    def update(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if step + 1 == total:
            bar.close()

    return update


def run_lab(out_dir: str | Path, settings: LabSettings, threads: int | None = None) -> dict:
    """Every seed's pipeline, then the report; returns what lab.json holds. `threads`: torch's
    intra-op thread count during the run (None: torch's default)."""
    with torch_threads(threads):
        return _run_lab(Path(out_dir).absolute(), settings)


def _run_lab(out: Path, settings: LabSettings) -> dict:
    from mergekit_layerswap.lab import report, verdict

    out.mkdir(parents=True, exist_ok=True)
    test = testsets.build(settings.language, settings.n_test, settings.test_seed)
    task_folder = testsets.write(test, settings.language, out / "tasks", settings.max_gen_toks)
    columns = list(testsets.task_names(settings.language))
    seeds = {}
    for seed in range(settings.seeds):
        scores, swap, measured = run_seed(
            settings, seed, out, task_folder, test.excludes, _progress
        )
        seeds[seed] = {"swap": swap, "models": scores, "preconditions": measured}
    summary = report.summarize(seeds, columns)
    data = {
        "settings": settings.model_dump(),
        "columns": columns,
        "tests": testsets.summary(test),
        "seeds": {str(seed): value for seed, value in seeds.items()},
        "summary": summary,
        "verdict": verdict.judge(seeds, columns[0], settings.n_test),
    }
    for path in report.write(data, out):
        print(f"wrote {path}", flush=True)
    print(report.markdown(data, out))
    return data
