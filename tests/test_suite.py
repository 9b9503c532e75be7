"""The suite: merges + sweep + inputs, scored on MGSM, ranked; resumable; validated first."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import layer_swap, suite_swap, tensors

from mergekit_layerswap import cli
from mergekit_layerswap.errors import InputError
from mergekit_layerswap.suite.schema import parse_suite

pytestmark = pytest.mark.slow
MERGEKIT_YAML = Path(sys.executable).with_name("mergekit-yaml")


def suite_raw(aliases, **changes) -> dict:
    raw = {
        "models": dict(aliases),
        "evaluate_inputs": ["math"],
        "merges": [
            suite_swap(transition=1),
            {
                "name": "dare",
                "merge_method": "dare_ties",
                "base_model": "base",
                "models": [
                    {"model": "math", "parameters": {"weight": 1.0, "density": 0.5}},
                    {"model": "swahili", "parameters": {"weight": 1.0, "density": 0.5}},
                ],
            },
        ],
        "sweep": {"base_model": "math", "donor": "swahili", "top": [1, 2], "transition": [0]},
        "evaluation": {"languages": ["sw", "en"], "limit": 2, "max_gen_toks": 16},
    }
    raw.update(changes)
    return raw


def run_suite_cli(tmp_path: Path, raw: dict, out: Path, *flags: str, capsys) -> tuple[int, str]:
    path = tmp_path / "suite.yml"
    path.write_text(yaml.safe_dump(raw))
    code = cli.main(["suite", str(path), str(out), *flags])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def steps_run(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(("merge ", "eval "))]


def test_suite_end_to_end_then_nothing_reruns(aliases, mgsm_hf_dir, tmp_path, capsys):
    out = tmp_path / "out"
    raw = suite_raw(aliases)
    raw["evaluation"]["data_dir"] = str(mgsm_hf_dir)
    code, text = run_suite_cli(tmp_path, raw, out, capsys=capsys)
    assert code == 0, text
    names = ["math", "swap", "dare", "swap-t1-tr0", "swap-t2-tr0"]
    assert steps_run(text) == [
        "merge 1/2 swap",
        "merge 2/2 dare",
        "eval 1/5 math",
        "eval 2/5 swap",
        "eval 3/5 dare",
        "eval 4/5 swap-t1-tr0 (built in memory)",
        "eval 5/5 swap-t2-tr0 (built in memory)",
    ]
    assert not (out / "merges" / "swap-t1-tr0").exists()  # sweep variants are never written

    board = json.loads((out / "leaderboard.json").read_text())
    assert sorted(row["name"] for row in board) == sorted(names)
    kinds = {row["name"]: (row["kind"], row["method"]) for row in board}
    assert kinds["math"] == ("input", "-") and kinds["swap"] == ("merge", "layer_swap")
    assert kinds["dare"] == ("merge", "dare_ties") and kinds["swap-t2-tr0"][0] == "sweep"
    for row in board:
        record = json.loads((out / "results" / f"{row['name']}.json").read_text())
        assert set(row["scores"]) == {"sw", "en"}
        for code_ in ("sw", "en"):
            assert row["scores"][code_] == record["columns"][code_]["score"]
            assert record["columns"][code_]["n"] == 2
        assert "average" not in row  # sw and en are not averaged
    first = [r["scores"]["sw"] for r in board]
    assert first == sorted(first, reverse=True)  # ranked by the first column
    with (out / "leaderboard.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["name"] for r in table] == [r["name"] for r in board]
    assert float(table[0]["sw"]) == pytest.approx(board[0]["scores"]["sw"])
    assert list(table[0]) == ["name", "kind", "method", "sw", "en"]
    markdown = (out / "leaderboard.md").read_text()
    assert "| model | kind | method | sw | en |\n" in markdown and "**" in markdown
    assert (out / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # layer_swap merges get a card whose model-index holds their scores
    from huggingface_hub import ModelCard

    scored = json.loads((out / "results" / "swap.json").read_text())["columns"]
    data = ModelCard.load(out / "merges" / "swap" / "README.md").data
    assert {r.dataset_config: r.metric_value for r in data.eval_results} == {
        code_: scored[code_]["score"] for code_ in ("sw", "en")
    }

    # the saved config reproduces the merge with plain mergekit-yaml (DARE: with its seed)
    saved = (out / "merges" / "dare" / "mergekit_config.yml").read_text()
    assert saved.startswith("# reproduce: mergekit-yaml mergekit_config.yml OUT --random-seed 0")
    again = tmp_path / "again"
    subprocess.run(
        [
            str(MERGEKIT_YAML),
            str(out / "merges" / "dare" / "mergekit_config.yml"),
            str(again),
            "--random-seed",
            "0",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    mine, theirs = tensors(out / "merges" / "dare"), tensors(again)
    assert all(torch.equal(mine[name], theirs[name]) for name in mine)

    code, text = run_suite_cli(tmp_path, raw, out, capsys=capsys)
    assert code == 0 and steps_run(text) == []
    code, text = run_suite_cli(tmp_path, raw, out, "--dry-run", capsys=capsys)
    assert text.count("eval: cached") == 5 and "to run" not in text
    code, text = run_suite_cli(tmp_path, raw, out, "--only", "swap", "--force", capsys=capsys)
    assert steps_run(text) == ["merge 1/1 swap", "eval 1/1 swap"]


def test_interrupted_suite_resumes_without_redoing_finished_work(aliases, mgsm_hf_dir, tmp_path):
    out = tmp_path / "out"
    raw = suite_raw(aliases, keep_weights=False)
    raw["evaluation"]["data_dir"] = str(mgsm_hf_dir)
    path = tmp_path / "suite.yml"
    path.write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "mergekit_layerswap.cli", "suite", str(path), str(out)]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not (out / "results" / "swap.json").exists():  # two merges done, evals under way
        assert process.poll() is None and time.time() < deadline, "suite ended before the kill"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = {p.stem: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")}
    assert "swap" in finished and "math" in finished

    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    done = steps_run(result.stdout)
    assert not any(line.endswith((" swap", " math")) for line in done), done
    for name, mtime in finished.items():
        assert (out / "results" / f"{name}.json").stat().st_mtime_ns == mtime
    board = json.loads((out / "leaderboard.json").read_text())
    assert len(board) == 5
    # keep_weights: false — scored merges keep their config and marker, not their weights
    for name in ("swap", "dare"):
        folder = out / "merges" / name
        assert (folder / "mergekit_config.yml").is_file()
        assert not list(folder.glob("*.safetensors"))
    assert not list((out / "merges").glob(".*partial*"))


BAD = [
    (
        lambda r: {**r, "evaluation": {"languages": ["sw"], "temperature": 0}},
        "evaluation.temperature: unknown key",
    ),
    (
        lambda r: {**r, "evaluate_inputs": ["maths"]},
        "'maths' is not a model alias; did you mean 'math'",
    ),
    (lambda r: {**r, "merges": r["merges"] + [r["merges"][0]]}, "swap: name used twice"),
    (
        lambda r: {**r, "sweep": {**r["sweep"], "top": [7]}},
        "swap-t7-tr0: models[1].parameters.top: top=7 exceeds the model's 6 layers",
    ),
    (
        lambda r: {**r, "merges": [{**r["merges"][1], "merge_method": "dare_tie"}]},
        "dare: merge_method: unknown method 'dare_tie'; did you mean 'dare_ties'?",
    ),
    (
        lambda r: {**r, "merges": [{**r["merges"][0], "paramters": {}}]},
        "merges[0] (swap).paramters: not a mergekit config key; did you mean 'parameters'",
    ),
    (lambda r: {**r, "evaluation": {"languages": ["xx"]}}, "evaluation: "),
    (lambda r: {**r, "extra": 1}, "extra: unknown key"),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[m for _, m in BAD])
def test_invalid_suites_are_refused_before_anything_runs(
    aliases, tmp_path, capsys, change, message
):
    raw = change(suite_raw(aliases))
    with pytest.raises(InputError) as error:
        parse_suite(raw)
    assert any(message in problem for problem in error.value.problems), error.value.problems
    out = tmp_path / "out"
    code, text = run_suite_cli(tmp_path, raw, out, capsys=capsys)
    assert code == 2 and message in text
    assert not out.exists()


RECIPES = Path(__file__).parents[1] / "recipes"


@pytest.mark.parametrize(
    "recipe",
    sorted(
        p.name for p in RECIPES.glob("*.yml") if p.name not in ("layerswap.yml", "baselines.yml")
    ),
)
def test_suite_recipes_are_valid(recipe, make_model):
    """Every suite recipe validates once its model ids point at models of the right depth."""
    raw = yaml.safe_load((RECIPES / recipe).read_text())
    arch, depth = ("qwen3", 36) if "qwen3" in recipe else ("llama", 32 if "llama" in recipe else 8)
    raw["models"] = {
        alias: str(make_model(arch, depth, seed=20 + i)) for i, alias in enumerate(raw["models"])
    }
    suite = parse_suite(raw, RECIPES)  # its include is relative to the recipes folder
    assert suite.entries and all(e.config or e.model for e in suite.entries)


def test_in_memory_sweep_variant_equals_the_written_checkpoint(aliases, mgsm_hf_dir, tmp_path):
    """Same tensors bit for bit, and lm-eval produces the same generations and scores."""
    from lm_eval.models.huggingface import HFLM
    from mergekit.options import MergeOptions

    from mergekit_layerswap import merge
    from mergekit_layerswap.evaluate import EvalSettings, evaluate_lm
    from mergekit_layerswap.suite.in_memory import InMemorySweep

    config = layer_swap(
        aliases["math"], {aliases["swahili"]: {"bottom": 2, "top": 1}}, transition=1
    )
    written = merge.run(config, tmp_path / "written", MergeOptions(quiet=True))
    settings = EvalSettings(languages=("sw", "en"), limit=3, max_gen_toks=24, data_dir=mgsm_hf_dir)
    sweep = InMemorySweep(aliases["math"], aliases["swahili"], settings)
    model = sweep.build(config)
    on_disk = tensors(written)
    in_memory = model.state_dict()
    assert set(on_disk) == set(in_memory)
    assert all(torch.equal(on_disk[name], in_memory[name]) for name in on_disk)
    # copied layers share the experts' storage: nothing but transitions was computed
    donor_embed = sweep.state[aliases["swahili"]]["model.embed_tokens.weight"]
    assert in_memory["model.embed_tokens.weight"].data_ptr() == donor_embed.data_ptr()

    mine = sweep.score(config)
    written_lm = HFLM(pretrained=str(written), batch_size=settings.batch_size, device="cpu")
    theirs = evaluate_lm(written_lm, settings)
    for code in ("sw", "en"):
        assert mine[code].result == theirs[code].result
        assert [s["resps"] for s in mine[code].samples] == [
            s["resps"] for s in theirs[code].samples
        ]


def test_in_memory_variant_of_experts_in_two_dtypes_computes_as_the_written_one(
    aliases, make_model, tmp_path
):
    """A bfloat16 host and a float32 donor, no `dtype:`: the written checkpoint loads in the
    host config's dtype, and so does the in-memory variant (same tensors, same logits)."""
    from mergekit.options import MergeOptions
    from transformers import AutoModelForCausalLM

    from mergekit_layerswap import merge
    from mergekit_layerswap.evaluate import EvalSettings
    from mergekit_layerswap.suite.in_memory import InMemorySweep

    host = make_model("llama", 6, seed=11, dtype="bfloat16")
    donor = make_model("llama", 6, seed=12, dtype="float32")
    config = layer_swap(host, {donor: {"bottom": 2, "top": 1}}, transition=1)
    del config["dtype"]
    written = merge.run(config, tmp_path / "written", MergeOptions(quiet=True))
    loaded = AutoModelForCausalLM.from_pretrained(written, dtype="auto").eval()
    sweep = InMemorySweep(str(host), str(donor), EvalSettings(languages="sw", device="cpu"))
    model = sweep.build(config)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert all(ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]) for k in ours)
    ids = torch.arange(1, 17).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
