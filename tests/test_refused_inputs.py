"""Inputs that gave a traceback, or were taken silently, and are now one line with exit 2
(issue 22): each test names its item. Nothing here loads a model for scoring."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import layer_swap
from safetensors.torch import load_file, save_file

from mergekit_layerswap import cli
from mergekit_layerswap.complete import CONFIG_FILE
from mergekit_layerswap.errors import InputError
from mergekit_layerswap.suite.schema import parse_suite


def one_line(capsys, command: str) -> str:
    """The single stderr line of a refused command."""
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mergekit-layerswap {command}: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("spec", [",", " ", "", " , "])
def test_eval_tasks_naming_no_task_is_refused_not_mgsm(spec, tmp_path, capsys):
    """`eval --tasks ','` (or ' ', '') silently switched to MGSM on all 11 languages."""
    out = tmp_path / "out"
    assert cli.main(["eval", str(tmp_path), "--tasks", spec, "--output", str(out)]) == 2
    assert "names no task" in one_line(capsys, "eval")
    assert not out.exists()


def test_eval_settings_problems_name_the_flag(tmp_path, capsys):
    """A bad `eval` setting is named by its flag (`--max-gen-toks`), not its field."""
    out = tmp_path / "out"
    argv = ["eval", str(tmp_path), "--languages", "sw", "--max-gen-toks", "0", "--output", str(out)]
    assert cli.main(argv) == 2
    assert "--max-gen-toks: Input should be greater than 0" in one_line(capsys, "eval")
    assert not out.exists()


def test_suite_tasks_naming_no_task_is_refused_not_mgsm(aliases):
    """A suite's `evaluation: {tasks: []}` silently scored MGSM instead."""
    raw = {"models": aliases, "evaluate_inputs": ["math"], "evaluation": {"tasks": []}}
    with pytest.raises(InputError) as error:
        parse_suite(raw)
    assert error.value.problems == [
        "evaluation: tasks: [] names no task; give lm-eval task or group names"
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--random-seed", "-1"], "--random-seed: got -1; give 0..4294967295"),
        (["--random-seed", str(2**32)], "--random-seed: got 4294967296"),
        (["-j", "0"], "-j/--num-threads: got 0; give at least 1"),
    ],
)
def test_merge_seed_and_thread_counts_out_of_range(flags, message, tmp_path, capsys):
    """`merge --random-seed -1` and `-j 0` gave tracebacks (numpy's and torch's)."""
    config = tmp_path / "swap.yml"
    config.write_text("merge_method: linear\n")
    assert cli.main(["merge", str(config), str(tmp_path / "out"), *flags]) == 2
    assert message in one_line(capsys, "merge")


def test_merge_tokenizer_source_folder_that_is_not_there(make_model, tmp_path, capsys):
    """`tokenizer_source: /nonexistent/tok` was tried as a Hub id after the whole merge."""
    host, donor = make_model("llama", 4, seed=1), make_model("llama", 4, seed=2)
    capsys.readouterr()  # the models' build output
    raw = {**layer_swap(host, {donor: {"bottom": 1}}), "tokenizer_source": "/nonexistent/tok"}
    config = tmp_path / "swap.yml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert cli.main(["merge", str(config), str(out)]) == 2
    assert "tokenizer_source: /nonexistent/tok is not a folder" in one_line(capsys, "merge")
    assert not out.exists() and list(tmp_path.iterdir()) == [config]


@pytest.fixture
def card_folder(make_model, tmp_path) -> Path:
    """A model folder with a valid layer_swap mergekit_config.yml (the card's input)."""
    folder = Path(shutil.copytree(make_model("llama", 4, seed=1), tmp_path / "model"))
    raw = layer_swap(folder, {make_model("llama", 4, seed=2): {"bottom": 1}})
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(raw))
    return folder


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: "models: [\n", "does not parse as YAML"),
        (lambda text: b"\xff\xfe" + text.encode(), "does not parse as YAML"),
        (lambda text: text.replace("models:", "models: 5\nx:"), "a list of `- model: MODEL`"),
        (lambda text: text.replace("bottom: 1", "bottom: lots"), "bottom: Input should be"),
        (lambda text: text.replace("bottom: 1", "bottom: 9"), "bottom=9 exceeds"),
    ],
    ids=["invalid-yaml", "not-utf8", "models-5", "bottom-lots", "bottom-9"],
)
def test_card_on_a_corrupt_saved_config(card_folder, edit, message, capsys):
    """`card` on a folder whose mergekit_config.yml is corrupt gave a traceback."""
    capsys.readouterr()  # the models' build output
    path = card_folder / CONFIG_FILE
    changed = edit(path.read_text())
    path.write_bytes(changed if isinstance(changed, bytes) else changed.encode())
    assert cli.main(["card", str(card_folder)]) == 2
    assert message in one_line(capsys, "card")
    assert not (card_folder / "README.md").exists()


def _analyze(capsys, base: Path, *experts: str, out: Path) -> tuple[int, str]:
    capsys.readouterr()  # the models' build output
    argv = ["analyze", "--base", str(base), "--output", str(out), "--quiet"]
    for spec in experts:
        argv += ["--expert", spec]
    code = cli.main(argv)
    return code, capsys.readouterr().err.strip()


def test_analyze_refuses_a_lora_adapter(make_model, tmp_path, capsys):
    """`analyze --expert a=donor+/path/lora` silently ignored the adapter."""
    base, donor = make_model("llama", 4, seed=1), make_model("llama", 4, seed=2)
    out = tmp_path / "out"
    code, err = _analyze(capsys, base, f"a={donor}+{tmp_path / 'lora'}", out=out)
    assert code == 2 and "adds a LoRA adapter" in err and "\n" not in err
    assert not out.exists()


def test_analyze_refuses_an_expert_of_another_architecture(make_model, tmp_path, capsys):
    """`analyze` took a Llama base with a Qwen2 expert."""
    base, other = make_model("llama", 4, seed=1), make_model("qwen2", 4, seed=1)
    out = tmp_path / "out"
    code, err = _analyze(capsys, base, f"a={other}", out=out)
    assert code == 2 and "is a Qwen2ForCausalLM, the base a LlamaForCausalLM" in err
    assert not out.exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_analyze_refuses_non_finite_weights(make_model, tmp_path, capsys, value):
    """`analyze` gave `null` with exit 0 for an expert holding NaN weights."""
    base = make_model("llama", 4, seed=1)
    expert = Path(shutil.copytree(base, tmp_path / "expert"))
    weights = load_file(expert / "model.safetensors")
    name = "model.layers.2.mlp.down_proj.weight"
    weights[name] = weights[name].clone()
    weights[name].view(-1)[5] = value
    save_file(weights, expert / "model.safetensors", metadata={"format": "pt"})
    code, err = _analyze(capsys, base, f"a={expert}", out=tmp_path / "out")
    assert code == 2, err
    assert err.endswith(
        f"a: tensor {name} holds NaN or infinite values; analyze needs finite weights"
    )
    assert torch.isfinite(load_file(base / "model.safetensors")[name]).all()


def _suite(tmp_path: Path, aliases: dict, mgsm_hf_dir: Path, **changes) -> Path:
    raw = {
        "models": aliases,
        "evaluate_inputs": ["math"],
        "evaluation": {"languages": ["sw"], "data_dir": str(mgsm_hf_dir)},
        **changes,
    }
    path = tmp_path / "suite.yml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_suite_out_dir_that_is_an_input_models_folder(aliases, mgsm_hf_dir, tmp_path, capsys):
    """A suite OUT_DIR that is an input model's own folder was accepted (and filled it)."""
    model = Path(aliases["math"])
    before = sorted(p.name for p in model.iterdir())
    capsys.readouterr()  # the models' build output
    path = _suite(tmp_path, aliases, mgsm_hf_dir)
    assert cli.main(["suite", str(path), str(model)]) == 2
    assert f"OUT_DIR {model} is the folder of the input model {model}" in one_line(capsys, "suite")
    assert sorted(p.name for p in model.iterdir()) == before


@pytest.mark.parametrize(
    ("executor", "flags", "message"),
    [
        ({"kind": "ray", "shared_storage_timeout": float("inf")}, [], "finite number"),
        ({"kind": "ray", "cpus_per_task": float("inf")}, [], "finite number"),
        ({}, ["--executor", "ray", "--address", ""], "executor.address (--address): empty"),
    ],
    ids=["timeout-inf", "cpus-inf", "address-empty"],
)
def test_ray_settings_refused_before_a_cluster_starts(
    aliases, mgsm_hf_dir, tmp_path, capsys, executor, flags, message
):
    """Ray: `shared_storage_timeout: .inf` overflowed after starting a cluster; `--address ''`
    silently started a local cluster."""
    import ray

    path = _suite(tmp_path, aliases, mgsm_hf_dir, executor=executor)
    capsys.readouterr()  # the models' build output
    assert cli.main(["suite", str(path), str(tmp_path / "out"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not ray.is_initialized() and not (tmp_path / "out").exists()
