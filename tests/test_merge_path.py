"""The merge path as mergekit's guest: one check per merge, each input read as little as
possible, `merge` without the .pth hook, and a mergekit whose functions moved still merging
layer_swap exactly (with a warning, never an import error)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

import mergekit_layerswap
from mergekit_layerswap import merge

REPO = Path(mergekit_layerswap.__file__).resolve().parents[1]
SITE = sysconfig.get_paths()["purelib"]
#: The mergekit functions plugin.install() wraps that mergekit itself defines.
WRAPPED = ("plan_to_disk", "generate_card", "_model_out_config", "run_merge")

#: Runs one merge (argv: config, output, "merge" or "mergekit-yaml") and prints what it
#: counted: full checks, safetensors header reads and Python-level opens per input file.
COUNTER = """
import collections, json, os, sys
from mergekit_layerswap import checkpoint, stream, validate
config_path, out, how = sys.argv[1:]
config = __import__("yaml").safe_load(open(config_path))
inputs = {os.path.realpath(m["model"]) for m in config["models"]}
counts = collections.Counter()
def audit(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(args[0]))
        if os.path.dirname(path) in inputs:
            counts["open " + path] += 1
sys.addaudithook(audit)
review, read_header = validate.review, checkpoint.read_header
def counted_review(raw):
    counts["checks"] += 1
    return review(raw)
def counted_header(path):
    if os.path.dirname(os.path.realpath(path)) in inputs:
        counts["header " + os.path.realpath(path)] += 1
    return read_header(path)
validate.review, checkpoint.read_header, stream.read_header = (
    counted_review, counted_header, counted_header)
if how == "merge":
    from mergekit_layerswap import merge
    merge.run(config, out)
else:
    from mergekit.scripts.run_yaml import main
    sys.argv = ["mergekit-yaml", config_path, out]
    try:
        main()
    except SystemExit as done:
        assert not done.code, done.code
print(json.dumps(counts))
"""


@pytest.fixture(scope="module")
def config(make_model, tmp_path_factory) -> Path:
    host, donor = make_model("llama", 6, seed=1), make_model("llama", 6, seed=2)
    raw = {
        "merge_method": "layer_swap",
        "base_model": str(host),
        "models": [
            {"model": str(host)},
            {"model": str(donor), "parameters": {"bottom": 1, "top": 1}},
        ],
        "parameters": {"transition": 1},
        "dtype": "float32",
    }
    path = tmp_path_factory.mktemp("path") / "swap.yml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory) -> dict:
    """The tensors of this merge with the plugin installed as shipped."""
    out = merge.run(yaml.safe_load(config.read_text()), tmp_path_factory.mktemp("ref") / "m")
    return load_file(out / "model.safetensors")


def run(code: str, *args: str, flags: tuple[str, ...] = (), env: dict | None = None):
    return subprocess.run(
        [sys.executable, *flags, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


@pytest.mark.parametrize("how", ["merge", "mergekit-yaml"])
def test_one_check_one_header_read_and_two_opens_per_input_file(config, tmp_path, how):
    result = run(COUNTER, str(config), str(tmp_path / "out"), how)
    assert result.returncode == 0, result.stderr[-2000:]
    counts = json.loads(result.stdout.splitlines()[-1])
    assert counts["checks"] == 1
    models = [m["model"] for m in yaml.safe_load(config.read_text())["models"]]
    for model in models:
        weights = str(Path(model, "model.safetensors").resolve())
        assert counts[f"header {weights}"] == 1, counts
        assert counts[f"open {weights}"] <= 2, counts


def test_merge_works_where_pth_files_are_not_processed(config, reference, tmp_path):
    """`python -S`: no site processing, so no .pth hook; merge installs the plugin itself."""
    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(REPO)!r}, {SITE!r}]\n"
        "from mergekit_layerswap import cli\n"
        "code = cli.main(['merge', sys.argv[1], sys.argv[2]])\n"
        "assert 'mergekit_layerswap._hook' not in sys.modules\n"
        "raise SystemExit(code)\n"
    )
    result = run(code, str(config), str(tmp_path / "out"), flags=("-S",))
    assert result.returncode == 0, result.stderr[-2000:]
    merged = load_file(tmp_path / "out" / "model.safetensors")
    assert merged.keys() == reference.keys()
    assert all(merged[name].equal(reference[name]) for name in reference)


@pytest.fixture(scope="module")
def moved_mergekit(tmp_path_factory) -> Path:
    """A copy of mergekit in which every function the plugin wraps is renamed."""
    import mergekit

    root = tmp_path_factory.mktemp("moved")
    copy = root / "mergekit"
    shutil.copytree(Path(mergekit.__file__).parent, copy)
    pattern = re.compile(r"\b(" + "|".join(WRAPPED) + r")\b")
    for path in copy.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        path.write_text(pattern.sub(r"\1_moved", text), encoding="utf-8")
    return root


def test_a_mergekit_with_moved_functions_imports_and_merges_layer_swap_exactly(
    config, reference, moved_mergekit, tmp_path
):
    env = {"PYTHONPATH": str(moved_mergekit), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    imported = run("import mergekit.merge, mergekit.scripts.run_yaml", env=env)
    assert imported.returncode == 0, imported.stderr[-2000:]
    warned = [line for line in imported.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(warned) == len(WRAPPED), imported.stderr
    assert all("install mergekit==0.1.5" in line for line in warned)
    code = (
        "import sys\n"
        "from mergekit.scripts.run_yaml import main\n"
        "sys.argv = ['mergekit-yaml', *sys.argv[1:]]\n"
        "main()\n"
    )
    merged = run(code, str(config), str(tmp_path / "out"), env=env)
    assert merged.returncode == 0, merged.stderr[-2000:]
    tensors = load_file(tmp_path / "out" / "model.safetensors")
    assert tensors.keys() == reference.keys()
    assert all(tensors[name].equal(reference[name]) for name in reference)
