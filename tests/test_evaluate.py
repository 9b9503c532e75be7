"""`mergekit-layerswap eval`: settings, identity, results files, bad input, and end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

import pytest

from mergekit_layerswap import cli
from mergekit_layerswap.errors import InputError
from mergekit_layerswap.evaluate import (
    LANGUAGES,
    ColumnResult,
    EvalResults,
    EvalSettings,
    ModelIdentity,
    ModelResult,
    parse_languages,
    read_results,
    render_markdown,
)
from mergekit_layerswap.evaluate.identity import fingerprint_dir
from mergekit_layerswap.evaluate.results import write_results

ROOT = Path(__file__).resolve().parents[1]


def test_parse_languages():
    assert parse_languages("all") == LANGUAGES
    assert parse_languages(" sw, te,sw ") == ("sw", "te")
    assert parse_languages(["ja", "en"]) == ("ja", "en")
    for bad in ("sw,xx", "", "SW"):
        with pytest.raises(InputError, match="unknown language code"):
            parse_languages(bad)


def test_settings_defaults_validation_and_json(monkeypatch, tmp_path):
    monkeypatch.delenv("MGSM_DATA_DIR", raising=False)
    settings = EvalSettings()
    assert (settings.languages, settings.mode, settings.num_fewshot) == (LANGUAGES, "native_cot", 0)
    assert (settings.batch_size, settings.max_gen_toks, settings.data_dir) == (64, 256, None)
    assert EvalSettings(backend="vllm").batch_size == "auto"
    monkeypatch.setenv("MGSM_DATA_DIR", str(tmp_path))
    settings = EvalSettings(languages="sw,bn", limit=3, batch_size="auto", device="cuda:1")
    assert settings.data_dir == tmp_path.resolve()
    assert EvalSettings.from_json(json.loads(json.dumps(settings.to_json()))) == settings
    assert EvalSettings(data_dir=None).data_dir is None  # explicit None: the Hub, env or not
    for bad in (
        {"mode": "cot"},
        {"num_fewshot": 9},
        {"limit": 0},
        {"max_gen_toks": 0},
        {"backend": "tgi"},
        {"batch_size": 0},
        {"batch_size": "big"},
        {"device": "tpu"},
    ):
        with pytest.raises(InputError):
            EvalSettings.checked(**bad)


def test_fingerprint_follows_weights_and_config_not_readme(make_model, tmp_path):
    model = shutil.copytree(make_model(), tmp_path / "model")
    before = fingerprint_dir(model)
    (model / "README.md").write_text("# model card with MGSM scores\n")
    assert fingerprint_dir(model) == before
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert fingerprint_dir(model) != before
    assert fingerprint_dir(make_model(seed=1)) != fingerprint_dir(make_model(seed=0))


def _result(task: str, score: float, stderr: float | None) -> ColumnResult:
    return ColumnResult(task, 250, score, stderr, "strict-match", score / 2, None)


def test_results_round_trip_and_table(tmp_path):
    settings = EvalSettings(languages="sw,ja", data_dir=None)
    identity = ModelIdentity("org/m", "hub", "org/m", "abc123", "f" * 64)
    columns = {
        "sw": _result("mgsm_native_cot_sw", 0.25, 0.02),
        "ja": _result("mgsm_native_cot_ja", 0.5, None),
    }
    results = EvalResults(settings, {"lm_eval": "0.4.13"}, [ModelResult(identity, columns)])
    json_path, md_path = write_results(results, tmp_path)
    assert read_results(tmp_path) == results == read_results(json_path)
    data = json.loads(json_path.read_text())
    assert data["models"][0]["average"] == pytest.approx(0.375)
    assert data["models"][0]["columns"]["ja"]["stderr"] is None
    table = md_path.read_text()
    assert table == render_markdown(results)
    assert "| Model | sw | ja | Avg |" in table
    assert "| org/m | 25.0 | 50.0 | 37.5 |" in table  # headline: flexible-extract
    assert "| org/m | 12.5 | 25.0 | 18.8 |" in table  # the other filter


@pytest.fixture
def model(make_model) -> Path:
    return make_model()


#: case: (models, extra arguments, expected message); {model} and {tmp} are filled in.
BAD_INPUTS = {
    "language": (["{model}"], ["--languages", "sw,xx"], "unknown language code 'xx'"),
    "model path": (["{tmp}/nope"], [], "model directory not found: "),
    "data layout": (["{model}"], ["--data-dir", "{tmp}"], "is not laid out like the Hub dataset"),
    "data dir": (["{model}"], ["--data-dir", "{tmp}/none"], "MGSM data directory not found"),
    "vllm": (["{model}"], ["--backend", "vllm"], "the vllm backend needs the vllm package"),
    "output": (["{model}"], ["--output", "{tmp}/a-file/out"], "cannot write to the output"),
    "fewshot": (["{model}"], ["--num-fewshot", "9"], "num_fewshot must be 0..8"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(case, model, mgsm_hf_dir, tmp_path, capsys):
    if case == "vllm" and find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    models, extra, message = BAD_INPUTS[case]
    (tmp_path / "a-file").write_text("")

    def fill(args: list[str]) -> list[str]:
        return [arg.format(model=model, tmp=tmp_path) for arg in args]

    argv = ["eval", *fill(models), "--languages", "sw", "--data-dir", str(mgsm_hf_dir)]
    assert cli.main([*argv, "--output", str(tmp_path / "out"), *fill(extra)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mergekit-layerswap eval: error: "), err
    assert message in err
    if case != "output":
        assert not (tmp_path / "out").exists()  # rejected before anything was loaded or written


def test_help_imports_neither_torch_nor_lm_eval():
    code = (
        "import sys\nfrom mergekit_layerswap import cli\n"
        "try:\n    cli.main(['eval', '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = {'torch', 'lm_eval', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--languages" in done.stdout


def _eval(*argv: str) -> None:
    assert cli.main(["eval", *argv]) == 0


def _read_samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_tiny_llama_end_to_end(make_model, mgsm_hf_dir, tmp_path, capsys):
    model_a, model_b = make_model(seed=0), make_model(seed=1)
    out = tmp_path / "out"
    common = ["--languages", "sw,en", "--limit", "2", "--max-gen-toks", "24"]
    common += ["--data-dir", str(mgsm_hf_dir)]

    # 1. One model, with per-sample logs.
    _eval(str(model_a), *common, "--output", str(out), "--log-samples")
    assert "[1/1] " + str(model_a) + ": evaluating sw,en" in capsys.readouterr().out
    data = json.loads((out / "results.json").read_text())
    assert (data["benchmark"], data["headline"]) == ("MGSM", "exact_match (flexible-extract)")
    assert data["settings"] == {
        "languages": ["sw", "en"],
        "mode": "native_cot",
        "num_fewshot": 0,
        "limit": 2,
        "batch_size": 64,
        "max_gen_toks": 24,
        "backend": "hf",
        "device": None,
        "data_dir": str(mgsm_hf_dir.resolve()),
        "log_samples": True,
    }
    assert data["versions"]["lm_eval"] == version("lm_eval") == "0.4.13"
    assert data["versions"]["transformers"] == version("transformers")
    [entry] = data["models"]
    slug = f"{model_a.name}-{fingerprint_dir(model_a)[:10]}"
    assert entry["identity"] == {
        "model": str(model_a),
        "source": "local",
        "location": str(model_a.resolve()),
        "revision": None,
        "fingerprint": fingerprint_dir(model_a),
    }
    scores = []
    for code in ("sw", "en"):
        result = entry["columns"][code]
        task = f"mgsm_native_cot_{code}"
        assert (result["task"], result["n"], result["other_filter"]) == (task, 2, "strict-match")
        samples = _read_samples(out / "samples" / slug / f"{task}.jsonl")
        for filter_name, key in [("flexible-extract", ""), ("strict-match", "other_")]:
            chosen = [s for s in samples if s["filter"] == filter_name]
            assert [s["doc_id"] for s in chosen] == [0, 1]
            mean = sum(s["exact_match"] for s in chosen) / 2
            assert result[f"{key}score"] == pytest.approx(mean)
            assert isinstance(result[f"{key}stderr"], float)
        assert all(s["arguments"][0][1]["max_gen_toks"] == 24 for s in samples)
        scores.append(result["score"])
    assert entry["average"] == pytest.approx(sum(scores) / 2)
    table = (out / "results.md").read_text()
    first = read_results(out)
    assert "| Model | sw | en | Avg |" in table and f"| {model_a} | " in table
    assert "`--limit 2`: not comparable to full MGSM" in table

    # 2. Again, with a second model: the first is not generated again.
    cache_files = {p: p.stat().st_mtime_ns for p in (out / "cache").iterdir()}
    _eval(str(model_a), str(model_b), *common, "--output", str(out))
    printed = capsys.readouterr().out
    assert f"[1/2] {model_a}: all cached" in printed
    assert f"[2/2] {model_b}: evaluating sw,en" in printed
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in cache_files.items())
    again = read_results(out)
    assert [m.identity.model for m in again.models] == [str(model_a), str(model_b)]
    assert again.models[0] == first.models[0]
    assert again.models[1].identity.fingerprint == fingerprint_dir(model_b)
    assert f"| {model_b} | " in (out / "results.md").read_text()

    # 3. Batch size 1 (fresh cache) asks lm-eval the very same requests (prompts, stop
    # sequences, generation length) as batch size 64; what comes back may differ where padded
    # batches round a near-tie differently (a random bf16 model is all near-ties).
    out_b1 = tmp_path / "batch1"
    _eval(str(model_a), *common, "--output", str(out_b1), "--batch-size", "1", "--log-samples")
    for code in ("sw", "en"):
        name = f"{slug}/mgsm_native_cot_{code}.jsonl"
        batched = _read_samples(out / "samples" / name)
        single = _read_samples(out_b1 / "samples" / name)
        assert [(s["doc_id"], s["filter"], s["arguments"]) for s in single] == [
            (s["doc_id"], s["filter"], s["arguments"]) for s in batched
        ]
    # batch size is not part of the cache key: the same evaluation at batch 1 is cached
    _eval(str(model_a), *common, "--output", str(out), "--batch-size", "1")
    assert f"[1/1] {model_a}: all cached" in capsys.readouterr().out
