"""Baselines and config fields checked up front, as mergekit would check them (issue 22,
item 5), and no merge whose weights are not finite published or ranked.

Each test names the defect class it covers: baseline settings that failed mid-suite (after
earlier merges ran) or merged into NaN; fields mergekit's own schema refuses after
`validate` said OK; a merged model holding NaN or infinite values.
"""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import layer_swap, suite_swap
from safetensors.torch import load_file, save_file

from mergekit_layerswap import cli, complete, merge, mergekit_schema
from mergekit_layerswap.errors import InputError, RunError
from mergekit_layerswap.suite.schema import parse_suite


def soup(name: str, *weights, **extra) -> dict:
    """A suite's linear merge of math and swahili with these weights."""
    models = [
        {"model": alias, "parameters": {"weight": weight}}
        for alias, weight in zip(("math", "swahili"), weights, strict=True)
    ]
    return {"name": name, "merge_method": "linear", "models": models, **extra}


#: Every baseline the suite used to accept and then fail on (or merge into NaN), with the
#: line that now names it before the first merge.
BAD = {
    "zero": (soup("zero", 0, 0), "models: the linear weights sum to 0;"),
    "opposite": (soup("opposite", 1, -1), "models: the linear weights sum to 0;"),
    "crossing": (
        soup("crossing", [1, -1], [0, 0]),
        "models: the linear weights sum to 0 somewhere along the layers;",
    ),
    "nan": (soup("nan", math.nan, 1), "models[0].parameters.weight: got nan; weight must be"),
    "text": (soup("text", "abc", 1), "models[0].parameters.weight: got 'abc'; linear's weight"),
    "empty": (soup("empty", [], 1), "models[0].parameters.weight: an empty gradient"),
    "three": (
        {
            "name": "three",
            "merge_method": "slerp",
            "base_model": "math",
            "models": [{"model": "math"}, {"model": "swahili"}, {"model": "base"}],
            "parameters": {"t": 0.5},
        },
        "models: slerp: Merge method requires exactly 2 inputs; got 3",
    ),
    "no-base": (
        {**soup("no-base", 1, 1), "merge_method": "task_arithmetic"},
        "base_model: missing; task_arithmetic needs",
    ),
    "dense": (
        {
            "name": "dense",
            "merge_method": "ties",
            "base_model": "base",
            "models": [
                {"model": "math", "parameters": {"weight": 1, "density": 1.5}},
                {"model": "swahili", "parameters": {"weight": 1, "density": 0.5}},
            ],
        },
        "models[0].parameters.density: got 1.5; density is the fraction",
    ),
    "della": (
        {
            "name": "della",
            "merge_method": "della",
            "base_model": "base",
            "models": [
                {"model": "math", "parameters": {"weight": 1, "density": 0.1}},
                {"model": "swahili", "parameters": {"weight": 1, "density": 0.5}},
            ],
        },
        "models[0].parameters.epsilon: density 0.1 ± epsilon 0.15 leaves (0, 1)",
    ),
    "int8": (soup("int8", 1, 1, dtype="int8"), "dtype: got 'int8'; use one of bfloat16"),
    "unlisted": (
        soup("unlisted", 1, 1, base_model="base"),
        "base_model: linear merges it too and requires weight for it",
    ),
    "template": (soup("template", 1, 1, chat_template=[1]), "chat_template: got [1]; mergekit"),
    "source": (soup("source", 1, 1, tokenizer_source=5), "tokenizer_source: got 5; mergekit"),
    "tokens": (
        soup("tokens", 1, 1, tokenizer={"source": "union", "tokens": 5}),
        "tokenizer.tokens: got 5; mergekit expects",
    ),
    "slices": (soup("slices", 1, 1, slices=False), "slices: got False; mergekit refuses it"),
    "swap-slices": ({**suite_swap("swap-slices"), "slices": False}, "slices/modules: layer_swap"),
}


def test_every_bad_baseline_is_refused_at_once_before_any_merge(aliases, tmp_path, capsys):
    """Class: baseline settings the suite accepted and mergekit then failed on mid-run (or
    merged into an all-NaN model that was ranked): all found up front, one line each."""
    raw = {
        "models": aliases,
        "evaluate_inputs": ["math"],
        "merges": [entry for entry, _ in BAD.values()],
        "evaluation": {"languages": ["sw"]},
    }
    path = tmp_path / "suite.yml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert cli.main(["suite", str(path), str(out)]) == 2
    captured = capsys.readouterr()
    problems = captured.err.splitlines()[1:]
    for name, (_, line) in BAD.items():
        mine = [p for p in problems if p.startswith(f"  {name}: ")]
        assert len(mine) == 1 and mine[0].startswith(f"  {name}: {line}"), (name, mine)
    assert len(problems) == len(BAD)
    assert "merge 1/" not in captured.out and not out.exists()


def test_good_baselines_pass_the_same_checks(aliases):
    """The checks refuse only what mergekit would fail on: gradients summing to 1, slerp
    with its two models, ties with densities in (0, 1], float dtypes and a chat template."""
    good = [
        soup("gradient", [0.2, 0.8], [0.8, 0.2], dtype="float32", chat_template="chatml"),
        soup("soup", 0.5, "0.5", tokenizer={"source": "base"}),
        soup("unnormalized", 1, -1, parameters={"normalize": False}),
        {
            "name": "slerp",
            "merge_method": "slerp",
            "base_model": "math",
            "models": [{"model": "math"}, {"model": "swahili"}],
            "parameters": {"t": [0, 0.5, 1]},
        },
        {**copy.deepcopy(BAD["dense"][0]), "name": "ties", "parameters": {"density": 1}},
    ]
    good[-1]["models"][0]["parameters"]["density"] = [0.2, 1.0]
    suite = parse_suite({"models": aliases, "merges": good, "evaluation": {"languages": ["sw"]}})
    assert [e.name for e in suite.entries] == [m["name"] for m in good]


FIELDS = {
    "chat_template": ([1], "chat_template: got [1]; mergekit expects a string"),
    "tokenizer_source": (5, "tokenizer_source: got 5; mergekit expects union, base"),
    "tokenizer": ({"source": "union", "tokens": 5}, "tokenizer.tokens: got 5; mergekit"),
    "slices": (False, "slices/modules: layer_swap takes a `models:` list"),
    "dtype": ("int8", "dtype: got 'int8'; use one of bfloat16"),
    "out_dtype": ("int64", "out_dtype: got 'int64'; use one of bfloat16"),
}


@pytest.mark.parametrize("field", [*FIELDS, "model"])
def test_validate_refuses_what_mergekits_schema_refuses(make_model, tmp_path, capsys, field):
    """Class: fields mergekit's schema refuses after `validate` said OK (pydantic's
    traceback from `merge` and `mergekit-yaml`): one line naming the field, exit 2, here
    and in the stock `mergekit-yaml` path (the wrapped `MergeConfiguration.model_validate`)."""
    host, donor = make_model("llama", 8, seed=1), make_model("llama", 8, seed=2)
    raw = layer_swap(host, {donor: {"bottom": 2}})
    if field == "model":  # a ModelPath mapping where mergekit wants a ModelReference
        raw["models"][1]["model"] = {"path": str(donor)}
        expected = "models[1].model: missing or not a path"
    else:
        raw[field], expected = FIELDS[field]
    path = tmp_path / "swap.yml"
    path.write_text(yaml.safe_dump(raw))
    capsys.readouterr()  # the models' build output
    assert cli.main(["validate", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}: {expected}", lines[0].index(str(path)))
    from mergekit.config import MergeConfiguration

    with pytest.raises(InputError) as error:
        MergeConfiguration.model_validate(raw)
    assert len(error.value.problems) == 1 and error.value.problems[0].startswith(expected)


MIRRORED = {
    "chat_template": ["chatml", "{{ x }}", None, [1], 5, {"a": 1}],
    "tokenizer_source": ["union", "base", "org/model", "a@b", "a+b", "a+b+c", "a@b@c", 5, [1]],
    "tokenizer": [
        {"source": "union"},
        {"source": "x", "tokens": {"<t>": {"source": "y", "force": True}}},
        {"source": "x", "tokens": {"<t>": {"source": {"kind": "zero"}}}},
        {"tokens": {"<t>": {"source": {"kind": "model_token", "model": "x", "token_id": 1}}}},
        {"tokens": {"<t>": {"source": {"kind": "model_token", "model": "x"}}}},
        {"source": "union", "tokens": 5},
        {"source": 5},
        {"pad_to_multiple_of": "x"},
        {"pad_to_multiple_of": 8},
        {"tokens": {"<t>": {"force": "maybe"}}},
        "union",
    ],
}


@pytest.mark.parametrize(
    ("field", "value"), [(f, v) for f, values in MIRRORED.items() for v in values]
)
def test_the_torch_free_check_agrees_with_mergekits_own_schema(field, value):
    """`validate` cannot import mergekit.config (it imports torch): its mirror of the
    fields' types refuses exactly what mergekit's own MergeConfiguration refuses."""
    raw = {"merge_method": "linear", "models": [{"model": "m"}], field: value}
    assert bool(mergekit_schema.problems(raw)) == bool(mergekit_schema.refused(raw)), raw


def _with_nan(model: Path, folder: Path) -> Path:
    """A copy of `model` whose first layer's q_proj holds one NaN."""
    shutil.copytree(model, folder)
    path = next(folder.glob("*.safetensors"))
    weights = load_file(path)
    name = next(n for n in weights if "layers.0.self_attn.q_proj" in n)
    weights[name][0, 0] = math.nan
    save_file(weights, path, metadata={"format": "pt"})
    return folder


@pytest.mark.slow
def test_a_merge_with_non_finite_values_is_never_published(
    make_model, mgsm_hf_dir, tmp_path, capsys
):
    """Class: a merge whose output holds NaN (here from an input holding NaN, which no
    config check can see; a zero weight sum under `merge` alone) is a RunError line and
    nothing appears under the final name, nor in a suite's results or leaderboard."""
    good = make_model("llama", 6, seed=1)
    broken = _with_nan(make_model("llama", 6, seed=2), tmp_path / "broken")
    configs = {
        "nan-input": [(good, 0.5), (broken, 0.5)],
        "zero-sum": [(good, 1), (make_model("llama", 6, seed=3), -1)],
    }
    for name, weighted in configs.items():
        raw = {
            "merge_method": "linear",
            "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in weighted],
        }
        with pytest.raises(RunError, match="holds NaN or infinite values"):
            merge.run(raw, tmp_path / name)
        assert not (tmp_path / name).exists(), name
        assert not list(tmp_path.glob(f".{name}.partial-*")), name
    suite = {
        "models": {"good": str(good), "broken": str(broken)},
        "merges": [
            {
                "name": "soup",
                "merge_method": "linear",
                "models": [
                    {"model": "good", "parameters": {"weight": 0.5}},
                    {"model": "broken", "parameters": {"weight": 0.5}},
                ],
            }
        ],
        "evaluation": {"languages": ["sw"], "data_dir": str(mgsm_hf_dir)},
    }
    path = tmp_path / "suite.yml"
    path.write_text(yaml.safe_dump(suite))
    out = tmp_path / "out"
    code = cli.main(["suite", str(path), str(out)])
    assert code == 1 and "holds NaN or infinite values" in capsys.readouterr().err
    assert not (out / "merges" / "soup").exists() and not (out / "leaderboard.md").exists()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_nonfinite_names_every_float_tensor_holding_nan_or_inf(tmp_path, dtype):
    """The check reads the bytes of float tensors only, in every float dtype (big tensors
    across read chunks), and names exactly the tensors that hold NaN or an infinity."""
    big = torch.zeros(3, 1 << 22, dtype=dtype)  # more than one read chunk
    big[2, -1] = math.inf
    weights = {
        "finite": torch.full((4, 4), 65504 if dtype == torch.float16 else 1e30, dtype=dtype),
        "nan": torch.tensor([1.0, math.nan], dtype=dtype),
        "minus_inf": torch.tensor([-math.inf], dtype=dtype),
        "big": big,
        "ints": torch.full((4,), -1, dtype=torch.int32),  # all bits set: not a float
    }
    save_file(weights, tmp_path / "model.safetensors")
    assert sorted(complete.nonfinite(tmp_path)) == ["big", "minus_inf", "nan"]
