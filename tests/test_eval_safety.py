"""`eval` as a careless user meets it: no Hub, typos, reruns, noise, faults.

Each test names the defect class it covers (issue 12). Nothing we ship is mocked: the CLI
runs for real, lm-eval included, on the tiny session models and the local MGSM copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

from mergekit_layerswap import cli
from mergekit_layerswap.checkpoint import looks_local
from mergekit_layerswap.evaluate import read_results

#: A line of a tqdm progress bar (what an evaluation may leave on stderr).
PROGRESS = re.compile(r"^[\w ]*:? *\d+%\|")
#: Small and fast: one language, one problem, a few tokens.
QUICK = ["--languages", "sw", "--limit", "1", "--max-gen-toks", "4"]


def _stderr_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.fixture
def model(make_model, capsys) -> str:
    """The tiny session model, built before the test reads its output."""
    path = str(make_model())
    capsys.readouterr()
    return path


@pytest.fixture
def no_data_env(monkeypatch):
    """No MGSM data folder configured; Hub access decided by each test."""
    monkeypatch.delenv("MGSM_DATA_DIR", raising=False)


def test_offline_without_data_folder_is_one_line_before_anything_loads(
    model, tmp_path, capsys, no_data_env
):
    """Offline failures: HF_HUB_OFFLINE set, no data folder -> one line naming --data-dir and
    MGSM_DATA_DIR, exit 2, nothing written (not a 60-line traceback after loading a model)."""
    out = tmp_path / "out"
    assert cli.main(["eval", model, *QUICK, "--output", str(out)]) == 2
    err = _stderr_line(capsys)
    assert "offline (HF_HUB_OFFLINE=1)" in err and "--data-dir DIR or set MGSM_DATA_DIR" in err
    assert not out.exists()


def test_unreachable_hub_is_one_line_and_not_retried(make_model, tmp_path):
    """Offline failures: no offline switch, Hub unreachable (a port that refuses) -> one quick
    probe, then one line per problem (the data, the Hub model id), exit 2; no retries."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: every connection is refused
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env.pop("MGSM_DATA_DIR", None)
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed.getsockname()[1]}"
    argv = ["eval", str(make_model()), "someone/some-model", *QUICK, "--output", "out"]
    with closed:
        done = subprocess.run(
            [sys.executable, "-m", "mergekit_layerswap.cli", *argv],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 2 and "Retrying" not in done.stderr, done.stderr
    assert "no MGSM data: the Hugging Face Hub is unreachable" in lines[0]
    assert "'someone/some-model' is not a local folder" in lines[1]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("typo", ["models/merged-typo", "a/b/c", "./merged", "~/no-such-model"])
def test_path_like_model_is_never_sent_to_the_hub(typo, tmp_path, monkeypatch, capsys):
    """Offline failures: a typo'd local path (inside an existing folder, not Hub-shaped, or
    ./ ~ prefixed) is reported as a missing folder, never looked up as a Hub id."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    argv = ["eval", typo, *QUICK, "--output", "out", "--data-dir", "missing-data"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"model directory not found: {typo}" in err and "Hub" not in err, err
    assert "MGSM data directory not found" in err  # every problem at once
    assert not looks_local("someone/some-model")  # a Hub-shaped id outside local folders


def test_eval_outside_git_checkout_keeps_stderr_to_progress_bars(make_model, mgsm_hf_dir, tmp_path):
    """Quiet terminal: lm-eval's `git describe` (fatal: not a git repository), its warnings
    about settings we pass on purpose and datasets' split bars stay off the terminal; what
    remains on stderr is progress bars only."""
    argv = [str(make_model()), *QUICK, "--data-dir", str(mgsm_hf_dir), "--output", "out"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mergekit_layerswap.cli", "eval", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert subprocess.run(["git", "rev-parse"], cwd=tmp_path, capture_output=True).returncode
    lines = [part for part in re.split(r"[\r\n]+", done.stderr) if part.strip()]
    assert lines and all(PROGRESS.match(line) for line in lines), done.stderr
    assert "exact_match" in done.stdout


def test_second_eval_into_same_output_keeps_first_runs_models(
    make_model, mgsm_hf_dir, tmp_path, capsys
):
    """Runs into one --output: a second run's results.json/results.md hold the first run's
    models too (merged by identity); a run with other settings is refused in one line."""
    model_a, model_b = make_model(seed=0), make_model(seed=1)
    out = tmp_path / "out"
    common = [*QUICK, "--data-dir", str(mgsm_hf_dir), "--output", str(out)]
    assert cli.main(["eval", str(model_a), *common]) == 0
    first = read_results(out)
    assert cli.main(["eval", str(model_b), *common]) == 0
    both = read_results(out)
    assert [m.identity.model for m in both.models] == [str(model_a), str(model_b)]
    assert both.models[0] == first.models[0]
    table = (out / "results.md").read_text()
    assert f"| {model_a} |" in table and f"| {model_b} |" in table
    assert cli.main(["eval", str(model_a), *common]) == 0  # scored again: replaced, not doubled
    assert read_results(out).models == both.models
    capsys.readouterr()

    before = (out / "results.json").read_text()
    assert cli.main(["eval", str(model_a), *common, "--mode", "direct"]) == 2
    err = _stderr_line(capsys)
    assert "holds results for other settings (mode native_cot -> direct)" in err
    assert (out / "results.json").read_text() == before
    assert json.loads(before)["settings"]["mode"] == "native_cot"


def test_run_fault_is_one_line_exit_1_and_verbose_shows_traceback(
    model, mgsm_hf_dir, tmp_path, capsys
):
    """CLI faults: an OSError during a run (a model folder without weights) prints one line
    naming what failed, exit 1; -v raises it with its traceback instead."""
    broken = shutil.copytree(model, tmp_path / "broken")
    (broken / "model.safetensors").unlink()
    argv = ["eval", str(broken), *QUICK, "--data-dir", str(mgsm_hf_dir)]
    assert cli.main([*argv, "--output", str(tmp_path / "out")]) == 1
    err = _stderr_line(capsys)
    assert err.startswith("mergekit-layerswap eval: failed: ") and "-v shows" in err
    assert str(broken) in err or "model.safetensors" in err, err
    with pytest.raises(OSError):
        cli.main(["-v", *argv, "--output", str(tmp_path / "out2")])
