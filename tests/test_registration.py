"""Registration with the stock mergekit through the .pth hook, and start-up cost."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_startup_imports_neither_torch_nor_mergekit():
    out = run_python(
        "import sys; print(*(m in sys.modules for m in "
        "('torch', 'mergekit', 'mergekit_layerswap._hook')))"
    )
    assert out == "False False True"


PATCHED = (
    "mergekit.config.MergeConfiguration.model_validate.__func__",
    "mergekit.plan.MergePlanner.plan_to_disk",
    "mergekit.merge.run_merge",
    "mergekit.merge.generate_card",
    "mergekit.merge._model_out_config",
)


@pytest.mark.parametrize(
    "first",
    [
        "mergekit.common",
        "mergekit.config",
        "mergekit.merge_methods",
        "mergekit.plan",
        "mergekit.scripts.run_yaml",
        "mergekit_layerswap.method",
        "mergekit_layerswap.stream_swap",
    ],
)
def test_whichever_module_is_imported_first_layer_swap_is_registered_and_patched(first):
    """The hook installs once the first import of mergekit is complete: whichever module
    a program (or our own module) imports first, no circular import, no warning."""
    flags = ", ".join(f"{patched}.layerswap" for patched in PATCHED)
    code = (
        f"import {first}\n"
        "import mergekit.config, mergekit.merge, mergekit.plan\n"
        "from mergekit.merge_methods import get\n"
        f"print(get('layer_swap').spec.contract.base.value, {flags})"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and not result.stderr, result.stderr[-2000:]
    assert result.stdout.split() == ["required"] + ["True"] * len(PATCHED)


def test_mergekit_config_keys_are_pinned():
    """validate.MERGEKIT_KEYS mirrors mergekit's MergeConfiguration (fails if mergekit changes)."""
    from mergekit.config import MergeConfiguration

    from mergekit_layerswap.validate import MERGEKIT_KEYS

    assert set(MergeConfiguration.model_fields) == MERGEKIT_KEYS


def test_planner_hook_point_is_pinned():
    """`plugin._streamed_plan` sets the planner's architecture, then calls plan_to_disk, which
    must plan (`_plan`: normalize_config, then every module) before reading any task."""
    import inspect

    from mergekit.plan import MergePlanner

    source = inspect.getsource(MergePlanner.plan_to_disk)
    assert source.index("self._plan()") < source.index("self._tensors")
    plan = inspect.getsource(MergePlanner._plan)
    assert plan.index("self.normalize_config()") < plan.index("self.plan_module(")
    assert MergePlanner.plan_to_disk.layerswap


def test_help_and_validate_do_not_import_torch(make_model, tmp_path):
    host, donor = make_model("llama", 8, seed=1), make_model("llama", 8, seed=2)
    config = tmp_path / "swap.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "merge_method": "layer_swap",
                "base_model": str(host),
                "models": [{"model": str(host)}, {"model": str(donor), "parameters": {"top": 2}}],
            }
        )
    )
    out = run_python(
        "import sys, contextlib, io\n"
        "from mergekit_layerswap import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    with contextlib.suppress(SystemExit):\n"
        "        cli.main(['--help'])\n"
        f"    code = cli.main(['validate', {str(config)!r}])\n"
        "print(code, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    assert out == "0 False False"


def test_card_hook_point_is_pinned():
    """Our card replaces mergekit's through mergekit.merge.generate_card, which run_merge
    must call by its module-level name (fails loudly if mergekit changes)."""
    import inspect

    import mergekit.merge

    assert "generate_card(" in inspect.getsource(mergekit.merge.run_merge)
    assert mergekit.merge.generate_card.layerswap


def test_run_merge_from_python_without_config_source_writes_our_card(make_model, tmp_path):
    """mergekit's Python API: run_merge with no config_source took the card's config from
    the compiled slices (no `models:`), and the card failed with a KeyError."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    host, donor = make_model("llama", 8, seed=1), make_model("llama", 8, seed=2)
    raw = {
        "merge_method": "layer_swap",
        "base_model": str(host),
        "models": [{"model": str(host)}, {"model": str(donor), "parameters": {"bottom": 2}}],
    }
    out = tmp_path / "out"
    run_merge(MergeConfiguration.model_validate(raw), str(out), MergeOptions(quiet=True))
    assert "layer_swap" in (out / "README.md").read_text()
    saved = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert saved["models"][1]["parameters"] == {"bottom": 2} and "slices" not in saved


def test_stock_mergekit_yaml_merges_a_spaced_relative_path(make_model, tmp_path):
    """Path spellings class: a path with a space (mergekit's ModelReference serializer made
    the planner hook fail with "Circular reference detected") that is also relative with
    one slash; validate and the stock mergekit-yaml agree on it."""
    for name, seed in (("A", 1), ("B", 2)):
        shutil.copytree(make_model("llama", 8, seed=seed), tmp_path / "my models" / name)
    raw = {
        "merge_method": "layer_swap",
        "base_model": "my models/A",
        "models": [{"model": "my models/A"}, {"model": "my models/B", "parameters": {"top": 2}}],
        "dtype": "bfloat16",
    }
    (tmp_path / "swap.yml").write_text(yaml.safe_dump(raw))
    for command in (["mergekit-layerswap", "validate"], ["mergekit-yaml"]):
        executable = str(Path(sys.executable).with_name(command[0]))
        arguments = [executable, *command[1:], "swap.yml"] + (["out"] if len(command) == 1 else [])
        result = subprocess.run(
            arguments, cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_in_memory_num_layers_must_match_the_state_dicts():
    """In-memory API class: a wrong num_layers would apply the swap half-way."""
    import torch
    from mergekit.merge_methods import merge_state_dicts

    from mergekit_layerswap import plugin

    plugin.install()  # registers layer_swap

    def state(value: float) -> dict:
        return {f"model.layers.{i}.mlp.weight": torch.full((2,), value) for i in range(8)}

    def merge(num_layers: int) -> dict:
        parameters = {"top": {"sw": 2}, "num_layers": num_layers}
        models = {"math": state(0.0), "sw": state(1.0)}
        return merge_state_dicts(models, "layer_swap", base="math", parameters=parameters)

    with pytest.raises(ValueError, match=r"num_layers=32, but the state dicts hold layers 0-7"):
        merge(32)
    merged = merge(8)
    assert [float(merged[f"model.layers.{i}.mlp.weight"][0]) for i in range(8)] == [0] * 6 + [1] * 2


def test_mergekit_own_method_regressions_pass_with_the_plugin(tmp_path_factory, request):
    """mergekit's own test suite class: installing the plugin must not turn mergekit 0.1.5's
    tests red; its sdist's test_merge_method_regressions.py runs every registered method
    (layer_swap included) through merge_state_dicts with generic parameters."""
    cache = Path(request.config.cache.mkdir("mergekit-sdist"))
    archives = list(cache.glob("mergekit-0.1.5.tar.gz"))
    if not archives:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        download = subprocess.run(
            [*pip, "mergekit==0.1.5", "-d", str(cache)], capture_output=True, text=True, timeout=300
        )
        archives = list(cache.glob("mergekit-0.1.5.tar.gz"))
        if download.returncode != 0 or not archives:
            pytest.skip(f"PyPI unreachable, mergekit's sdist not fetched: {download.stderr[-300:]}")
    member = "mergekit-0.1.5/tests/test_merge_method_regressions.py"
    root = tmp_path_factory.mktemp("sdist")
    with tarfile.open(archives[0]) as archive:
        archive.extract(member, root, filter="data")
    pytest_command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [*pytest_command, "-k", "layer_swap", Path(member).name],
        cwd=root / Path(member).parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 passed" in result.stdout, result.stdout[-3000:]


def test_config_parse_hook_point_is_pinned():
    """The shape check wraps MergeConfiguration.model_validate, which mergekit-yaml's main
    must call on the loaded YAML (fails loudly if mergekit changes)."""
    import inspect

    from mergekit.config import MergeConfiguration
    from mergekit.scripts import run_yaml

    assert "MergeConfiguration.model_validate(" in inspect.getsource(run_yaml)
    assert MergeConfiguration.model_validate.__func__.layerswap


def test_stock_mergekit_yaml_reports_bad_yaml_shapes_in_one_line(make_model, tmp_path):
    """Tracebacks-for-bad-input class: `models: [./A, ./B]` used to be pydantic's traceback."""
    host, donor = make_model("llama", 8, seed=1), make_model("llama", 8, seed=2)
    path = tmp_path / "swap.yml"
    path.write_text(f"merge_method: layer_swap\nbase_model: {host}\nmodels: [{host}, {donor}]\n")
    mergekit_yaml = Path(sys.executable).with_name("mergekit-yaml")
    result = subprocess.run(
        [str(mergekit_yaml), str(path), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.splitlines() == [
        f"layer_swap config error: models[{i}]: expected a mapping with a model key; "
        f"write `- model: {model}`"
        for i, model in enumerate((host, donor))
    ]
    assert not (tmp_path / "out").exists()


def test_a_moved_or_changed_target_is_left_alone_with_one_warning():
    """A mergekit in which a wrapped function is missing or takes other parameters is not
    patched there: one warning naming the mergekit version we support, nothing raised."""
    import types
    from importlib.metadata import requires, version

    from mergekit_layerswap import plugin

    assert f"mergekit=={plugin.MERGEKIT_VERSION}" in requires("mergekit-layerswap")
    assert version("mergekit") == plugin.MERGEKIT_VERSION
    moved = types.SimpleNamespace(__name__="mergekit.merge")
    with pytest.warns(RuntimeWarning, match=f"mergekit=={plugin.MERGEKIT_VERSION}") as caught:
        plugin._our_card(moved)
    assert len(caught) == 1 and "generate_card is missing" in str(caught[0].message)
    changed = types.SimpleNamespace(__name__="mergekit.merge", generate_card=lambda cfg: "")
    with pytest.warns(RuntimeWarning, match="takes"):
        plugin._our_card(changed)
    assert changed.generate_card(None) == ""
    calls = []
    owner = types.SimpleNamespace(__name__="owner", f=lambda x: "original")
    plugin._wrap(owner, "f", ("x",), lambda original: calls.append(original) or (lambda x: "w"))
    plugin._wrap(owner, "f", ("x",), lambda original: calls.append(original) or (lambda x: "2"))
    assert owner.f(1) == "w" and len(calls) == 1


def test_the_kernel_parameters_are_the_swap_parameters():
    """The kernel's signature is written out; it must stay the swap's fields: per donor
    (`Claim`) as non-base parameters, the merge's (`SwapConfig`) as shared ones, same
    defaults, plus num_layers for in-memory merges."""
    from mergekit.merge_methods.base import ParameterScope

    from mergekit_layerswap import method, swap

    declared = {
        name: (ParameterScope.NON_BASE, info.default)
        for name, info in swap.donor_parameters().items()
    } | {
        name: (ParameterScope.SHARED, info.default)
        for name, info in swap.shared_parameters().items()
    }
    declared["num_layers"] = (ParameterScope.SHARED, None)
    found = {p.name: (p.scope, p.default) for p in method.layer_swap.spec.parameters}
    assert found == declared
