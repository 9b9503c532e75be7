"""The built wheel, alone: it installs the `.pth` hook and the recipes, and the stock
`mergekit-yaml` of a fresh virtual environment runs `merge_method: layer_swap` with it."""

from __future__ import annotations

import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from helpers import layer_swap, tensors

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`python -m build --wheel` of this checkout (hatchling from the dev extra, offline)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("mergekit_layerswap-*.whl")
    return built


def test_wheel_carries_the_hook_and_the_recipes(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "mergekit_layerswap.pth" in names
    recipes = {Path(n).name for n in names if n.startswith("mergekit_layerswap/recipes/")}
    assert recipes == {p.name for p in (ROOT / "recipes").glob("*.yml")}
    assert not any(n.startswith("tests/") for n in names)


@pytest.mark.slow
def test_a_venv_with_only_the_wheel_runs_layer_swap(wheel, make_model, tmp_path):
    """A new venv gets the wheel (no editable checkout on its path); its dependencies come
    from this environment's site-packages, added as a plain path (so the checkout's own
    editable `.pth` files are not processed there). The stock `mergekit-yaml` then merges."""
    env = tmp_path / "venv"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    target = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with zipfile.ZipFile(wheel) as archive:  # what pip does for a pure-Python wheel
        archive.extractall(target)
    (Path(target) / "zz_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    host, donor = make_model("llama", 4, seed=1), make_model("llama", 4, seed=2)
    config = tmp_path / "swap.yml"
    config.write_text(yaml.safe_dump(layer_swap(host, {donor: {"bottom": 1, "top": 1}})))
    out = tmp_path / "out"
    code = (
        "import sys, mergekit_layerswap; from mergekit.scripts.run_yaml import main; "
        "assert mergekit_layerswap.__file__.startswith(sys.argv[1]), mergekit_layerswap.__file__; "
        "sys.argv = ['mergekit-yaml', *sys.argv[2:]]; main()"
    )
    argv = [python, "-c", code, target, str(config), str(out), "--no-copy-tokenizer"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    merged, ours, theirs = tensors(out), tensors(host), tensors(donor)
    for name, tensor in merged.items():  # layers 0 and 3 are the donor's, 1 and 2 the host's
        source = theirs if any(f"layers.{i}." in name for i in (0, 3)) else ours
        if "layers." in name:
            assert torch.equal(tensor, source[name].to(tensor.dtype)), name
    assert set(merged) == set(ours)
