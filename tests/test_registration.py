"""Registration with the stock mergekit through the .pth hook, and start-up cost."""

from __future__ import annotations

import subprocess
import sys

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


def test_importing_mergekit_registers_layer_swap_and_the_config_check():
    out = run_python(
        "import mergekit.merge_methods as mm, mergekit.plan as plan\n"
        "m = mm.get('layer_swap')\n"
        "print(m.spec.name, m.spec.contract.base.value, "
        "plan.MergePlanner.normalize_config.layerswap)"
    )
    assert out == "layer_swap required True"


def test_importing_our_method_module_first_installs_every_hook():
    """`import mergekit_layerswap.method` imports mergekit itself; the hook's callbacks that
    fire meanwhile run once the module is complete (no circular import)."""
    out = run_python(
        "import mergekit_layerswap.method as ours\n"
        "import mergekit.merge, mergekit.merge_methods as mm, mergekit.plan as plan\n"
        "print(mm.get('layer_swap') is ours.layer_swap, "
        "plan.MergePlanner.normalize_config.layerswap, mergekit.merge.generate_card.layerswap)"
    )
    assert out == "True True True"


def test_mergekit_config_keys_are_pinned():
    """validate.MERGEKIT_KEYS mirrors mergekit's MergeConfiguration (fails if mergekit changes)."""
    from mergekit.config import MergeConfiguration

    from mergekit_layerswap.validate import MERGEKIT_KEYS

    assert set(MergeConfiguration.model_fields) == MERGEKIT_KEYS


def test_planner_hook_point_is_pinned():
    """The config check wraps MergePlanner.normalize_config, which _plan must call first."""
    import inspect

    from mergekit.plan import MergePlanner

    source = inspect.getsource(MergePlanner._plan)
    assert source.index("self.normalize_config()") < source.index("self.plan_module(")
    assert MergePlanner.normalize_config.layerswap


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
