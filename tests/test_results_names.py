"""Files written before the results' names were task-neutral (`languages`, `exact_match`,
`exact_match_stderr`, `other_exact_match`, `other_exact_match_stderr`) read with the same
values; what is written again uses `columns`, `score`, `stderr`, `other_score`, `other_stderr`.

`data/old-names` was written by the code before the rename: an MGSM `results.json`, a suite's
`results/swap.json` (an lm-eval task) and an evaluation cache entry.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from mergekit_layerswap.evaluate import ColumnResult, read_results, render_markdown
from mergekit_layerswap.evaluate.results import columns_json, write_results
from mergekit_layerswap.evaluate.run import ResultCache
from mergekit_layerswap.suite import leaderboard
from mergekit_layerswap.suite.store import Store

OLD = Path(__file__).parent / "data" / "old-names"
SW = ColumnResult("mgsm_native_cot_sw", 2, 0.5, 0.5, "strict-match", 0.0, 0.0)
EN = ColumnResult("mgsm_native_cot_en", 2, 1.0, None, "strict-match", 0.5, None)


def test_old_results_json_reads_the_same_and_is_written_with_the_new_names(tmp_path):
    results = read_results(OLD / "results.json")
    [model] = results.models
    assert model.columns == {"sw": SW, "en": EN} and list(model.columns) == ["sw", "en"]
    assert model.average == 0.75
    assert "| org/m | 50.0 | 100.0 | 75.0 |" in render_markdown(results)

    write_results(results, tmp_path)
    old = json.loads((OLD / "results.json").read_text())
    new = json.loads((tmp_path / "results.json").read_text())
    assert {k: v for k, v in new.items() if k != "models"} == {
        k: v for k, v in old.items() if k != "models"
    }
    [entry] = new["models"]
    assert list(entry) == ["identity", "average", "columns"]
    assert entry["columns"]["en"] == {
        "task": "mgsm_native_cot_en",
        "n": 2,
        "score": 1.0,
        "stderr": None,
        "other_filter": "strict-match",
        "other_score": 0.5,
        "other_stderr": None,
        "metric": "exact_match",
        "filter": "flexible-extract",
        "dataset": None,
    }
    assert read_results(tmp_path) == results


def test_old_suite_record_and_cache_entry_read_the_same():
    record = Store(OLD / "suite").result("swap", "k" * 64, "e" * 64)
    words = ColumnResult("lab_words", 2, 0.5, 0.5, None, None, None, filter="first", dataset="json")
    assert columns_json(record) == {"lab_words": asdict(words)}
    assert leaderboard.rows([record], ["lab_words"]) == [
        {"name": "swap", "kind": "merge", "method": "layer_swap", "scores": {"lab_words": 0.5}}
    ]
    assert ResultCache(OLD / "cache").load({"model": "f" * 64, "language": "sw"}) == SW
