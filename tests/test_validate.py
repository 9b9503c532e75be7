"""Bad layer_swap configs: one line naming the field and the fix, and nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mergekit_layerswap import cli, validate


@pytest.fixture(scope="module")
def models(make_model) -> dict[str, Path]:
    return {
        "math": make_model("llama", 8, seed=1),
        "sw": make_model("llama", 8, seed=2),
        "te": make_model("llama", 8, seed=3),
        "short": make_model("llama", 6, seed=4),
        "qwen": make_model("qwen2", 8, seed=5),
        "wide": make_model("llama", 8, seed=8, hidden_size=96),
        "tied_a": make_model("llama", 8, seed=6, tie=True),
        "tied_b": make_model("llama", 8, seed=7, tie=True),
    }


def config(models, donors=None, transition=None, **top) -> dict:
    """A layer_swap config with math as host; donors maps a model name to its parameters."""
    donors = {"sw": {"bottom": 2, "top": 1}} if donors is None else donors
    raw = {
        "merge_method": "layer_swap",
        "base_model": str(models["math"]),
        "models": [{"model": str(models["math"])}]
        + [{"model": str(models[name]), "parameters": p} for name, p in donors.items()],
        "dtype": "bfloat16",
    }
    if transition is not None:
        raw["parameters"] = {"transition": transition}
    raw.update(top)
    return raw


def run_cli(tmp_path: Path, raw: dict, *args: str, capsys=None) -> tuple[int, str]:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(raw))
    code = cli.main([args[0], str(path), *args[1:]])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def test_valid_config_prints_the_compact_layer_map(models, tmp_path, capsys):
    """validate output class: runs of layers with the same sources, one line each."""
    code, out = run_cli(tmp_path, config(models, transition=1), "validate", capsys=capsys)
    assert code == 0, out
    assert out.splitlines()[1:] == [
        f"H = {models['math']}",
        f"D = {models['sw']}",
        "embeddings  D",
        "layer  0-1  D D",
        "layer    2  ½D+½H",
        "layer  3-5  H H H",
        "layer    6  ½D+½H",
        "layer    7  D",
        "norm + head D",
    ]


def test_validate_prints_the_documented_layer_map(make_model, tmp_path, capsys):
    """validate output class: docs/layer_swap.md's block for the paper's default, verbatim."""
    page = (Path(__file__).parents[1] / "docs" / "layer_swap.md").read_text(encoding="utf-8")
    block = page.split("`mergekit-layerswap validate` prints it")[1].split("```")[1]
    host, donor = make_model("llama", 32, seed=1), make_model("llama", 32, seed=2)
    models = {"math": host, "sw": donor}
    raw = config(models, {"sw": {"bottom": 5, "top": 2}}, transition=1)
    capsys.readouterr()  # what building the models printed
    code, out = run_cli(tmp_path, raw, "validate", capsys=capsys)
    assert code == 0, out
    assert out.splitlines()[3:] == block.strip().splitlines()


CASES = [
    (
        lambda m: config(m, {"sw": {"botom": 2}}),
        "models[1].parameters.botom",
        "did you mean 'bottom'",
    ),
    (
        lambda m: config(m, {"sw": {"bottom": 2}}, parameters={"transitions": 1}),
        "parameters.transitions",
        "did you mean 'transition'",
    ),
    (
        lambda m: {k: v for k, v in config(m).items() if k != "base_model"},
        "base_model",
        "name the host model",
    ),
    (lambda m: config(m, {"sw": {}}), "models[1].parameters", "claims no layers"),
    (
        lambda m: config(m, {"sw": {"bottom": 9}}),
        "models[1].parameters.bottom",
        "exceeds the model's 8 layers",
    ),
    (
        lambda m: config(m, {"sw": {"layers": "2-x"}}),
        "models[1].parameters.layers",
        "not a layer range",
    ),
    (
        lambda m: config(m, {"sw": {"layers": "4-12"}}),
        "models[1].parameters.layers",
        "out of bounds",
    ),
    (lambda m: config(m, {"sw": {"layers": 7}}), "models[1].parameters.layers", "quoted string"),
    (
        lambda m: config(m, {"sw": {"bottom": 3}, "te": {"layers": "2-4"}}),
        "models[2].parameters.layers",
        "overlaps donor",
    ),
    (
        lambda m: config(m, {"sw": {"bottom": 3, "layers": "2-3"}}),
        "models[1].parameters.layers",
        "overlaps bottom=3",
    ),
    (
        lambda m: config(m, {"sw": {"bottom": 3, "top": 3}}, transition=2),
        "parameters.transition",
        "widen the gap",
    ),
    (lambda m: config(m, {"sw": {"bottom": 2.5}}), "models[1].parameters.bottom", "whole number"),
    (lambda m: config(m, {"sw": {"top": -1}}), "models[1].parameters.top", "whole number"),
    (
        lambda m: config(m, {"sw": {"bottom": [1, 3]}}),
        "models[1].parameters.bottom",
        "a gradient or filter",
    ),
    (
        lambda m: config(m, {"sw": {"bottom": 2, "transition": 1}}),
        "models[1].parameters.transition",
        "move it to the top-level parameters",
    ),
    (
        lambda m: config(m, {"short": {"bottom": 2}}),
        "models[1].model",
        "layer count 6 differs from the host's 8",
    ),
    (
        lambda m: config(m, {"qwen": {"bottom": 2}}),
        "models[1].model",
        "architecture Qwen2ForCausalLM differs",
    ),
    (
        lambda m: config(m, {"wide": {"bottom": 2}}),
        "models[1].model",
        "hidden_size 96 differs from the host's 64",
    ),
    (
        lambda m: config(m, {"tied_a": {"bottom": 2}}),
        "models[1].model",
        "tie_word_embeddings True differs",
    ),
    (
        lambda m: {**config(m), "models": [*config(m)["models"], {"model": "./no/such/model"}]},
        "models[2].model",
        "no such model directory",
    ),
    (lambda m: config(m, slices=[{"sources": []}]), "slices/modules", "takes a `models:` list"),
    (lambda m: config(m, paramters={"transition": 1}), "paramters", "did you mean 'parameters'"),
]


@pytest.mark.parametrize(("make", "field", "words"), CASES, ids=[c[1] for c in CASES])
def test_bad_config_is_reported_and_nothing_written(models, tmp_path, capsys, make, field, words):
    raw = make(models)
    found = validate.check(raw)
    assert any(p.startswith(f"{field}: ") and words in p for p in found), found
    assert all("\n" not in p for p in found)
    out = tmp_path / "out"
    code, text = run_cli(tmp_path, raw, "merge", str(out), capsys=capsys)
    assert code == 2 and words in text
    assert not out.exists()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_tied_models_need_one_source_for_embeddings_and_head(models):
    base = {"math": models["tied_a"], "sw": models["tied_b"]}
    bottom_only = config(base, {"sw": {"bottom": 2}})
    assert any(p.startswith("parameters.embed_source: ") for p in validate.check(bottom_only))
    both_ends = config(base, {"sw": {"bottom": 2, "top": 1}})
    assert validate.check(both_ends) == []
    pinned = config(base, {"sw": {"bottom": 2}})
    pinned["parameters"] = {"embed_source": "base", "head_source": "base"}
    assert validate.check(pinned) == []


def test_every_problem_is_reported_at_once(models):
    raw = config(models, {"sw": {"botom": 2, "top": -1}}, parameters={"transition": "x"})
    found = validate.check(raw)
    assert len(found) == 3, found


def test_output_folder_holding_a_model_is_refused(models, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    code, text = run_cli(tmp_path, config(models), "merge", str(out), capsys=capsys)
    assert code == 2 and "is not empty (holds config.json)" in text
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_stock_mergekit_yaml_rejects_bad_config_before_reading_tensors(models, tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(config(models, {"sw": {"bottom": 2, "layer": "5-6"}})))
    out = tmp_path / "out"
    mergekit_yaml = Path(sys.executable).with_name("mergekit-yaml")
    result = subprocess.run(
        [str(mergekit_yaml), str(path), str(out)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "layer_swap config error" in line]
    assert errors == [
        "layer_swap config error: models[1].parameters.layer: unknown layer_swap parameter; "
        "did you mean 'layers'? known: bottom, top, layers"
    ]
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_recipe_validates_with_the_paper_layer_map(make_model, tmp_path):
    raw = validate.load(Path(__file__).parents[1] / "recipes" / "layerswap.yml")
    math, swahili = make_model("llama", 32, seed=1), make_model("llama", 32, seed=2)
    hub_ids = {raw["base_model"]: str(math), raw["models"][1]["model"]: str(swahili)}
    raw["base_model"] = hub_ids[raw["base_model"]]
    for entry in raw["models"]:
        entry["model"] = hub_ids[entry["model"]]
    plan = validate.checked(raw)
    from mergekit_layerswap.swap_rule import plan_layers

    layers = plan_layers(plan.swap, 32)
    donor_layers = [i for i, w in enumerate(layers) if w == {str(swahili): 1.0}]
    blends = [i for i, w in enumerate(layers) if len(w) == 2]
    assert donor_layers == [0, 1, 2, 3, 4, 30, 31] and blends == [5, 29]


TEXT_CASES = [
    ("list of paths", "models: [{host}, {sw}]", "models[0]: expected a mapping with a model key"),
    ("non-string key", "models: {models}\n1: x", "1: config keys are names"),
    (
        "model mapping without a path",
        "models:\n  - model: {host}\n  - model: {{revision: main}}\n    parameters: {{top: 1}}",
        "models[1].model: missing or not a path",
    ),
    ("duplicated key", "models: {models}\nbase_model: {host}", "key 'base_model' is given twice"),
    ("dtype int8", "models: {models}\ndtype: int8", "dtype: got 'int8'; use one of bfloat16"),
    ("dtype nonsense", "models: {models}\nout_dtype: fp17", "out_dtype: got 'fp17'; use one of"),
]


@pytest.mark.parametrize(
    ("body", "words"), [c[1:] for c in TEXT_CASES], ids=[c[0] for c in TEXT_CASES]
)
def test_bad_yaml_shapes_and_dtypes_are_one_line_not_a_traceback(
    models, tmp_path, capsys, body, words
):
    """Malformed YAML shapes and unsupported dtypes: one line naming the field, exit 2."""
    entries = [
        {"model": str(models["math"])},
        {"model": str(models["sw"]), "parameters": {"top": 1}},
    ]
    text = f"merge_method: layer_swap\nbase_model: {models['math']}\n" + body.format(
        host=models["math"], sw=models["sw"], models=json.dumps(entries)
    )
    path = tmp_path / "config.yml"
    path.write_text(text)
    for command in (["validate", str(path)], ["merge", str(path), str(tmp_path / "out")]):
        code = cli.main(command)
        err = capsys.readouterr().err
        assert code == 2 and words in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_non_utf8_config_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "config.yml"
    path.write_bytes("merge_method: layer_swap\nbase_model: ./mod\u00e8le\n".encode("latin-1"))
    assert cli.main(["validate", str(path)]) == 2
    assert "not UTF-8 text (byte" in capsys.readouterr().err


def test_one_model_spelled_two_ways_is_refused(models, tmp_path, monkeypatch):
    """Path spellings class: relative vs absolute, and a symlink, resolve to the host."""
    monkeypatch.chdir(models["math"].parent)
    link = tmp_path / "link"
    link.symlink_to(models["math"])
    for spelling in (f"./{models['math'].name}", str(link)):
        raw = config(models)
        raw["models"][1]["model"] = spelling
        found = validate.check(raw)
        assert found == [
            f"models[1].model: {spelling} is the same model as base_model "
            f"({models['math'].resolve()}); list each model once, the host spelled as in "
            "base_model"
        ]


def test_tilde_path_is_refused_because_mergekit_does_not_expand_it(models, monkeypatch):
    """Path spellings class: what validation reads must be what mergekit reads."""
    monkeypatch.setenv("HOME", str(models["sw"].parent))
    raw = config(models)
    raw["models"][1]["model"] = f"~/{models['sw'].name}"
    assert validate.check(raw) == [
        f"models[1].model: mergekit does not expand ~ in ~/{models['sw'].name}; "
        f"write {models['sw']}"
    ]
