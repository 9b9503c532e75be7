"""The lab: disjoint data, deterministic training, and a real (non-degenerate) smallest run."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mergekit_layerswap import cli, threads
from mergekit_layerswap.errors import RunError
from mergekit_layerswap.lab import language, preconditions, run, samplers, testsets, train
from mergekit_layerswap.lab.settings import LabSettings

#: The CI form: one seed, the tiny size, fewer test problems and steps than `demo`.
CI = {"seeds": 1, "n_test": 24, "base_steps": 400, "expert_steps": 150}


def test_training_and_test_data_are_disjoint():
    """No training sampler (base, math expert, language expert) writes a test item."""
    settings = LabSettings()
    test = testsets.build("sw", 60, settings.test_seed)
    assert all(len(items) == 60 for items in test.items.values())
    assert len(test.excludes) == 180  # distinct draws across the three tasks
    questions = {p.question for items in test.items.values() for p in items}
    mixture = {kind: 1.0 for kind in settings.mixture}  # every kind of base text
    drawn = samplers.samplers(settings.model_copy(update={"mixture": mixture}), test.excludes)
    rng = random.Random(0)
    for sampler in drawn:
        for _ in range(3000):
            prompt, completion = sampler(rng)
            text = f"{prompt} {completion}"
            assert not any(question in text for question in questions), text


def test_language_pairs_share_their_draw():
    english, swahili = language.pair(language.problem, random.Random(3))
    assert english.key == swahili.key and english.answer_number == swahili.answer_number
    assert english.answer.endswith(f"The answer is {english.answer_number} .")
    assert swahili.answer.endswith(f"Jibu ni {swahili.answer_number} .")
    words = set(language.vocabulary())
    for text in (english.question, swahili.answer, *language.generic_pair(random.Random(1))):
        assert set(text.split()) <= words  # the word-level tokenizer covers everything


def test_english_keywords_bridge_every_kind_of_problem():
    """transfer_keywords' items: each kind of Swahili problem with English operation words,
    every word still in the vocabulary, the answer unchanged."""
    words, rng = set(language.vocabulary()), random.Random(4)
    english = {"gets", "gives", "buys", "Each", "has", "more", "then", "left"}
    for kind in language.KINDS:
        item = language.problem(rng, "sw", kind)
        bridged = language.english_keywords(item)
        assert set(bridged.question.split()) <= words
        assert set(bridged.question.split()) & english, bridged.question
        assert (bridged.answer_number, bridged.key) == (item.answer_number, item.key)


def test_training_is_deterministic(tmp_path):
    """The same seed trains byte-identical models (a few steps are enough to tell); a rerun
    removes what a killed run left behind, and retrains only the stages whose settings
    changed (not for more seeds, another device or other evaluation settings)."""
    settings = LabSettings(seeds=1, base_steps=8, expert_steps=4)
    excluded = testsets.build("sw", 4, settings.test_seed).excludes
    quiet = lambda *_: lambda *_: None  # noqa: E731
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    debris = tmp_path / "a" / f".math.partial-{int(ended.stdout)}"  # a killed run's leftovers
    debris.mkdir(parents=True)
    first = run.train_models(settings, 0, tmp_path / "a", excluded, quiet)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["base", "lang", "math"]
    second = run.train_models(settings, 0, tmp_path / "b", excluded, quiet)
    for name in ("base", "math", "lang"):
        mine, theirs = first[name] / "model.safetensors", second[name] / "model.safetensors"
        assert mine.read_bytes() == theirs.read_bytes(), name
    assert (first["math"] / "model.safetensors").read_bytes() != (
        first["lang"] / "model.safetensors"
    ).read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("model.safetensors")}
    more_seeds = settings.model_copy(update={"seeds": 3, "device": "cpu", "max_gen_toks": 9})
    run.train_models(more_seeds, 0, tmp_path / "a", excluded, quiet)  # reused, not retrained
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    modular = settings.model_copy(update={"experts": "frozen"})
    run.train_models(modular, 0, tmp_path / "a", excluded, quiet)  # new experts, same base
    assert (tmp_path / "a" / "base" / "model.safetensors").stat().st_mtime_ns == stamps[
        tmp_path / "a" / "base" / "model.safetensors"
    ]
    assert (tmp_path / "a" / "math" / "model.safetensors").stat().st_mtime_ns != stamps[
        tmp_path / "a" / "math" / "model.safetensors"
    ]
    other = run.train_models(settings, 1, tmp_path / "c", excluded, quiet)
    assert (other["base"] / "model.safetensors").read_bytes() != (
        first["base"] / "model.safetensors"
    ).read_bytes()


def test_subword_tokenizer_shares_pieces_and_keeps_numbers_whole(tmp_path):
    """The subword design: rare words split into pieces that both languages use, every number
    one token, and decoding writes what the word-level tokenizer writes."""
    word = train.build_tokenizer(tmp_path / "word", "word")
    subword = train.build_tokenizer(tmp_path / "subword", "subword")
    assert train.load_tokenizer(tmp_path / "subword").get_vocab() == subword.get_vocab()
    for number in ("0", "7", "81", "200"):
        assert len(subword.encode(number, add_special_tokens=False)) == 1
    rng = random.Random(2)
    english, swahili = language.pair(language.problem, rng)
    pieces = {}
    for item in (english, swahili):
        text = language.as_text(item)
        ids = subword.encode(text, add_special_tokens=False)
        assert subword.unk_token_id not in ids
        assert len(ids) > len(text.split())  # some words are split
        assert subword.decode(ids) == word.decode(word.encode(text, add_special_tokens=False))
        spelled = {t for t in subword.convert_ids_to_tokens(ids) if t.startswith("##")}
        pieces[item.language] = spelled
    assert pieces["en"] & pieces["sw"]  # pieces inside words, shared by both languages


def test_reverted_experts_keep_only_their_part(tmp_path):
    """`experts: reverted`: each expert trains every parameter, then whatever lies outside its
    part is the base's, bit for bit (the math expert's middle layers, the language expert's
    outer ones and embeddings differ from the base)."""
    import torch
    from safetensors.torch import load_file

    settings = LabSettings(seeds=1, base_steps=4, expert_steps=4, experts="reverted")
    excluded = testsets.build("sw", 4, settings.test_seed).excludes
    quiet = lambda *_: lambda *_: None  # noqa: E731
    paths = run.train_models(settings, 0, tmp_path, excluded, quiet)
    base, math, lang = (load_file(paths[n] / "model.safetensors") for n in ("base", "math", "lang"))
    outer = run._outer(settings.size)
    for name, tensor in base.items():
        assert torch.equal(math[name], tensor) == outer(name), name
        assert torch.equal(lang[name], tensor) != outer(name), name


@pytest.mark.slow
def test_smallest_lab_is_not_degenerate_resumes_and_reruns_identically(
    tmp_path, monkeypatch, capsys
):
    """One seed end to end: each expert scores above zero in its own domain, the experts
    differ, a rerun reuses everything, and scores recomputed from scratch are identical."""
    monkeypatch.chdir(tmp_path)
    out = Path("lab")  # relative, as a user types it (the suite once doubled it)
    settings = LabSettings(**CI)
    data = run.run_lab(out, settings, threads=1)
    assert "Loading weights" not in capsys.readouterr().err  # transformers' bar per model
    math_sw, math_en, read_sw = data["columns"]
    scores = {
        name: {c: v["score"] for c, v in model["columns"].items()}
        for name, model in data["seeds"]["0"]["models"].items()
    }
    assert scores["math"][math_en] > 0.1  # the math expert on English math
    assert scores["lang"][read_sw] > 0.5  # the language expert on target reading
    assert scores["math"] != scores["lang"]
    assert {"layer-swap", "soup", "ties", "dare-ties", "task-arithmetic"} <= set(scores)
    assert data["verdict"]["kind"] == "cannot judge"  # one seed never claims a win
    measured = data["seeds"]["0"]["preconditions"]
    assert [r["name"] for r in measured] == list(preconditions.MEANINGS)
    assert all(isinstance(r["value"], float) and isinstance(r["passed"], bool) for r in measured)
    assert "| locality |" in (out / "lab.md").read_text()
    for name in ("lab.json", "lab.md", "lab.png"):
        assert (out / name).stat().st_size > 0
    task_yaml = yaml.safe_load((out / "tasks" / f"{math_sw}.yaml").read_text())
    assert task_yaml["filter_list"][0]["name"] == "strict-match"
    assert (out / "seed-0" / "analysis" / "layers.png").is_file()
    first = (out / "lab.json").read_bytes()

    stamps = {p.absolute(): p.stat().st_mtime_ns for p in (out / "seed-0").rglob("*.safetensors")}
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # resumed from another folder, another spelling
    out = Path("../lab")
    assert (
        run.run_lab(out, settings, threads=1) == data
    )  # resumed: nothing trained, merged or scored
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert (out / "lab.json").read_bytes() == first

    shutil.rmtree(out / "seed-0" / "suite")  # every merge and score again, from the models
    run.run_lab(out, settings, threads=1)
    assert (out / "lab.json").read_bytes() == first
    assert json.loads(first)["settings"]["seeds"] == 1


def test_lab_refuses_bad_input_before_training(tmp_path, capsys):
    """Every problem at once, exit 2, before anything is trained or written."""
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert cli.main(["lab", str(a_file / "out")]) == 2
    argv = ["lab", str(tmp_path / "out"), "--seeds", "0", "--threads", "0", "--device", "cuda"]
    assert cli.main([*argv, "--n-test", "0"]) == 2
    assert cli.main(["demo", str(tmp_path / "out"), "--threads", "-1"]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err or "not a" in err
    assert "--seeds: Input should be greater than 0" in err
    assert "--n-test: Input should be greater than 0" in err  # the flag, as typed
    assert "--threads: 0 is not a thread count" in err and "--threads: -1" in err
    import torch

    if not torch.cuda.is_available():
        assert "--device cuda: torch sees no CUDA GPU here; use --device cpu" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs (root only: where mounting is refused the test is skipped)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", mount], check=False)
    if done.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", mount], check=True)


def test_lab_refuses_a_disk_without_room_before_training(small_disk, capsys):
    assert cli.main(["demo", str(small_disk / "out")]) == 2
    err = capsys.readouterr().err
    assert "MB free; free some space or choose another OUT_DIR" in err
    assert not any(small_disk.iterdir())


def test_a_disk_that_fills_while_saving_is_one_line_and_leaves_no_partial(small_disk, tmp_path):
    """Past the up-front check (another process filled the disk): the model that could not be
    written is named, and its partial folder is gone."""
    (small_disk / "filler").write_bytes(b"0" * 2_900_000)
    settings = LabSettings(seeds=1, base_steps=2, expert_steps=2)
    excluded = testsets.build("sw", 4, settings.test_seed).excludes
    with pytest.raises(RunError, match=r"could not write the model .*/models/base: "):
        run.train_models(settings, 0, small_disk / "models", excluded, lambda *_: None)
    assert [p.name for p in (small_disk / "models").iterdir()] == []


def test_torch_threads_are_left_alone_unless_asked():
    import torch

    before = torch.get_num_threads()
    with threads.torch_threads(None):
        assert torch.get_num_threads() == before
    with threads.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_task_folder_is_plain_lm_eval(tmp_path):
    """The written tasks load with lm-eval's own TaskManager (what `--include_path` does)."""
    from lm_eval.tasks import TaskManager

    folder = testsets.write(testsets.build("sw", 5, 7), "sw", tmp_path / "tasks")
    names = list(testsets.task_names("sw"))
    loaded = TaskManager(include_path=str(folder), include_defaults=False).load_task_or_group(names)
    assert sorted(loaded) == sorted(names)
    rows = (folder / f"{names[0]}.jsonl").read_text().splitlines()
    assert len(rows) == 5 and json.loads(rows[0])["answer"].endswith(" .")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{n}.jsonl" for n in names] + [f"{n}.yaml" for n in names]
    )
    assert Path(folder).is_dir()
