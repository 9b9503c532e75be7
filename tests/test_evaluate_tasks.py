"""Scoring beyond MGSM: any lm-eval task or group from a local task folder (`--tasks`,
`--include-path`, a suite's `evaluation: {tasks, include_path}`), read back by the results
files, the leaderboard and the model card.

The local tasks are built so that each filter scores differently whatever a random tiny model
generates: a filter whose regex never matches falls back to a fixed answer ("7"), which is
right for the first problem only, so that filter scores 0.5 on two problems and every other
filter 0.0. Which filter is the headline is therefore visible in the score.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mergekit_layerswap import cli
from mergekit_layerswap.evaluate.columns import headline

pytestmark = pytest.mark.slow

NEVER = "NEVER-SEEN=([0-9]+)"  # a regex no generation of these models matches


def _regex(pattern: str, fallback: str = "[invalid]") -> list[dict]:
    return [
        {"function": "regex", "regex_pattern": pattern, "fallback": fallback},
        {"function": "take_first"},
    ]


def _task(name: str, data: Path, filters: list[dict]) -> dict:
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "output_type": "generate_until",
        "test_split": "test",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["\n"], "do_sample": False},
        "filter_list": filters,
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }


def write_task_folder(folder: Path, fallback: str = "7") -> Path:
    """A group `lab_math` of two generate_until tasks with their own JSONL data:
    `lab_sums` (strict-match + flexible-extract, as MGSM) and `lab_words` (two other filters,
    so its headline is its first filter)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "sums.jsonl"
    rows = [("3 + 4", "7"), ("4 + 4", "8"), ("1 + 1", "2")]
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows))
    tasks = {
        "lab_sums": [
            {"name": "strict-match", "filter": _regex("The answer is ([0-9]+)")},
            {"name": "flexible-extract", "filter": _regex(NEVER, fallback)},
        ],
        "lab_words": [
            {"name": "first", "filter": _regex(NEVER, "7")},
            {"name": "raw", "filter": [{"function": "take_first"}]},
        ],
    }
    for name, filters in tasks.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(_task(name, data, filters)))
    (folder / "lab_math.yaml").write_text(
        yaml.safe_dump({"group": "lab_math", "task": list(tasks)})
    )
    return folder


def test_headline_rule_exact_match_flexible_extract_else_first_metric_and_filter():
    """Class: the wrong score reported as the headline."""
    mgsm_direct = {
        "filter_list": [{"name": "remove_whitespace"}, {"name": "flexible-extract"}],
        "metric_list": [{"metric": "exact_match"}],
    }
    scores = {
        "exact_match,remove_whitespace": 0,
        "exact_match_stderr,remove_whitespace": 0,
        "exact_match,flexible-extract": 0,
        "alias": "x",
    }
    assert headline(mgsm_direct, scores) == ("exact_match", "flexible-extract", "remove_whitespace")
    choice = {"metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}
    scores = {"acc,none": 0, "acc_stderr,none": 0, "acc_norm,none": 0}
    assert headline(choice, scores) == ("acc", "none", None)
    other = {
        "filter_list": [{"name": "first"}, {"name": "raw"}],
        "metric_list": [{"metric": "exact_match"}],
    }
    scores = {"exact_match,first": 0, "exact_match,raw": 0}
    assert headline(other, scores) == ("exact_match", "first", "raw")


def test_eval_tasks_from_an_include_folder_group_columns_and_cache(make_model, tmp_path, capsys):
    """Classes: non-MGSM tasks not scored / groups not expanded to columns / a changed task
    YAML reusing a cached score."""
    model, folder, out = (
        make_model("llama", 2, seed=3),
        write_task_folder(tmp_path / "tasks"),
        tmp_path / "out",
    )
    argv = [
        "eval",
        str(model),
        "--tasks",
        "lab_math",
        "--include-path",
        str(folder),
        "--limit",
        "2",
        "--max-gen-toks",
        "4",
        "--output",
        str(out),
    ]
    assert cli.main(argv) == 0
    assert "evaluating lab_math" in capsys.readouterr().out
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["tasks"] == ["lab_math"]
    assert data["settings"]["include_path"] == str(folder.resolve())
    scores = data["models"][0]["columns"]
    assert list(scores) == ["lab_sums", "lab_words"]
    picked = {c: (r["metric"], r["filter"], r["other_filter"], r["n"]) for c, r in scores.items()}
    assert picked == {
        "lab_sums": ("exact_match", "flexible-extract", "strict-match", 2),
        "lab_words": ("exact_match", "first", "raw", 2),
    }
    assert [scores["lab_sums"]["score"], scores["lab_sums"]["other_score"]] == [0.5, 0]
    assert scores["lab_words"]["score"] == 0.5 and scores["lab_words"]["dataset"] == "json"
    assert data["models"][0]["average"] == 0.5
    assert "| Model | lab_sums | lab_words | Avg |" in (out / "results.md").read_text()

    assert cli.main(argv) == 0
    assert "all cached" in capsys.readouterr().out
    write_task_folder(folder, fallback="no answer")  # the YAML changes: scores must too
    assert cli.main(argv) == 0
    assert "evaluating lab_math" in capsys.readouterr().out
    assert (
        json.loads((out / "results.json").read_text())["models"][0]["columns"]["lab_sums"]["score"]
        == 0
    )


def test_bad_task_input_is_refused_in_one_line_each_before_anything_runs(
    make_model, tmp_path, capsys
):
    """Class: bad task input reaching lm-eval (or a model load) instead of one line, exit 2."""
    folder, out = write_task_folder(tmp_path / "tasks"), tmp_path / "out"
    model = str(make_model("llama", 2, seed=3))
    cases = [
        (
            ["--tasks", "lab_sum", "--include-path", str(folder)],
            ["unknown lm-eval task or group 'lab_sum'"],
        ),
        (["--tasks", "lab_sums", "--include-path", str(tmp_path / "none")], ["is not a folder"]),
        (
            ["--tasks", "lab_sums,lab_math", "--include-path", str(folder)],
            ["'lab_sums' is in both"],
        ),
        (["--languages", "sw", "--include-path", str(folder)], ["include_path needs tasks"]),
        (["--tasks", "lab_sums", "--data-dir", str(folder)], ["--data-dir is MGSM's"]),
    ]
    for extra, messages in cases:
        assert cli.main(["eval", model, *extra, "--output", str(out)]) == 2, extra
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == len(messages), err
        assert all(message in err for message in messages), err
        assert not out.exists()


def test_suite_evaluation_tasks_leaderboard_and_card(aliases, tmp_path, monkeypatch, capsys):
    """Classes: a suite that cannot score non-MGSM tasks (or demands MGSM data for them), a
    leaderboard or card that assumes MGSM languages."""
    from huggingface_hub import ModelCard

    monkeypatch.delenv("MGSM_DATA_DIR", raising=False)  # no MGSM data anywhere: not needed
    write_task_folder(tmp_path / "lab" / "tasks")
    raw = {
        "models": dict(aliases),
        "evaluate_inputs": ["math"],
        "merges": [
            {
                "name": "swap",
                "merge_method": "layer_swap",
                "base_model": "math",
                "models": [{"model": "math"}, {"model": "swahili", "parameters": {"bottom": 2}}],
            }
        ],
        "sweep": {"base_model": "math", "donor": "swahili", "top": [1]},
        "evaluation": {
            "tasks": ["lab_math"],
            "include_path": "tasks",
            "limit": 2,
            "max_gen_toks": 4,
        },
    }
    path = tmp_path / "lab" / "suite.yml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert cli.main(["suite", str(path), str(out)]) == 0, capsys.readouterr()
    board = json.loads((out / "leaderboard.json").read_text())
    assert sorted(row["name"] for row in board) == ["math", "swap", "swap-t1-tr0"]
    assert all(list(row["scores"]) == ["lab_sums", "lab_words"] for row in board)
    assert all(row["scores"] == {"lab_sums": 0.5, "lab_words": 0.5} for row in board)
    markdown = (out / "leaderboard.md").read_text()
    assert "| model | kind | method | lab_sums | lab_words |\n" in markdown
    assert "MGSM" not in markdown
    record = json.loads((out / "results" / "swap.json").read_text())
    assert record["columns"]["lab_sums"]["filter"] == "flexible-extract"

    card = out / "merges" / "swap" / "README.md"
    data, text = ModelCard.load(card).data, card.read_text()
    assert [(r.dataset_name, r.dataset_type, r.metric_type) for r in data.eval_results] == [
        ("lab_sums", "json", "exact_match"),
        ("lab_words", "json", "exact_match"),
    ]
    assert data.language is None and "MGSM" not in text
    assert f"--tasks lab_math --include-path {tmp_path / 'lab' / 'tasks'}" in text
