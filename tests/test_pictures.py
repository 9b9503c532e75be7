"""The pictures and reports a person reads: leaderboard.{png,md,csv,json}, lab.{png,md}.

Inputs are realistic in size (the lab's 20 models: 3 inputs, 5 merges, 12 sweep variants, on
3 tasks) with scores that include zeros; only the commands test runs models (tiny ones)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.colors import to_hex, to_rgb
from matplotlib.container import BarContainer, ErrorbarContainer
from PIL import Image

from mergekit_layerswap import cli
from mergekit_layerswap.lab import preconditions, report, testsets, verdict
from mergekit_layerswap.lab.run import LabSettings
from mergekit_layerswap.suite import leaderboard

COLUMNS = list(testsets.task_names("sw"))
MODELS = {
    "base": ("input", "-"),
    "math": ("input", "-"),
    "lang": ("input", "-"),
    "layer-swap": ("merge", "layer_swap"),
    "soup": ("merge", "linear"),
    "task-arithmetic": ("merge", "task_arithmetic"),
    "ties": ("merge", "ties"),
    "dare-ties": ("merge", "dare_ties"),
} | {
    f"swap-b{b}" + (f"-t{t}" if t else "") + f"-tr{tr}": ("sweep", "layer_swap")
    for b in (1, 2)
    for t in (0, 1, 2)
    for tr in (0, 1)
}
MARKED = {"base", "math", "lang", "layer-swap  (layer_swap)", "soup  (linear)"}


def score(model: int, column: int, seed: int = 0) -> float:
    """A fake score in [0, 1]: every third model scores 0 on the English control."""
    if column == 1 and model % 3 == 0:
        return 0.0
    return ((model * 7 + column * 5 + seed * 3) % 13) / 15


def board_rows() -> list[dict]:
    records = [
        {
            "name": name,
            "kind": kind,
            "method": method,
            "columns": {c: {"score": score(i, j)} for j, c in enumerate(COLUMNS)},
        }
        for i, (name, (kind, method)) in enumerate(MODELS.items())
    ]
    return leaderboard.rows(records, COLUMNS)


def lab_data(seeds: int, max_gen_toks: int = 48) -> dict:
    """What run_lab hands to report.write, for fake scores; seed 0 used the fallback swap."""
    runs = {}
    for seed in range(seeds):
        models = {
            name: {
                "kind": kind,
                "method": method,
                "columns": {
                    c: {"score": score(i, j, seed), "other_score": score(i, j) / 2}
                    for j, c in enumerate(COLUMNS)
                },
            }
            for i, (name, (kind, method)) in enumerate(MODELS.items())
        }
        swap = {"donor": {"bottom": 1, "top": 1}, "transition": 0, "source": "fallback"}
        if seed:
            swap = {"donor": {"bottom": 2}, "transition": 1, "source": "analyze"}
        measured = [
            preconditions.Precondition(name, 0.1 * (i + 1), 0.3).record()
            for i, name in enumerate(preconditions.MEANINGS)
        ]
        runs[seed] = {"swap": swap, "models": models, "preconditions": measured}
    return {
        "settings": LabSettings(seeds=seeds, max_gen_toks=max_gen_toks).model_dump(),
        "columns": COLUMNS,
        "tests": testsets.summary(testsets.build("sw", 2, 1000)),
        "seeds": {str(seed): run for seed, run in runs.items()},
        "summary": report.summarize(runs, COLUMNS),
        "verdict": verdict.judge(runs, COLUMNS[0], 2),
    }


def bars(axes) -> list:
    return [c.patches[0] for c in axes.containers if isinstance(c, BarContainer)]


def test_leaderboard_ranks_by_the_first_column_and_averages_nothing(tmp_path):
    table = board_rows()
    leaderboard.write(table, leaderboard.Columns(COLUMNS, mgsm=False), tmp_path)
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    assert all(set(row) == {"name", "kind", "method", "scores"} for row in board)
    ranking = [(-row["scores"][COLUMNS[0]], row["name"]) for row in board]
    assert ranking == sorted(ranking)
    with (tmp_path / "leaderboard.csv").open() as handle:
        assert next(csv.reader(handle)) == ["name", "kind", "method", *COLUMNS]
    markdown = (tmp_path / "leaderboard.md").read_text()
    assert "average" not in markdown.splitlines()[0]
    assert f"rows ranked by {COLUMNS[0]}; no average across columns" in markdown
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "leaderboard.csv",
        "leaderboard.json",
        "leaderboard.md",
        "leaderboard.png",
    ]  # written atomically: no temporary file stays


def test_leaderboard_picture_one_colour_per_task_values_on_every_bar():
    table = board_rows()
    figure = leaderboard.plot(table, leaderboard.Columns(COLUMNS, mgsm=False))
    panels = figure.axes
    assert [axes.get_title() for axes in panels] == COLUMNS
    for index, axes in enumerate(panels):
        drawn = bars(axes)
        assert len(drawn) == len(MODELS)
        assert {to_hex(bar.get_facecolor()) for bar in drawn} == {to_hex(f"C{index}")}
        labels = {round(text.get_position()[1]): text.get_text() for text in axes.texts}
        for bar in drawn:
            y = round(bar.get_y() + bar.get_height() / 2)
            assert labels[y] == f"{bar.get_width():.1f}"  # the value, printed at every bar
            assert bar.get_linewidth() > 0  # a zero bar is still a line
    assert sum(bar.get_width() == 0 for bar in bars(panels[1])) >= 5
    ticks = panels[0].get_yticklabels()
    names = [tick.get_text() for tick in ticks]
    assert names[0] == "inputs" and names.index("merges") == 4
    assert names.index("sweep variants (layer_swap)") == 10 and len(names) == len(MODELS) + 3
    assert {t.get_text() for t in ticks if t.get_fontweight() == "bold"} == MARKED
    assert "average" not in " ".join(names)
    image = Image.open(io.BytesIO(leaderboard.png(figure))).convert("RGB")
    counts = {colour: 0 for colour in (f"C{i}" for i in range(10))}
    wanted = {tuple(round(255 * v) for v in to_rgb(c)): c for c in counts}
    for count, pixel in image.getcolors(1 << 20):
        if pixel in wanted:
            counts[wanted[pixel]] += count
    assert all(counts[f"C{i}"] > 500 for i in range(3)), counts
    others = [f"C{i}" for i in range(3, 10) if i != 7]  # C7 is a grey, as in text edges
    assert all(counts[c] == 0 for c in others), counts  # not a colour per model
    assert image.width <= 1000


@pytest.mark.parametrize("seeds", [1, 3])
def test_lab_picture_marks_the_designated_swap_and_its_rivals(seeds):
    figure = report.plot(lab_data(seeds))
    title = figure.get_suptitle()
    assert f"{seeds} seed" in title and ("seeds" in title) == (seeds > 1)
    names = [tick.get_text() for tick in figure.axes[0].get_yticklabels()]
    assert names[0] == "designated swap and its rivals"
    assert set(names[1:5]) == {"layer-swap (designated)"} | {
        f"{rival} (rival)" for rival in ("math", "lang", "soup")
    }
    bold = [t.get_text() for t in figure.axes[0].get_yticklabels() if t.get_fontweight() == "bold"]
    assert bold == ["layer-swap (designated)"]
    errors = [c for c in figure.axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert bool(errors) == (seeds > 1)  # no spread to show from one seed
    assert [to_hex(bars(axes)[0].get_facecolor()) for axes in figure.axes] == [
        to_hex(f"C{i}") for i in range(3)
    ]
    note = figure._supxlabel.get_text().splitlines()
    shown = {line.split(":")[0]: line for line in note}
    for i, name in enumerate(preconditions.MEANINGS):  # lab_data: 0.1 (i + 1) against 0.3
        cells = ", ".join([f"{0.1 * (i + 1):.2f} {'pass' if i >= 2 else 'FAIL'}"] * seeds)
        assert shown[name] == f"{name}: {cells} (threshold 0.30)"  # the same on every seed
    if seeds > 1:  # thresholds that differ (transfer's copy floor) are shown per seed, in order
        data = lab_data(seeds)
        for i, run in enumerate(data["seeds"].values()):
            run["preconditions"][0]["threshold"] = 0.3 - 0.1 * i
        note = report.plot(data)._supxlabel.get_text()
        assert "(threshold 0.30, 0.20, 0.10)" in note


def lab_commands(text: str) -> list[list[str]]:
    """Every command of lab.md's bash blocks, split as a shell would."""
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line]


@pytest.mark.parametrize("seeds", [1, 3])
def test_lab_md_reads_alone(seeds, tmp_path, monkeypatch):
    out = tmp_path / "lab"
    report.write(lab_data(seeds), out)
    text = (out / "lab.md").read_text()
    assert f"{seeds} seed" in text.splitlines()[2] and (" 1 seeds" not in text)
    assert "](lab.png)" in text and "![" in text
    for term in (*COLUMNS, "**designated**", "**fallback**", "`trN`", "swap-b1-t2-tr1"):
        assert term in text
    assert "- seed 0: bottom 1, top 1, transition 0 (fallback)" in text
    assert "{'" not in text  # no Python dict
    if seeds > 1:
        assert "- seed 1: bottom 2, top 0, transition 1 (suggested by analyze)" in text
    lines = lab_commands(text)
    assert len(lines) == 2 * seeds
    folder = str((out / "tasks").resolve())
    for seed, (mine, theirs) in enumerate(zip(lines[::2], lines[1::2], strict=True)):
        args = cli.build_parser().parse_args(mine[1:])
        assert mine[:2] == ["mergekit-layerswap", "eval"] and args.max_gen_toks == 48
        assert args.include_path == folder and args.tasks == ",".join(COLUMNS)
        root = out.resolve() / f"seed-{seed}"
        assert args.models == [
            str(root / "suite" / "merges" / "layer-swap"),
            str(root / "models" / "math"),
            str(root / "models" / "lang"),
            str(root / "suite" / "merges" / "soup"),
        ]
        from lm_eval._cli import HarnessCLI

        monkeypatch.setattr(sys, "argv", theirs)
        parsed = HarnessCLI().parse_args()  # lm-eval's own parser, legacy form
        assert parsed.command == "run" and parsed.model == "hf"
        assert parsed.include_path == folder and parsed.device == "cpu"
        assert parsed.gen_kwargs == {"max_gen_toks": 48}
        assert parsed.model_args == {"pretrained": args.models[0]}
        assert parsed.tasks == COLUMNS and parsed.batch_size == "64"


@pytest.mark.slow
def test_lab_md_commands_run_as_written(make_model, tmp_path):
    """A lab folder of tiny models: each command of lab.md runs and scores every task."""
    out = tmp_path / "lab"
    seed_dir = out / "seed-0"
    for index, where in enumerate(
        ("models/math", "models/lang", "suite/merges/layer-swap", "suite/merges/soup")
    ):
        shutil.copytree(make_model("llama", 4, seed=20 + index), seed_dir / where)
    testsets.write(testsets.build("sw", 2, 1000), "sw", out / "tasks", max_gen_toks=4)
    report.write(lab_data(1, max_gen_toks=4), out)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for argv in lab_commands((out / "lab.md").read_text()):
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        if argv[0] == "lm_eval":
            assert all(name in done.stdout for name in COLUMNS), done.stdout[-3000:]
    results = json.loads((out / "rescored" / "seed-0" / "results.json").read_text())
    assert len(results["models"]) == 4
    assert all(list(model["columns"]) == COLUMNS for model in results["models"])
