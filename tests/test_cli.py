"""The command line: mergekit-yaml's options on `merge`, KEY=VALUE overrides, bad input as
exit 2 with one line per problem."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import layer_swap
from mergekit.options import MergeOptions
from mergekit.scripts.run_yaml import main as mergekit_yaml

from mergekit_layerswap import cli, merge
from mergekit_layerswap.options import UNLISTED, merge_options

ROOT = Path(__file__).parents[1]
#: How mergekit-yaml spells a few of its options (its README and --help).
SPELLINGS = [
    "--cuda",
    "--no-copy-tokenizer",
    "--lazy-unpickle",
    "--out-shard-size",
    "--random-seed",
    "--quiet",
    "--allow-crimes",
    "--gpu-rich",
    "-j",
    "-v",
    "--no-write-model-card",
    "--lora-merge-cache",
    "--transformers-cache",
]


def parse_merge(*flags: str) -> MergeOptions:
    return merge_options(cli.build_parser().parse_args(["merge", "c.yml", "out", *flags]))


def test_merge_help_lists_every_mergekit_option_and_top_help_stays_torch_free():
    code = (
        "import sys, contextlib, io\nfrom mergekit_layerswap import cli\n"
        "for argv in (['--help'], ['merge', '--help']):\n"
        "    text = io.StringIO()\n"
        "    with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):\n"
        "        cli.main(argv)\n"
        "    print('torch' in sys.modules)\n"
        "print(text.getvalue())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    top, merge_help, text = done.stdout.split("\n", 2)
    assert (top, merge_help) == ("False", "True")  # merge --help imports mergekit's options
    for name in MergeOptions.model_fields:
        flag = f"--{name.replace('_', '-')}"
        assert name == "verbosity" or (flag in text) != (name in UNLISTED), name
    for flag in SPELLINGS:
        assert f"{flag} " in text or f"{flag}," in text or f"{flag}\n" in text, flag


def test_merge_flags_become_mergekit_merge_options():
    assert parse_merge() == MergeOptions()
    options = parse_merge(
        "--no-copy-tokenizer",
        "--out-shard-size",
        "1B",
        "-j",
        "2",
        "--random-seed",
        "7",
        "-vv",
        "--lora-merge-dtype",
        "float32",
    )
    assert (options.copy_tokenizer, options.out_shard_size, options.num_threads) == (
        False,
        10**9,
        2,
    )
    assert (options.random_seed, options.verbosity, options.lora_merge_dtype) == (7, 2, "float32")
    assert parse_merge("--cuda", "--no-cuda").cuda is False  # the last spelling wins, as in click
    rich = parse_merge("--gpu-rich")
    assert rich.cuda and rich.low_cpu_memory and rich.read_to_gpu and rich.multi_gpu


@pytest.mark.parametrize(
    "flags",
    [
        ["--out-shard-size", "lots"],
        ["--random-seed", "x"],
        ["--copy-tokenizer=yes"],
        ["--no-such-option"],
    ],
)
def test_bad_merge_flags_are_usage_errors(flags, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["merge", "c.yml", "out", *flags])
    assert stop.value.code == 2
    assert flags[0].split("=")[0] in capsys.readouterr().err


def test_reproduce_command_is_a_mergekit_yaml_command_with_the_same_options():
    """The saved config's first line: mergekit-yaml's own parser reads the same options back."""
    options = MergeOptions(
        random_seed=0,
        copy_tokenizer=False,
        out_shard_size=10**9,
        cuda=True,
        allow_crimes=True,
        lora_merge_dtype="float16",
        quiet=True,
    )
    command = merge.reproduce_command(options)
    assert command == (
        "mergekit-yaml mergekit_config.yml OUT --allow-crimes --lora-merge-dtype float16 "
        "--out-shard-size 1000000000 --no-copy-tokenizer --random-seed 0"
    )
    params = mergekit_yaml.make_context("mergekit-yaml", command.split()[1:]).params
    for name in merge._REPRODUCED:
        assert params[name] == getattr(options, name), name
    assert (
        merge.reproduce_command(MergeOptions(cuda=True)) == "mergekit-yaml mergekit_config.yml OUT"
    )


@pytest.mark.slow
def test_merge_passes_mergekit_options_through(make_model, tmp_path, capsys):
    """--out-shard-size shards the output, --no-write-model-card leaves the card out, and the
    saved config's first line repeats the options that shape the written model."""
    host, donor = make_model("llama", 8, seed=1), make_model("llama", 8, seed=2)
    config = tmp_path / "swap.yml"
    config.write_text(yaml.safe_dump(layer_swap(host, {donor: {"bottom": 2}}, transition=1)))
    out = tmp_path / "out"
    argv = [
        "merge",
        str(config),
        str(out),
        "--out-shard-size",
        "100K",
        "--no-write-model-card",
        "--quiet",
        "-j",
        "1",
    ]
    assert cli.main(argv) == 0, capsys.readouterr().err
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (out / "README.md").exists()
    first = (out / "mergekit_config.yml").read_text().splitlines()[0]
    assert first == "# reproduce: mergekit-yaml mergekit_config.yml OUT --out-shard-size 100000"


def test_no_safe_serialization_is_refused_with_the_config_problems(tmp_path, capsys):
    config = tmp_path / "swap.yml"
    config.write_text(yaml.safe_dump(layer_swap(tmp_path / "none", {}, transition=1)))
    out = tmp_path / "out"
    assert cli.main(["merge", str(config), str(out), "--no-safe-serialization"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mergekit-layerswap merge: error: {config} is invalid:\n  ")
    assert "--no-safe-serialization: merge writes safetensors only" in err
    assert not out.exists()


def test_input_errors_name_their_file_once(tmp_path, capsys):
    """One problem: `FILE: problem`; several: `FILE is invalid:` then one indented line each."""
    missing = tmp_path / "missing.yml"
    assert cli.main(["validate", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == f"mergekit-layerswap validate: error: {missing}: cannot read it " + (
        "(No such file or directory)\n"
    )
    config = tmp_path / "swap.yml"
    config.write_text("merge_method: layer_swap\nmodels: [{model: a}, {model: b}]\n")
    assert cli.main(["validate", str(config), "models.5.model=x", "nokey"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"mergekit-layerswap validate: error: {config} is invalid:",
        "  override 'models.5.model=x': models holds 2 items: give an index below 2",
        "  override 'nokey': write KEY=VALUE with a dotted KEY, e.g. models.lang=your-org/expert"
        ' (a key holding a dot in double quotes: models."llama3.1"=your-org/expert)',
    ]


def test_overrides_may_follow_options_and_apply_before_validation(tmp_path, capsys):
    """`suite FILE OUT --dry-run KEY=VALUE`: still an override (not an unknown argument), set
    before the suite is checked, so its value is what the check names."""
    suite = tmp_path / "suite.yml"
    suite.write_text(
        yaml.safe_dump(
            {
                "models": {"a": str(tmp_path)},
                "evaluate_inputs": ["a"],
                "evaluation": {"languages": ["sw"]},
            }
        )
    )
    out = tmp_path / "out"
    assert cli.main(["suite", str(suite), str(out), "--dry-run", "evaluation.languages=[xx]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mergekit-layerswap suite: error: {suite}: ") and "xx" in err, err
    assert not out.exists()
    with pytest.raises(SystemExit):
        cli.main(["suite", str(suite), str(out), "--dry-run", "--no-such-flag"])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
