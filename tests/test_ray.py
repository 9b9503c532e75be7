"""Suites on a Ray cluster (`executor: ray`): same leaderboard and tensors as the local
executor, a killed worker's task retried, a killed driver resumed, bad settings refused.

One local Ray cluster (2 CPUs) serves the whole module; runs join it instead of starting one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from helpers import suite_swap, tensors

from mergekit_layerswap import cli
from mergekit_layerswap.suite import ray_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A local Ray cluster of 2 CPUs, started once for all the tests here; its address."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def suite_file(tmp_path: Path, aliases: dict, mgsm_hf_dir: Path, **changes) -> Path:
    """An input, a merge and an in-memory sweep variant: 4 tasks (merge swap, eval math,
    eval swap after merge swap, eval swap-t1-tr0 by a sweep actor)."""
    raw = {
        "models": dict(aliases),
        "evaluate_inputs": ["math"],
        "merges": [
            suite_swap(transition=1),
        ],
        "sweep": {"base_model": "math", "donor": "swahili", "top": [1]},
        "evaluation": {
            "languages": ["sw", "en"],
            "limit": 2,
            "max_gen_toks": 16,
            "data_dir": str(mgsm_hf_dir),
        },
        **changes,
    }
    path = tmp_path / "suite.yml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run(capsys, path: Path, out: Path, *flags: str) -> tuple[int, str]:
    code = cli.main(["suite", str(path), str(out), *flags])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def board(out: Path) -> list[dict]:
    return json.loads((out / "leaderboard.json").read_text())


def merged_tensors(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {folder.name: tensors(folder) for folder in sorted((out / "merges").iterdir())}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, aliases, mgsm_hf_dir) -> Path:
    """The suite run by the local executor: the reference every Ray run must match."""
    folder = tmp_path_factory.mktemp("local")
    out = folder / "out"
    assert cli.main(["suite", str(suite_file(folder, aliases, mgsm_hf_dir)), str(out)]) == 0
    return out


def test_ray_and_local_executors_give_the_same_leaderboard_and_tensors(
    ray_address, local_run, aliases, mgsm_hf_dir, tmp_path, capsys
):
    path = suite_file(tmp_path, aliases, mgsm_hf_dir)
    out = tmp_path / "out"
    code, text = run(capsys, path, out, "--executor", "ray")
    assert code == 0, text
    assert board(out) == board(local_run)  # names, kinds, methods, scores, order
    assert len(board(out)) == 3
    mine, theirs = merged_tensors(out), merged_tensors(local_run)
    assert list(mine) == ["swap"] == list(theirs)
    for name, found in mine.items():
        assert found.keys() == theirs[name].keys()
        assert all(torch.equal(found[t], theirs[name][t]) for t in found), name
    summary = json.loads((out / ray_run.RUN_FILE).read_text())
    assert (summary["run"], summary["retried"], summary["cached"]) == (4, 0, 0)
    assert sorted((t["kind"], t["name"]) for t in summary["tasks"]) == sorted(
        [("merge", "swap")] + [("eval", n) for n in ("math", "swap", "swap-t1-tr0")]
    )
    assert text.count("done ") == 4 and "ray: 4 task(s) run" in text

    # a rerun skips everything finished, whichever executor finished it
    code, text = run(capsys, path, out)  # local executor
    assert code == 0 and not [line for line in text.splitlines() if line.startswith("merge ")]
    assert not [line for line in text.splitlines() if line.startswith("eval ")]
    code, text = run(capsys, path, local_run, "--executor", "ray")
    assert code == 0 and "ray: 0 task(s) run" in text and "4 cached" in text


def test_a_killed_worker_is_retried_and_the_suite_completes(
    ray_address, local_run, aliases, mgsm_hf_dir, tmp_path
):
    path = suite_file(tmp_path, aliases, mgsm_hf_dir)
    out = tmp_path / "out"
    codes: list[int] = []
    driver = threading.Thread(
        target=lambda: codes.append(cli.main(["suite", str(path), str(out), "--executor", "ray"]))
    )
    driver.start()
    killed: dict[str, int] = {}
    deadline = time.time() + 300
    while len(killed) < 2 and driver.is_alive() and time.time() < deadline:
        for task in ("merge-swap", "eval-swap"):
            running = out / ray_run.TASKS_DIR / f"{task}.json"
            record = json.loads(running.read_text()) if running.exists() else None
            if task not in killed and record and record["attempt"] == 1:
                os.kill(record["pid"], signal.SIGKILL)  # the worker process, mid-task
                killed[task] = record["pid"]
        time.sleep(0.02)
    driver.join(timeout=600)
    assert codes == [0]
    assert "eval-swap" in killed, "the evaluation was not caught running"
    summary = json.loads((out / ray_run.RUN_FILE).read_text())
    attempts = {f"{t['kind']}-{t['name']}": t["attempt"] for t in summary["tasks"]}
    assert all(attempts[task] == 2 for task in killed), (killed, attempts)
    assert summary["retried"] == len(killed) and summary["run"] == 4
    assert board(out) == board(local_run)
    assert merged_tensors(out).keys() == merged_tensors(local_run).keys()
    swap, reference = tensors(out / "merges" / "swap"), tensors(local_run / "merges" / "swap")
    assert all(torch.equal(swap[t], reference[t]) for t in reference)
    assert not list((out / "merges").glob(".*partial*"))  # the killed merge left nothing


def test_a_killed_driver_is_resumed_with_only_what_was_missing(
    ray_address, local_run, aliases, mgsm_hf_dir, tmp_path, capsys
):
    path = suite_file(tmp_path, aliases, mgsm_hf_dir)
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "mergekit_layerswap.cli",
        "suite",
        str(path),
        str(out),
        "--executor",
        "ray",
        "--address",
        ray_address,
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 300
    while not list((out / "results").glob("*.json")):  # the first result is in
        assert process.poll() is None and time.time() < deadline, "suite ended before the kill"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(1)  # the cluster ends the dead driver's tasks
    finished = {p.stem: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")}
    assert 1 <= len(finished) < 3

    code, text = run(capsys, path, out, "--executor", "ray")
    assert code == 0, text
    summary = json.loads((out / ray_run.RUN_FILE).read_text())
    evaluated = {t["name"] for t in summary["tasks"] if t["kind"] == "eval"}
    assert evaluated == {row["name"] for row in board(local_run)} - set(finished)
    for name, mtime in finished.items():
        assert (out / "results" / f"{name}.json").stat().st_mtime_ns == mtime
    assert board(out) == board(local_run)


def full_pipe() -> tuple[int, int]:
    """A pipe (read end, write end) whose buffer is already full: whoever writes to it next
    waits until the reader reads."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"\n" * 65536)
    os.set_blocking(write_end, True)
    return read_end, write_end


def test_ctrl_c_cancels_the_run_in_one_line_and_keeps_what_finished(
    ray_address, local_run, aliases, mgsm_hf_dir, tmp_path, capsys
):
    """Ctrl-C while tasks are out. The run's stdout is a full pipe, read only after the
    signal: the driver's first progress line ("done 1/4 ...") waits there, so the run cannot
    finish before Ctrl-C, however late this test gets the CPU (polling for the first result,
    it once signalled a run that had already ended: exit 0)."""
    path = suite_file(tmp_path, aliases, mgsm_hf_dir)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mergekit_layerswap.cli", "suite", str(path), str(out)]
    read_end, write_end = full_pipe()
    with (tmp_path / "stderr").open("w") as stderr:
        process = subprocess.Popen(
            [*command, "--executor", "ray", "--address", ray_address],
            stdout=write_end,
            stderr=stderr,
            # as a user's shell starts it: earlier tests of the suite leave this process with
            # SIGINT ignored, a disposition a child inherits, and Python then never raises
            # KeyboardInterrupt (the run ended with exit 0)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    os.close(write_end)
    deadline = time.time() + 300
    while not list((out / "results").glob("*.json")):
        assert process.poll() is None and time.time() < deadline, "suite ended before Ctrl-C"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    with open(read_end, "rb") as stdout:
        reader = threading.Thread(target=stdout.read)
        reader.start()  # the run goes on: it sees the signal, cancels, prints and ends
        process.wait(timeout=120)
        reader.join(timeout=60)
    err = (tmp_path / "stderr").read_text()
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "mergekit-layerswap suite: interrupted", err
    assert "constructor arguments in the object store" not in err  # Ray's warning: none due
    finished = {p.stem: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")}
    assert finished
    code, text = run(capsys, path, out)  # the local executor finishes the Ray run's suite
    assert code == 0, text
    for name, mtime in finished.items():
        assert (out / "results" / f"{name}.json").stat().st_mtime_ns == mtime
    assert board(out) == board(local_run)


def test_every_node_must_see_the_output_folder(ray_address, tmp_path):
    ray_run.check_shared_storage(tmp_path, timeout=60)  # one node, local disk: it sees it
    assert not list(tmp_path.iterdir())  # the probe file is gone
    problems = ray_run.probe_nodes(tmp_path / "elsewhere" / "probe", "token", timeout=60)
    assert len(problems) == 1 and "cannot see" in problems[0], problems
    assert "storage every node of the Ray cluster sees" in problems[0]


def test_bad_executor_settings_are_refused(
    ray_address, aliases, mgsm_hf_dir, tmp_path, capsys, monkeypatch
):
    executor = {"kind": "ray", "gpus_per_eval": 1}
    path = suite_file(tmp_path, aliases, mgsm_hf_dir, executor=executor)
    code, text = run(capsys, path, tmp_path / "out")
    assert code == 2 and "no node of the Ray cluster has 1 CPU(s) and 1 GPU(s)" in text, text
    assert not (tmp_path / "out" / "results").exists()

    path = suite_file(tmp_path, aliases, mgsm_hf_dir, executor={"kind": "rya"})
    code, text = run(capsys, path, tmp_path / "out2")
    assert code == 2 and "executor.kind" in text, text

    path = suite_file(tmp_path, aliases, mgsm_hf_dir)
    code, text = run(capsys, path, tmp_path / "out3", "--address", "auto")
    assert code == 2 and "needs the ray executor" in text, text
    code, text = run(
        capsys, path, tmp_path / "out3", "--executor", "ray", "--address", "127.0.0.1:9"
    )
    assert code == 2 and "no Ray cluster at 127.0.0.1:9" in text, text

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    code, text = run(capsys, path, tmp_path / "out4", "--executor", "ray")
    assert code == 2 and "pip install 'ray[client]>=2.9'" in text, text
    assert not (tmp_path / "out4").exists()


def test_a_killed_worker_without_retries_is_one_line(
    ray_address, aliases, mgsm_hf_dir, tmp_path, capsys
):
    """With `max_retries: 0`, a killed worker gave a full WorkerCrashedError traceback."""
    executor = {"kind": "ray", "max_retries": 0}
    path = suite_file(tmp_path, aliases, mgsm_hf_dir, executor=executor)
    out = tmp_path / "out"
    codes: list[int] = []
    driver = threading.Thread(target=lambda: codes.append(cli.main(["suite", str(path), str(out)])))
    driver.start()
    killed = None
    deadline = time.time() + 300
    while killed is None and driver.is_alive() and time.time() < deadline:
        for running in (out / ray_run.TASKS_DIR).glob("*.json"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # just ended
                record = json.loads(running.read_text())
                os.kill(record["pid"], signal.SIGKILL)  # the worker process, mid-task
                killed = running.stem
                break
        time.sleep(0.02)
    driver.join(timeout=600)
    err = capsys.readouterr().err.strip().splitlines()
    assert killed is not None, "no task was caught running"
    kind, name = killed.split("-", 1)
    assert codes == [1], err
    assert err[-1].startswith(
        f"mergekit-layerswap suite: error: {kind} {name}: failed on the Ray cluster after 0 "
        "retries (executor.max_retries): "
    )
