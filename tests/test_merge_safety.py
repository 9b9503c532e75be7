"""`mergekit-layerswap merge` leaves a complete, rightly named model or nothing (issue 12).

Each test names the defect class it covers: incomplete folders renamed into place (a full
disk), cards naming the hidden partial folder, output folders decided after the work, stale
partials of killed merges, LoRA donors.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import layer_swap, make_adapter, tensors
from huggingface_hub import ModelCard

from mergekit_layerswap import cli

pytestmark = pytest.mark.slow
MERGEKIT_YAML = Path(sys.executable).with_name("mergekit-yaml")
PAGE = 4096


def write_config(raw: dict, folder: Path, name: str = "swap.yml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(raw))
    return path


def merge(config: Path, out: Path | str, capsys) -> tuple[int, str]:
    """Run `mergekit-layerswap merge` in process: (exit code, stderr)."""
    code = cli.main(["merge", str(config), str(out), "--quiet"])
    return code, capsys.readouterr().err


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def swap_config(make_model, tmp_path) -> Path:
    host, donor = make_model("llama", 8, seed=1), make_model("llama", 8, seed=2)
    return write_config(layer_swap(host, {donor: {"bottom": 2, "top": 1}}, transition=1), tmp_path)


@pytest.fixture
def small_disk(tmp_path):
    """mount(bytes) -> a fresh tmpfs of that size (needs root; skipped where impossible)."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True)


def test_full_disk_during_tokenizer_copy_is_never_renamed_into_place(
    make_model, tmp_path, small_disk, capsys
):
    """Complete or not renamed into place: mergekit logs a failed tokenizer copy as 'the
    merge was still successful'; the folder must not appear under its final name."""
    host = tmp_path / "host"
    shutil.copytree(make_model("llama", 8, seed=1), host)
    tokenizer = json.loads((host / "tokenizer.json").read_text())
    padded = json.dumps(tokenizer, indent=2) + " " * (64 * PAGE)  # 64+ pages: fails mid-copy
    (host / "tokenizer.json").write_text(padded)
    config = write_config(layer_swap(host, {make_model("llama", 8, seed=2): {"top": 2}}), tmp_path)
    assert merge(config, tmp_path / "reference", capsys)[0] == 0
    sizes = {p.name: p.stat().st_size for p in (tmp_path / "reference").iterdir()}
    pages = sum(-(-size // PAGE) for name, size in sizes.items() if name != "tokenizer.json")
    disk = small_disk((pages + 32) * PAGE)  # everything else, and half the tokenizer
    code, err = merge(config, disk / "swap", capsys)
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1 and "disk full" in err
    assert not (disk / "swap").exists() and os.listdir(disk) == []
    tiny = small_disk(8 * PAGE)  # disk full while the weights are written
    code, err = merge(config, tiny / "swap", capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "disk full" in err
    assert os.listdir(tiny) == []


def test_card_names_the_final_folder_and_reruns_are_byte_identical(swap_config, tmp_path, capsys):
    """Card names: not the hidden `.NAME.partial-PID` folder; same inputs, same bytes."""
    first, second = tmp_path / "a" / "swap", tmp_path / "b" / "swap"
    assert merge(swap_config, first, capsys)[0] == 0
    assert merge(swap_config, second, capsys)[0] == 0
    assert files(first) == files(second)
    card = ModelCard.load(first / "README.md")
    assert card.data.model_name == "swap" and "\n# swap\n" in card.text
    assert "partial" not in (first / "README.md").read_text()


def test_linear_merge_card_names_the_final_folder(make_model, tmp_path, capsys):
    """Card names, for mergekit's own card (methods other than layer_swap)."""
    models = [make_model("llama", 8, seed=s) for s in (1, 2)]
    raw = {
        "merge_method": "linear",
        "dtype": "bfloat16",
        "models": [{"model": str(m), "parameters": {"weight": 0.5}} for m in models],
    }
    assert merge(write_config(raw, tmp_path), tmp_path / "soup", capsys)[0] == 0
    text = (tmp_path / "soup" / "README.md").read_text()
    assert "\n# soup\n" in text and "partial" not in text


def test_stock_mergekit_yaml_with_a_trailing_slash_names_the_card(swap_config, tmp_path):
    """Card names: `mergekit-yaml cfg OUT/` (the README's own form) named the model ''."""
    done = subprocess.run(
        [str(MERGEKIT_YAML), str(swap_config), f"{tmp_path / 'named'}/"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    card = ModelCard.load(tmp_path / "named" / "README.md")
    assert card.data.model_name == "named" and "\n# named\n" in card.text


def test_output_folder_is_decided_before_any_work(swap_config, tmp_path, capsys):
    """Output folder decided before work: unrelated files, a symbolic link, a path under a
    file are refused in one line each (exit 2) and nothing is written or deleted."""
    crowded = tmp_path / "crowded"
    crowded.mkdir()
    (crowded / "notes.txt").write_text("mine")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "file").write_text("a file")
    before = sorted(p.name for p in tmp_path.iterdir())
    for out, message in [
        (crowded, "is not empty (holds notes.txt)"),
        (tmp_path / "link", "is a symbolic link"),
        (tmp_path / "file" / "sub", "is a file"),
    ]:
        code, err = merge(swap_config, out, capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (crowded / "notes.txt").read_text() == "mine" and not any((tmp_path / "real").iterdir())
    raw = yaml.safe_load(swap_config.read_text())
    raw["parameters"]["transitoin"] = 1
    code, err = merge(write_config(raw, tmp_path, "typo.yml"), crowded, capsys)
    assert code == 2 and "transitoin" in err and "is not empty" in err  # all problems at once


def test_stale_partials_of_dead_merges_are_removed(swap_config, tmp_path, capsys):
    """Stale partials: only `.NAME.partial-PID` folders of this name whose process is gone."""
    finished = subprocess.Popen(["true"])
    finished.wait()
    running = subprocess.Popen(["sleep", "120"])
    try:
        keep = [
            f".swap.partial-{running.pid}",
            f".other.partial-{finished.pid}",
            ".swap.partial-x1",
            f".swap.partial-{finished.pid}0.bak",
        ]
        for name in [f".swap.partial-{finished.pid}", *keep]:
            (tmp_path / name).mkdir()
            (tmp_path / name / "model.safetensors").write_bytes(b"left behind")
        assert merge(swap_config, tmp_path / "swap", capsys)[0] == 0
        hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
        assert hidden == sorted(keep)
    finally:
        running.kill()
        running.wait()


@pytest.mark.parametrize("transition", [0, 1])
def test_lora_donor_merges_like_stock_mergekit_yaml(make_model, tmp_path, capsys, transition):
    """LoRA donors (`model+adapter`): merged through a cache inside the partial folder that
    is gone afterwards; tensors bit for bit those of `mergekit-yaml --lora-merge-cache`."""
    host, donor = make_model("llama", 8, seed=1), make_model("llama", 8, seed=2)
    adapter = make_adapter(donor, tmp_path / "adapter")
    raw = layer_swap(host, {f"{donor}+{adapter}": {"bottom": 2, "top": 2}}, transition=transition)
    config = write_config(raw, tmp_path)
    out = tmp_path / "merged" / "swap"
    code, err = merge(config, out, capsys)
    assert code == 0, err
    assert os.listdir(out.parent) == ["swap"] and not list(out.glob(".*"))
    done = subprocess.run(
        [
            str(MERGEKIT_YAML),
            str(config),
            str(tmp_path / "stock"),
            "--lora-merge-cache",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ours, stock, plain = tensors(out), tensors(tmp_path / "stock"), tensors(donor)
    assert set(ours) == set(stock)
    assert all(torch.equal(ours[name], stock[name]) for name in ours)
    name = "model.layers.0.self_attn.q_proj.weight"  # the adapter changed the donor's layer 0
    assert not torch.equal(ours[name], plain[name].to(ours[name].dtype))
