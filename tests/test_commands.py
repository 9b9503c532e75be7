"""Every command we print runs as written, and a quiet terminal: the model card's reproduce
commands (run as printed, same scores), eval's options from EvalSettings, install lines that
work today, no `torch_dtype` warning on a merge, and the small print defects of issue 19."""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml
from helpers import layer_swap, suite_swap
from huggingface_hub import ModelCard

from mergekit_layerswap import cli, hub
from mergekit_layerswap.evaluate.settings import EvalSettings, eval_command
from mergekit_layerswap.lab import run as lab_run
from mergekit_layerswap.lab import testsets as lab_tasks
from mergekit_layerswap.suite import executor, include

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


@pytest.mark.parametrize(
    "values",
    [
        {"languages": "sw,en"},
        {"languages": "all", "mode": "en_cot", "num_fewshot": 8, "limit": 3, "batch_size": 8},
        {"languages": "te", "backend": "vllm", "max_gen_toks": 512, "batch_size": 16},
        {"tasks": "a,b", "include_path": "task folder", "max_gen_toks": 48, "limit": 2},
        {"tasks": "gsm8k", "num_fewshot": 5, "batch_size": "auto"},
    ],
)
def test_eval_arguments_give_back_every_scoring_setting(values, tmp_path, monkeypatch):
    """What `eval` parses from EvalSettings.eval_arguments scores the same: every field that
    can change a score, what is scored, and a batch size other than the default."""
    monkeypatch.chdir(tmp_path)
    settings = EvalSettings.checked(**values)
    words = shlex.split(eval_command(["org/model", "my model"], settings, "out dir/"))
    assert words[:4] == ["mergekit-layerswap", "eval", "org/model", "my model"]
    args = cli.build_parser().parse_args(words[1:])
    assert args.output == "out dir/"
    again = cli._eval_settings(args)
    assert again.scoring_key() == settings.scoring_key()
    for name in ("languages", "tasks", "include_path", "batch_size"):
        assert getattr(again, name) == getattr(settings, name), name
    assert ("--max-gen-toks" in words) and ("--mode" in words) == settings.is_mgsm


def test_install_lines_name_packages_that_exist():
    """Not on a package index yet: no command (the README's and docs' code blocks, the recipes, the
    package's messages and cards) says `pip install mergekit-layerswap`; the hints name what
    the extras install."""
    assert f"pip install '{EXTRAS['ray'][0]}'" == executor.INSTALL_HINT
    texts = {
        str(page): "".join(re.findall(r"```\w*\n(.*?)```", page.read_text(), re.S))
        for page in [ROOT / "README.md", *ROOT.glob("docs/*.md")]
    }
    for path in [*ROOT.glob("recipes/*.yml"), *ROOT.glob("mergekit_layerswap/**/*.py")]:
        texts[str(path)] = path.read_text()
    for where, text in texts.items():
        assert not re.search(r"pip install ['\"]?mergekit-layerswap", text), where


def test_vllm_hint_installs_what_the_extra_does(aliases, mgsm_hf_dir, tmp_path, capsys):
    if find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    argv = ["eval", aliases["math"], "--languages", "sw", "--backend", "vllm"]
    argv += ["--data-dir", str(mgsm_hf_dir), "--output", str(tmp_path)]
    assert cli.main(argv) == 2
    assert f"pip install '{EXTRAS['vllm'][0]}'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 B"),
        (7, "7 B"),
        (999, "999 B"),
        (1500, "1.5 KB"),
        (2_340_000, "2.3 MB"),
        (3e12, "3000.0 GB"),
    ],
)
def test_sizes_are_human_and_never_zero_for_a_file_that_is_not(size, shown):
    assert hub.human_size(size) == shown


def test_lab_suite_file_includes_the_recipes_baselines(tmp_path):
    """The lab's suite.yml takes the baselines from the recipes' baselines.yml (include:),
    spelled out nowhere else, and plain YAML (no `&id001` anchors)."""
    models = {name: tmp_path / name for name in ("base", "math", "lang")}
    swap = {"donor": {"bottom": 1}, "transition": 0}
    config = lab_run.suite_config(lab_run.LabSettings(), models, swap, tmp_path / "tasks")
    assert Path(config["include"]) == include.BASELINES and include.BASELINES.is_file()
    text = yaml.safe_dump(config, sort_keys=False)
    assert "&" not in text and "*id" not in text
    problems: list[str] = []
    expanded = include.expand(config, tmp_path, problems)
    assert problems == []
    assert [m["name"] for m in expanded["baselines"]] == [
        "soup",
        "task-arithmetic",
        "ties",
        "dare-ties",
    ]


@pytest.mark.slow
def test_merge_refuses_no_safe_serialization_in_one_line_and_does_not_list_it(
    make_model, tmp_path, capsys
):
    host, donor = make_model("llama", 4, seed=1), make_model("llama", 4, seed=2)
    config = tmp_path / "swap.yml"
    config.write_text(yaml.safe_dump(layer_swap(host, {donor: {"bottom": 1}})))
    capsys.readouterr()
    assert cli.main(["merge", str(config), str(tmp_path / "out"), "--no-safe-serialization"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--no-safe-serialization: merge writes safetensors" in err
    with pytest.raises(SystemExit):
        cli.main(["merge", "-h"])
    assert "safe-serialization" not in capsys.readouterr().out


@pytest.mark.slow
def test_merge_writes_the_dtype_without_the_torch_dtype_warning(make_model, tmp_path):
    """mergekit sets `config.torch_dtype`, deprecated in transformers 5 (a warning on every
    merge); our patch sets `dtype` instead: the same config.json, and no warning."""
    import inspect

    import mergekit.merge

    assert "_model_out_config(" in inspect.getsource(mergekit.merge.run_merge)
    original = mergekit.merge._model_out_config.__wrapped__
    assert "res.torch_dtype = config.out_dtype" in inspect.getsource(original)
    host, donor = make_model("llama", 4, seed=1), make_model("llama", 4, seed=2)
    raw = {**layer_swap(host, {donor: {"top": 1}}), "out_dtype": "float16"}
    config = tmp_path / "swap.yml"
    config.write_text(yaml.safe_dump(raw))
    done = subprocess.run(
        [str(BIN / "mergekit-yaml"), str(config), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "torch_dtype" not in done.stderr + done.stdout
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "float16"


def _suite(aliases: dict, tmp_path: Path, **evaluation) -> Path:
    raw = {"models": dict(aliases), "merges": [suite_swap()], "evaluation": evaluation}
    path = tmp_path / "suite.yml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_suite_dry_run_columns_line_up(aliases, mgsm_hf_dir, tmp_path, capsys):
    path = _suite(aliases, tmp_path, languages=["sw"], data_dir=str(mgsm_hf_dir))
    raw = yaml.safe_load(path.read_text())
    raw["evaluate_inputs"] = ["math"]
    raw["merges"].append(
        {
            "name": "task-arithmetic-of-math-and-swahili",
            "merge_method": "task_arithmetic",
            "base_model": "base",
            "models": [{"model": m, "parameters": {"weight": 1.0}} for m in ("math", "swahili")],
        }
    )
    path.write_text(yaml.safe_dump(raw))
    assert cli.main(["suite", str(path), str(tmp_path / "out"), "--dry-run"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "eval: " in line]
    assert [line.split()[2] for line in lines] == ["-", "layer_swap", "task_arithmetic"]
    # name, kind, method and "merge:" start in the same column on every line, and "eval:"
    starts = {tuple(m.start() for m in re.finditer(r"\S+", line))[:4] for line in lines}
    assert len(starts) == 1 and len({line.index("eval:") for line in lines}) == 1, lines


@pytest.mark.slow
def test_card_commands_run_as_written_and_give_the_card_scores(aliases, tmp_path, capsys):
    """A suite scored on lm-eval tasks of its own folder with a short generation length: the
    card's reproduce commands, run as printed in a copy of the model folder, rebuild the
    merge and score it as the card says (the lab's cards left out `--max-gen-toks`)."""
    folder = lab_tasks.write(lab_tasks.build("sw", 3, seed=0), "sw", tmp_path / "tasks", 8)
    names = list(lab_tasks.task_names("sw"))
    path = _suite(aliases, tmp_path, tasks=names, include_path=str(folder), limit=2, max_gen_toks=8)
    assert cli.main(["suite", str(path), str(tmp_path / "out")]) == 0
    capsys.readouterr()
    copy = shutil.copytree(tmp_path / "out" / "merges" / "swap", tmp_path / "copy")
    card = (copy / "README.md").read_text()
    reproduce = card.split("## Reproduce")[1].split("## ")[0]
    assert "pip install -e ." in reproduce and "not yet on a package index" in reproduce
    commands = reproduce.split("```bash\n")[1].split("```")[0].splitlines()
    assert [c.split()[0] for c in commands] == ["mergekit-yaml", "mergekit-layerswap"]
    assert "--max-gen-toks 8" in commands[1] and f"--include-path {folder}" in commands[1]
    assert "--limit 2" in commands[1]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    outputs = []
    for command in commands:
        done = subprocess.run(
            shlex.split(command), cwd=copy, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, (command, done.stderr[-3000:])
        outputs.append(done.stdout + done.stderr)
    assert "torch_dtype" not in outputs[0]
    assert "wrote results/results.json" in outputs[1]  # not results//results.json
    again = json.loads((copy / "results" / "results.json").read_text())["models"][0]
    data = ModelCard.load(copy / "README.md").data
    on_card = {r.dataset_config: r.metric_value for r in data.eval_results}
    assert on_card == {task: again["columns"][task]["score"] for task in names}
    stored = json.loads((tmp_path / "out" / "results" / "swap.json").read_text())["columns"]
    assert {t: r["n"] for t, r in again["columns"].items()} == {t: 2 for t in names}
    assert {t: r["score"] for t, r in stored.items()} == on_card
    # tiny random models score 0 anyway: the runs must also agree on every scoring setting
    # and task file (their cache keys but the model's fingerprint, which counts the suite's
    # metadata file) and generate the same text
    assert cached_runs(copy / "results" / "cache") == cached_runs(tmp_path / "out" / "cache")


def cached_runs(folder: Path) -> dict[str, tuple[dict, bytes]]:
    """Column -> (its result cache key without the model, its samples) in a result cache."""
    runs = {}
    for path in folder.glob("*.json"):
        key = json.loads(path.read_text())["key"]
        del key["model"]
        samples = gzip.decompress(path.with_suffix(".samples.jsonl.gz").read_bytes())
        runs[key.pop("language")] = (key, samples)
    return runs
