"""Output folders and the code and inputs of an evaluation (issue 22, items 7 and 8): a full
disk names its file, one `--output` at a time, a truncated cache entry redone, the include
digest kept off the run's own outputs, `!function` code never run by a dry run, a task YAML's
own parse error, long output names, an existing output folder written inside itself, and a
Hub endpoint that never answers or answers HTML. Each test names its item; lm-eval, mergekit
and huggingface_hub run unchanged."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import pytest
import yaml
from helpers import layer_swap
from test_evaluate_tasks import _task, write_task_folder

from mergekit_layerswap import cli, hub, merge
from mergekit_layerswap.errors import RunError
from mergekit_layerswap.evaluate import EvalSettings, columns
from mergekit_layerswap.evaluate.run import LOCK_FILE

pytestmark = pytest.mark.slow
QUICK = ["--languages", "sw", "--limit", "1", "--max-gen-toks", "4"]


@pytest.fixture
def model(make_model) -> str:
    return str(make_model("llama", 2, seed=3))


def eval_argv(model: str, out: Path, data: Path) -> list[str]:
    return ["eval", model, *QUICK, "--data-dir", str(data), "--output", str(out)]


def test_a_full_disk_at_the_results_file_names_it(model, mgsm_hf_dir, tmp_path, capsys):
    """A full disk during `eval --output` failed in one line that named no file."""
    out = tmp_path / "out"
    out.mkdir()
    # the results file's temporary sibling is /dev/full: writing it fails with ENOSPC
    (out / f".results.json.partial-{os.getpid()}").symlink_to("/dev/full")
    assert cli.main(eval_argv(model, out, mgsm_hf_dir)) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"mergekit-layerswap eval: failed: {out / 'results.json'}: ")
    assert "No space left on device" in last
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, "cache"]  # no partial left


def test_eval_samples_or_cache_linked_out_of_the_output_folder(
    model, mgsm_hf_dir, tmp_path, capsys
):
    """Nothing eval writes follows a symlink out of its output folder (samples, cache)."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    for name in ("samples", "cache"):
        (out / name).symlink_to(elsewhere)
    capsys.readouterr()
    assert cli.main([*eval_argv(model, out, mgsm_hf_dir), "--log-samples"]) == 2
    err = capsys.readouterr().err
    for name in ("samples", "cache"):
        assert f"{out / name} is a link out of {out} (to {elsewhere}); remove the link" in err
    assert len(err.strip().splitlines()) == 2 and not list(elsewhere.iterdir())


@pytest.mark.parametrize("name", ["analysis.csv", "layers.png"])
def test_analysis_files_are_written_atomically(make_model, tmp_path, capsys, name):
    """Every results file, CSV and picture is written atomically: through a temporary sibling
    (here /dev/full, so the disk is full), which a full disk names by the file's own name."""
    base, expert = make_model("llama", 4, seed=1), make_model("llama", 4, seed=2)
    out = tmp_path / "out"
    out.mkdir()
    (out / f".{name}.partial-{os.getpid()}").symlink_to("/dev/full")
    capsys.readouterr()
    argv = ["analyze", "--base", str(base), "--expert", f"a={expert}", "--output", str(out)]
    assert cli.main([*argv, "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"mergekit-layerswap analyze: failed: {out / name}: No space left on device " + (
        "(-v shows the traceback)"
    )
    assert not (out / name).exists() and not list(out.glob(".*partial*"))


def test_two_evals_into_one_output_folder(model, mgsm_hf_dir, tmp_path, capsys):
    """Two `eval` runs into one `--output` at once: the last writer won, there was no lock."""
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\nfrom mergekit_layerswap.files import hold"
            f"\nwith hold(Path(sys.argv[1]), {LOCK_FILE!r}, 'eval run', '--output'):\n"
            "    print('held', flush=True)\n    time.sleep(600)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code = cli.main(eval_argv(model, out, mgsm_hf_dir))
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"another eval run (pid {holder.pid}) is using this output" in err
    assert not (out / "results.json").exists()
    assert cli.main(eval_argv(model, out, mgsm_hf_dir)) == 0  # released with its process


def test_a_truncated_cache_entry_is_scored_again(model, mgsm_hf_dir, tmp_path, capsys):
    """One truncated eval cache entry ended every later eval on that folder in a traceback."""
    out = tmp_path / "out"
    assert cli.main(eval_argv(model, out, mgsm_hf_dir)) == 0
    first = (out / "results.json").read_text()
    (entry,) = [p for p in (out / "cache").glob("*.json")]
    entry.write_bytes(entry.read_bytes()[:40])
    capsys.readouterr()
    assert cli.main(eval_argv(model, out, mgsm_hf_dir)) == 0
    text = capsys.readouterr().out
    assert f"note: ignoring unreadable cache entry {entry}" in text and "evaluating sw" in text
    assert (out / "results.json").read_text() == first


def test_an_output_folder_inside_the_include_path_stays_cached(model, tmp_path, capsys):
    """`include_path: .` with OUT_DIR inside it re-evaluated everything on every rerun."""
    folder = write_task_folder(tmp_path / "tasks")
    argv = ["eval", model, "--tasks", "lab_sums", "--include-path", str(folder)]
    argv += ["--limit", "1", "--max-gen-toks", "4", "--output", str(folder / "out")]
    assert cli.main(argv) == 0
    assert "evaluating lab_sums" in capsys.readouterr().out
    assert cli.main(argv) == 0
    assert "all cached" in capsys.readouterr().out


def _function_tasks(folder: Path, marker: Path) -> Path:
    """A task whose prompt is a `!function` of the folder's utils.py, which leaves `marker`."""
    folder = write_task_folder(folder)
    (folder / "utils.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n\n"
        "def doc_to_text(doc):\n    return 'Question: ' + doc['question'] + '\\nAnswer:'\n"
    )
    raw = yaml.safe_load((folder / "lab_sums.yaml").read_text())
    raw = {**raw, "task": "lab_fn", "doc_to_text": "FUNCTION"}
    text = yaml.safe_dump(raw).replace("FUNCTION", "!function utils.doc_to_text")
    (folder / "lab_fn.yaml").write_text(text)
    return folder


def test_function_tags_are_noted_and_never_run_by_a_dry_run(aliases, tmp_path, capsys):
    """A task YAML's `!function` ran the include folder's Python in `suite --dry-run`, and
    nothing said that an include path runs code."""
    marker = tmp_path / "ran.txt"
    folder = _function_tasks(tmp_path / "tasks", marker)
    suite = {
        "models": aliases,
        "evaluate_inputs": ["math"],
        "evaluation": {"tasks": ["lab_fn"], "include_path": str(folder)},
    }
    path = tmp_path / "suite.yml"
    path.write_text(yaml.safe_dump(suite))
    assert cli.main(["suite", str(path), str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("name Python functions (!function)") == 1, out
    assert "a run (not this dry run) executes that folder's Python code" in out
    assert not marker.exists()

    columns.resolve(EvalSettings(tasks="lab_fn", include_path=folder))  # what a run does
    assert marker.read_text() == "ran"
    assert capsys.readouterr().out.count("lab_fn.yaml name Python functions") == 1


def test_a_task_yaml_that_does_not_parse_is_named(model, tmp_path, capsys):
    """A task YAML that does not parse was reported as an unknown task name."""
    folder = write_task_folder(tmp_path / "tasks")
    text = yaml.safe_dump(_task("lab_bad", folder / "sums.jsonl", []))
    (folder / "lab_bad.yaml").write_text(text + "doc_to_choice: [unclosed\n")
    argv = ["eval", model, "--tasks", "lab_bad", "--include-path", str(folder)]
    assert cli.main([*argv, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "unknown lm-eval task or group 'lab_bad'" in err
    assert f"include_path: {folder / 'lab_bad.yaml'} does not parse: " in err
    assert len(err.strip().splitlines()) == 2 and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def swap_config(make_model) -> dict:
    host, donor = make_model("llama", 4, seed=1), make_model("llama", 4, seed=2)
    return layer_swap(host, {donor: {"bottom": 1}})


@pytest.fixture(scope="module")
def long_named(swap_config, tmp_path_factory) -> Path:
    """A merge into a folder whose name has 255 bytes, the most a file name can hold."""
    parent = tmp_path_factory.mktemp("long")
    return merge.run(swap_config, parent / ("m" * 255))


def test_output_names_of_up_to_255_bytes(long_named):
    """Output names of 245-255 characters failed: the hidden partial's name was too long."""
    assert len(long_named.name) == 255 and list(long_named.glob("*.safetensors"))
    assert [p.name for p in long_named.parent.iterdir()] == [long_named.name]


def test_an_existing_output_folder_is_written_inside_itself(swap_config, long_named, tmp_path):
    """A mount point as output was written beside itself: an existing empty folder now gets
    the partial inside it, and a killed merge's partial there is no obstacle to a rerun."""
    out = tmp_path / "mnt"
    out.mkdir()
    (out / f"{merge.INSIDE}{2**22 + 12345}").mkdir()  # a killed merge's (no process has its pid)
    assert merge.partial_path(out).parent == out
    assert merge.run(swap_config, out) == out
    assert os.listdir(tmp_path) == ["mnt"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in long_named.iterdir())


@pytest.fixture
def online(monkeypatch) -> None:
    """The Hub reachable for huggingface_hub (the tests run with HF_HUB_OFFLINE=1)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test")


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A server that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


@pytest.fixture
def html_endpoint() -> Iterator[str]:
    """A server that answers every request with an HTML page (a proxy, a login page)."""

    class Page(http.server.BaseHTTPRequestHandler):
        def _page(self) -> None:
            body = b"<html><body>Please log in</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _page

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_push_to_an_endpoint_that_never_answers_times_out(long_named, online, silent_endpoint):
    """`push` hung forever on an endpoint that never answers."""
    with pytest.raises(RunError, match=r"could not upload to .*ReadTimeout"):
        hub.push(long_named, "me/swap", endpoint=silent_endpoint, timeout=1)


def test_push_to_an_endpoint_that_answers_html(long_named, online, html_endpoint):
    """`push` gave a JSONDecodeError traceback on an HTML reply."""
    with pytest.raises(RunError, match="its answer is not the Hub's JSON"):
        hub.push(long_named, "me/swap", endpoint=html_endpoint)


def test_a_suite_cache_linked_out_of_out_dir_is_refused(aliases, mgsm_hf_dir, tmp_path, capsys):
    """Nothing the suite writes follows a symlink out of OUT_DIR: its evaluation cache."""
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "out"
    elsewhere.mkdir()
    out.mkdir()
    (out / "cache").symlink_to(elsewhere)
    suite = {
        "models": aliases,
        "evaluate_inputs": ["math"],
        "evaluation": {"languages": ["sw"], "limit": 1, "data_dir": str(mgsm_hf_dir)},
    }
    path = tmp_path / "suite.yml"
    path.write_text(yaml.safe_dump(suite))
    assert cli.main(["suite", str(path), str(out)]) == 1
    err = capsys.readouterr().err.strip()
    refused = f"{out / 'cache'} resolves outside {out}; refusing to touch it"
    assert err == f"mergekit-layerswap suite: error: {refused}"
    assert not list(elsewhere.iterdir())
