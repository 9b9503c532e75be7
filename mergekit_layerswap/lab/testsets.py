"""The lab's test sets, written as ordinary lm-eval tasks (YAML + JSONL) into one folder.

Three tasks, each in the format of lm-eval's `mgsm_native_cot_*` (prompt words, stop
sequences, the `strict-match` and `flexible-extract` filters, exact match):
- `lab_math_<lang>`: word problems in the target language — what layer swapping should help;
- `lab_math_en`: the same kinds of problems in English — the control (the math expert's own);
- `lab_read_<lang>`: questions answered in the text, in the target language — the language
  expert's own domain (no arithmetic).
Problems are drawn with a test seed of their own; every draw that a training sampler could
produce is excluded there (`TestSet.excludes`), so no training set contains a test item.
The folder reruns with plain lm-eval: `lm_eval --model hf --model_args pretrained=MODEL
--include_path FOLDER --tasks lab --gen_kwargs max_gen_toks=N` (the lab's N: 48).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from mergekit_layerswap.lab import language

GROUP = "lab"
#: The MGSM native-CoT answer filters (lm-eval 0.4.13's), with the language's answer phrase.
_FLEXIBLE = {
    "name": "flexible-extract",
    "filter": [
        {"function": "regex", "group_select": -1, "regex_pattern": r"(-?[$0-9.,]{2,})|(-?[0-9]+)"},
        {"function": "take_first"},
    ],
}


@dataclass(frozen=True)
class TestSet:
    """The lab's test items per task name, and the problem draws training must avoid."""

    items: dict[str, list[language.Problem]]

    @property
    def excludes(self) -> frozenset[tuple]:
        return frozenset(p.key for items in self.items.values() for p in items)


def task_names(target: str) -> tuple[str, str, str]:
    """(target math, English math, target reading): the lab's three columns."""
    return f"lab_math_{target}", "lab_math_en", f"lab_read_{target}"


def build(target: str, n: int, seed: int) -> TestSet:
    """`n` distinct problems per task (kinds in turn), drawn with `seed`; the math tasks
    share no draw, so the target-language problems are not translations of the control's."""
    rng = random.Random(seed)
    seen: set[tuple] = set()
    items: dict[str, list[language.Problem]] = {}
    math_target, math_en, read_target = task_names(target)
    for name, lang in ((math_target, target), (math_en, "en")):
        items[name] = []
        while len(items[name]) < n:
            item = language.problem(rng, lang, language.KINDS[len(items[name]) % 4])
            if item.key not in seen:
                seen.add(item.key)
                items[name].append(item)
    items[read_target] = []
    while len(items[read_target]) < n:
        item = language.reading_item(rng, target)
        if item.key not in seen:
            seen.add(item.key)
            items[read_target].append(item)
    return TestSet(items)


def _config(name: str, lang: str, data: Path, max_gen_toks: int) -> dict:
    question, answer, final = language.PROMPT[lang]
    stops = [*sorted({p[0] for p in language.PROMPT.values()}), "</s>"]
    return {
        "task": name,
        "tag": GROUP,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": f"{question} {{{{question}}}}\n{answer}",
        "doc_to_target": "{{answer_number|string}}",
        "target_delimiter": " ",
        "generation_kwargs": {"until": stops, "do_sample": False, "max_gen_toks": max_gen_toks},
        "filter_list": [
            {
                "name": "strict-match",
                "filter": [
                    {"function": "regex", "regex_pattern": final + r" (\-?[0-9\.\,]+)"},
                    {"function": "take_first"},
                ],
            },
            _FLEXIBLE,
        ],
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_case": True,
                "ignore_punctuation": True,
            }
        ],
        "metadata": {"version": 1.0},
    }


def write(tests: TestSet, target: str, folder: Path, max_gen_toks: int = 48) -> Path:
    """Write every task's JSONL and YAML (and nothing else) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, items in tests.items.items():
        lang = "en" if name.endswith("_en") else target
        data = folder / f"{name}.jsonl"
        rows = [
            {
                "question": p.question,
                "answer": p.answer,
                "answer_number": p.answer_number,
                "kind": p.kind,
            }
            for p in items
        ]
        data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        config = _config(name, lang, data, max_gen_toks)
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def summary(tests: TestSet) -> dict:
    """Counts per task and kind, and what copying the question's first number scores (for
    lab.json and lab.md)."""
    return {
        name: {
            "n": len(items),
            "kinds": sorted({p.kind for p in items}),
            "copy_floor": language.copy_floor(items),
            "first": asdict(items[0]),
        }
        for name, items in tests.items.items()
    }
