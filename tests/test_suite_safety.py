"""Suite inputs that must be refused before anything is touched, and the output folder's
guards: names that would become paths outside OUT_DIR, every problem at once, a second run
on the same folder, relative paths, duplicate sweep variants."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from helpers import suite_swap

from mergekit_layerswap import cli
from mergekit_layerswap.errors import InputError, RunError
from mergekit_layerswap.suite.schema import load_suite, parse_suite
from mergekit_layerswap.suite.store import Store


def run_cli(tmp_path: Path, raw: dict, out: Path, capsys) -> tuple[int, str]:
    path = tmp_path / "suite.yml"
    path.write_text(yaml.safe_dump(raw))
    code = cli.main(["suite", str(path), str(out)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def problems_of(raw: dict, base_dir: Path | None = None) -> list[str]:
    with pytest.raises(InputError) as error:
        parse_suite(raw, base_dir)
    return error.value.problems


def test_path_traversal_names_are_refused_and_nothing_outside_is_touched(aliases, tmp_path, capsys):
    """Class: names that become paths (merges, sweep variants, aliases) escaping OUT_DIR."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    out = tmp_path / "deep" / "er" / "out"
    bad_names = [str(victim), "../../../victim", ".", "", "..", "a/b", "-x", "x.", "a..b"]
    raw = {
        "models": {**aliases, "../evil": aliases["math"]},
        "merges": [suite_swap(name) for name in bad_names],
        "sweep": {"base_model": "math", "donor": "swahili", "layers": ["0-1/../../x"]},
        "evaluation": {"languages": ["sw"]},
    }
    problems = problems_of(raw)
    for i, name in enumerate(bad_names):
        assert any(p.startswith(f"merges[{i}].name: {name!r} cannot be used") for p in problems)
    assert any(p.startswith("models.../evil: '../evil' cannot be used") for p in problems)
    assert any(p.startswith("sweep (layers: '0-1/../../x')") for p in problems)
    code, text = run_cli(tmp_path, raw, out, capsys)
    assert code == 2 and "cannot be used as a name" in text
    assert (victim / "keep.txt").read_text() == "precious"
    assert not (tmp_path / "deep").exists()


def test_store_refuses_paths_that_resolve_outside_its_root(tmp_path):
    """Class: every path the suite deletes or writes is proven to lie under OUT_DIR."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    store = Store(tmp_path / "out")
    (store.root / "merges").mkdir(parents=True)
    (store.root / "merges" / "swap").symlink_to(victim)  # a link planted inside OUT_DIR
    for call in (
        lambda: store.clear_merge("swap"),
        lambda: store.merge_dir("../victim"),
        lambda: store.result_path("/abs"),
        lambda: store.eval_dir("."),
    ):
        with pytest.raises(RunError):
            call()
    (store.root / "results").symlink_to(victim)  # a whole subfolder redirected
    with pytest.raises(RunError):
        store.write_result("k", "e", {"name": "keep"})
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert (victim / "keep.txt").read_text() == "precious"


def test_every_mistake_is_reported_at_once_with_hints(aliases):
    """Class: baseline parameters checked against mergekit's own method specs, and all
    problems (names, aliases, methods, parameters) in one round, not one per run."""
    raw = {
        "models": aliases,
        "evaluate_inputs": ["maths"],
        "merges": [
            {
                "name": "ties",
                "merge_method": "ties",
                "base_model": "base",
                "models": [
                    {"model": "math", "parameters": {"weight": 1.0, "densty": 0.5}},
                    {"model": "swahili", "parameters": {"wieght": 1.0}},
                ],
            },
            {
                "name": "soup",
                "merge_method": "linear",
                "models": [
                    {"model": "math", "parameters": {"weight": 0.5, "normalize": True}},
                    {"model": "swahili"},
                ],
            },
            {
                "name": "slerp",
                "merge_method": "slerp",
                "base_model": "math",
                "models": [{"model": "math"}, {"model": "swahili"}],
                "parameters": {"tt": 0.5},
            },
            {
                "name": "dare",
                "merge_method": "dare_tie",
                "base_model": "base",
                "models": [{"model": "math"}],
            },
            suite_swap("bad/name"),
        ],
        "evaluation": {"languages": ["sw"]},
    }
    problems = problems_of(raw)
    expected = [
        "evaluate_inputs[0]: 'maths' is not a model alias; did you mean 'math'?",
        "ties: models[0].parameters.densty: not a ties parameter; did you mean 'density'?",
        "ties: models[1].parameters.wieght: not a ties parameter; did you mean 'weight'?",
        "ties: models[1].parameters.weight: ties requires it for every model; add it",
        "soup: models[0].parameters.normalize: applies to the whole merge; move it to the "
        "top-level parameters",
        "soup: models[1].parameters.weight: linear requires it for every model; add it",
        "slerp: parameters.tt: not a slerp parameter; did you mean 't'?",
        "slerp: parameters.t: slerp requires it; add it",
        "dare: merge_method: unknown method 'dare_tie'; did you mean 'dare_ties'?",
        "merges[4].name: 'bad/name' cannot be used as a name",
    ]
    for line in expected:
        assert any(p.startswith(line) for p in problems), (line, problems)
    # the correct spellings pass: the check knows what mergekit accepts
    fixed = {
        **raw,
        "evaluate_inputs": ["math"],
        "merges": [
            {
                "name": "ties",
                "merge_method": "ties",
                "base_model": "base",
                "parameters": {"normalize": True},
                "models": [
                    {"model": "math", "parameters": {"weight": 1.0, "density": 0.5}},
                    {"model": "swahili", "parameters": {"weight": 1.0}},
                ],
            },
            {
                "name": "slerp",
                "merge_method": "slerp",
                "base_model": "math",
                "models": [{"model": "math"}, {"model": "swahili"}],
                "parameters": {"t": 0.5},
            },
        ],
    }
    assert [e.name for e in parse_suite(fixed).entries] == ["math", "ties", "slerp"]


def test_missing_data_folder_and_models_are_refused_before_the_first_merge(
    aliases, tmp_path, capsys
):
    """Class: inputs checked after expensive work (the data folder, the models, OUT_DIR)."""
    raw = {
        "models": aliases,
        "merges": [suite_swap("swap")],
        "evaluation": {"languages": ["sw"], "data_dir": str(tmp_path / "no-such-data")},
    }
    out = tmp_path / "out"
    code, text = run_cli(tmp_path, raw, out, capsys)
    assert code == 2 and "evaluation.data_dir: MGSM data directory not found" in text
    assert "merge 1/" not in text and not out.exists()

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    code, text = run_cli(
        tmp_path, {**raw, "evaluation": {"languages": ["sw"]}}, a_file / "out", capsys
    )
    assert code == 2 and "cannot write to the output directory" in text


def test_a_second_run_on_the_same_output_folder_is_refused(aliases, mgsm_hf_dir, tmp_path, capsys):
    """Class: two suites on one OUT_DIR at once (a lock naming the other run's pid)."""
    import os

    raw = {
        "models": aliases,
        "evaluate_inputs": ["math"],
        "evaluation": {"languages": ["sw"], "data_dir": str(mgsm_hf_dir)},
    }
    out = tmp_path / "out"
    with Store(out).lock():
        code, text = run_cli(tmp_path, raw, out, capsys)
    assert code == 2 and f"another suite run (pid {os.getpid()})" in text
    with Store(out).lock():  # released: the next run may take it
        pass


def test_relative_paths_are_taken_from_the_suite_files_folder(aliases, tmp_path, monkeypatch):
    """Class: relative model paths and data_dir resolved against the YAML's folder."""
    folder = tmp_path / "project"
    (folder / "models").mkdir(parents=True)
    for alias in ("math", "swahili"):
        shutil.copytree(aliases[alias], folder / "models" / alias)
    (folder / "data").mkdir()
    raw = {
        "models": {"math": "./models/math", "swahili": "models/swahili"},
        "merges": [suite_swap("swap")],
        "evaluation": {"languages": ["sw"], "data_dir": "data"},
    }
    (folder / "suite.yml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)  # not the suite file's folder
    suite = load_suite("project/suite.yml")
    config = suite.entries[0].config
    assert config["base_model"] == str((folder / "models" / "math").resolve())
    assert config["models"][1]["model"] == str((folder / "models" / "swahili").resolve())
    assert suite.evaluation.data_dir == (folder / "data").resolve()


def test_a_sweep_variant_equal_to_a_merge_is_scored_once(aliases):
    """Class: identical configurations deduplicated (the demo scored one swap twice)."""
    merge = {**suite_swap("swap-b2-t1"), "parameters": {"transition": 1}}
    merge["models"][1]["parameters"] = {"top": 1, "bottom": 2}
    raw = {
        "models": aliases,
        "merges": [merge],
        "sweep": {
            "base_model": "math",
            "donor": "swahili",
            "bottom": [1, 2],
            "top": [1],
            "transition": [0, 1],
        },
        "evaluation": {"languages": ["sw"]},
    }
    suite = parse_suite(raw)
    assert suite.duplicates == {"swap-b2-t1-tr1": "swap-b2-t1"}
    assert [e.name for e in suite.entries] == [
        "swap-b2-t1",
        "swap-b1-t1-tr0",
        "swap-b1-t1-tr1",
        "swap-b2-t1-tr0",
    ]
