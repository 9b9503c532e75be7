"""Model cards of layer_swap merges, and publishing them (dry run, broken folders, upload)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import layer_swap
from hub_standin import HubStandIn
from huggingface_hub import ModelCard

from mergekit_layerswap import card, cli, complete, swap

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def merged(make_model, tmp_path_factory) -> Path:
    """A bottom/top swap with transitions, merged by the stock mergekit-yaml."""
    host, donor = make_model("llama", 8, seed=1), make_model("llama", 8, seed=2)
    folder = tmp_path_factory.mktemp("merged")
    config = folder / "swap.yml"
    config.write_text(
        yaml.safe_dump(layer_swap(host, {donor: {"bottom": 2, "top": 1}}, transition=1))
    )
    subprocess.run(
        [str(BIN / "mergekit-yaml"), str(config), str(folder / "model")],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return folder / "model"


def table_rows(text: str) -> list[tuple[str, str]]:
    section = text.split("## Layer map")[1].split("\n\n")[1]
    return [
        tuple(c.strip() for c in line.strip("|").split("|")) for line in section.splitlines()[2:]
    ]


def test_stock_mergekit_yaml_writes_our_card(merged):
    text = (merged / "README.md").read_text()
    parsed = ModelCard.load(merged / "README.md")
    assert parsed.data.library_name == "transformers"
    assert parsed.data.tags == ["merge", "mergekit", "layer-swap"]
    raw = yaml.safe_load((merged / "mergekit_config.yml").read_text())
    host, donor = f"`{raw['base_model']}` (host)", f"`{raw['models'][1]['model']}`"
    assert table_rows(text) == [
        ("embeddings", donor),
        ("0–1", donor),
        ("2", f"0.5 × {donor} + 0.5 × {host}"),
        ("3–5", host),
        ("6", f"0.5 × {donor} + 0.5 × {host}"),
        ("7", donor),
        ("final norm + lm_head", donor),
    ]
    assert "mergekit-yaml mergekit_config.yml OUT" in text and "bandarkar2025" in text


def test_layer_map_of_a_middle_swap_is_compact():
    config = swap.SwapConfig("native", (swap.Claim("reasoner", layers="13-22"),), transition=2)
    rows = card.layer_map(config, 36)
    assert rows[0] == ("embeddings", "`native` (host)")
    assert ("13–22", "`reasoner`") in rows and ("0–10", "`native` (host)") in rows
    assert ("11", "0.333 × `reasoner` + 0.667 × `native` (host)") in rows
    assert rows[-1] == ("final norm + lm_head", "`native` (host)")
    assert len(rows) == 9  # 36 layers in 7 rows


@pytest.fixture(scope="module")
def results(merged, mgsm_hf_dir, tmp_path_factory) -> Path:
    """`eval --limit 2` of the merged model: a partial evaluation."""
    results = tmp_path_factory.mktemp("results")
    code = cli.main(
        [
            "eval",
            str(merged),
            "--languages",
            "sw,en",
            "--limit",
            "2",
            "--max-gen-toks",
            "16",
            "--data-dir",
            str(mgsm_hf_dir),
            "--output",
            str(results),
        ]
    )
    assert code == 0
    return results


def test_card_with_scores_matches_results(merged, results, capsys):
    assert cli.main(["card", str(merged), "--results", str(results / "results.json")]) == 0
    capsys.readouterr()
    data = ModelCard.load(merged / "README.md").data
    expected = json.loads((results / "results.json").read_text())["models"][0]["columns"]
    assert data.language == ["sw", "en"]
    assert {r.dataset_config: r.metric_value for r in data.eval_results} == {
        code: expected[code]["score"] for code in ("sw", "en")
    }
    assert {r.dataset_type for r in data.eval_results} == {"juletxara/mgsm"}
    text = (merged / "README.md").read_text()
    assert "## MGSM" in text and "--languages sw,en --mode native_cot" in text
    # a --limit evaluation says it is partial, in the text and in the model-index
    assert "**Partial evaluation** (partial: first 2 problems per language" in text
    assert {r.dataset_split for r in data.eval_results} == {"test[:2]"}
    assert all("partial: first 2 problems" in r.metric_name for r in data.eval_results)


def test_card_refuses_scores_of_another_model(merged, results, tmp_path, capsys):
    """`card --results`: scores attach only to the model they were computed for (by
    fingerprint), never to another folder because results.json holds a single model."""
    moved, other = tmp_path / "moved", tmp_path / "other"
    shutil.copytree(merged, moved)
    shutil.copytree(merged, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "rope_theta": 1.0}))
    assert cli.main(["card", str(moved), "--results", str(results)]) == 0  # same files
    assert ModelCard.load(moved / "README.md").data.eval_results
    card_before = (other / "README.md").read_bytes()
    assert cli.main(["card", str(other), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert "score this folder" in err and len(err.strip().splitlines()) == 1
    assert (other / "README.md").read_bytes() == card_before


def broken_copies(merged: Path, root: Path) -> dict[str, tuple[Path, str]]:
    def copy(name: str) -> Path:
        target = root / name
        shutil.copytree(merged, target)
        return target

    cases = {}
    folder = copy("no-config")
    (folder / "config.json").unlink()
    cases["no-config"] = (folder, "config.json is missing")
    folder = copy("missing-shard")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (folder / complete.INDEX).write_text(json.dumps(index))
    cases["missing-shard"] = (folder, "model-00002-of-00002.safetensors is listed in")
    folder = copy("truncated")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (folder, "model.safetensors: truncated")
    folder = copy("bad-header")
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    cases["bad-header"] = (folder, "model.safetensors: not a readable safetensors file")
    folder = copy("no-tokenizer")
    (folder / "tokenizer.json").unlink()
    cases["no-tokenizer"] = (folder, "no tokenizer")
    folder = copy("truncated-tokenizer")
    text = (folder / "tokenizer.json").read_text()
    (folder / "tokenizer.json").write_text(text[: len(text) // 2])
    cases["truncated-tokenizer"] = (folder, "tokenizer.json does not parse as JSON")
    folder = copy("broken-sentencepiece")
    (folder / "tokenizer.json").rename(folder / "tokenizer.model")  # not a sentencepiece file
    cases["broken-sentencepiece"] = (folder, "tokenizer.model does not load")
    folder = copy("no-card")
    (folder / "README.md").unlink()
    cases["no-card"] = (folder, "README.md (the model card) is missing")
    return cases


def test_push_dry_run_lists_a_complete_folder_and_refuses_broken_ones(merged, tmp_path, capsys):
    assert cli.main(["push", str(merged), "--repo-id", "me/swap", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "README.md" in out and "dry run: would upload" in out
    # every file's size in B/KB/MB, as on disk (tiny files once all read "0.0 MB")
    for line in out.splitlines()[:-1]:
        number, unit, name = line.split()
        size = (merged / name).stat().st_size
        assert float(number) * {"B": 1, "KB": 1e3, "MB": 1e6}[unit] == pytest.approx(size, rel=0.06)
    for name, (folder, message) in broken_copies(merged, tmp_path).items():
        code = cli.main(["push", str(folder), "--repo-id", "me/swap", "--dry-run"])
        err = capsys.readouterr().err
        assert code == 2 and message in err, (name, err)


def test_push_refuses_a_bad_repo_id_and_reports_no_network_in_one_line(merged, capsys):
    """push: an id the Hub would refuse (its own validation) is exit 2 before the dry run
    says 'would upload'; an unreachable Hub (this machine has no network) is exit 1."""
    for repo_id in ("bad id/swap", "me/swap..x", "a/b/c", "swap"):
        assert cli.main(["push", str(merged), "--repo-id", repo_id, "--dry-run"]) == 2
        captured = capsys.readouterr()
        assert "--repo-id" in captured.err and "would upload" not in captured.out
        assert len(captured.err.strip().splitlines()) == 1
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_x"}
    env.pop("HF_ENDPOINT", None)
    command = [str(BIN / "mergekit-layerswap"), "push", str(merged), "--repo-id", "me/swap"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.startswith("mergekit-layerswap push: error: could not upload")
    assert len(done.stderr.strip().splitlines()) == 1 and "hf_x" not in done.stderr


def test_upload_reaches_the_hub_without_leaking_the_token(merged):
    standin = HubStandIn()
    secret = "hf_" + "s3cr3t" * 6
    env = {**os.environ, "HF_ENDPOINT": standin.endpoint, "HF_TOKEN": secret, "HF_HUB_OFFLINE": "0"}
    try:
        result = subprocess.run(
            [
                str(BIN / "mergekit-layerswap"),
                "push",
                str(merged),
                "--repo-id",
                "me/swap",
                "--private",
                "--revision",
                "exp",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        standin.close()
    assert result.returncode == 0, result.stderr[-2000:]
    assert secret not in result.stdout + result.stderr
    assert standin.repos["me/swap"]["visibility"] == "private"
    assert standin.branches == [("me/swap", "exp")]
    sent = {path: data for (repo, path), data in standin.files.items() if repo == "me/swap"}
    local = {p.name: p.read_bytes() for p in merged.iterdir() if p.is_file()}
    assert sent == local
    assert all(secret not in data.decode(errors="ignore") for data in sent.values())
    assert any(
        secret in h.get("authorization", h.get("Authorization", "")) for h in standin.headers_seen
    )


def test_suite_push_section_publishes_chosen_merges_once(make_model, mgsm_hf_dir, tmp_path):
    host, donor = make_model("llama", 8, seed=1), make_model("llama", 8, seed=2)
    suite = {
        "models": {"math": str(host), "sw": str(donor)},
        "merges": [
            {
                "name": "swap",
                "merge_method": "layer_swap",
                "base_model": "math",
                "models": [{"model": "math"}, {"model": "sw", "parameters": {"top": 2}}],
            }
        ],
        "evaluation": {
            "languages": ["sw"],
            "limit": 1,
            "max_gen_toks": 8,
            "data_dir": str(mgsm_hf_dir),
        },
        "push": {"namespace": "me", "merges": ["swap"]},
        "keep_weights": False,
    }
    path = tmp_path / "suite.yml"
    path.write_text(yaml.safe_dump(suite))
    standin = HubStandIn()
    env = {**os.environ, "HF_ENDPOINT": standin.endpoint, "HF_TOKEN": "hf_x", "HF_HUB_OFFLINE": "0"}
    command = [str(BIN / "mergekit-layerswap"), "suite", str(path), str(tmp_path / "out")]
    try:
        first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    finally:
        standin.close()
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:]
    assert "push me/swap\n" in first.stdout and "push me/swap: already uploaded" in second.stdout
    assert standin.repos["me/swap"]["visibility"] == "private"
    sent = {path for repo, path in standin.files if repo == "me/swap"}
    assert {"README.md", "model.safetensors", "config.json", "mergekit_config.yml"} <= sent
    assert not list((tmp_path / "out" / "merges" / "swap").glob("*.safetensors"))
