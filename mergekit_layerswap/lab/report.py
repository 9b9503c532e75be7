"""The lab's results across seeds: `lab.json` (programs), `lab.md` (people), `lab.png` (bars).

Per model and task: the mean and the sample standard deviation over seeds of each filter's
exact match; each seed's preconditions (`preconditions`) and the verdict (`verdict`), which
compares the designated layer swap (the one `analyze` suggested, chosen before any score was
seen) with its rivals, both experts and the soup, on target-language math. The sweep's best
variant is shown too, marked as chosen on the test set. `lab.md` explains every name it
uses and ends with the commands that score the designated swap and its rivals again.
"""

from __future__ import annotations

import json
import shlex
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from mergekit_layerswap.evaluate.settings import DEFAULT_HF_BATCH_SIZE, EvalSettings, eval_command
from mergekit_layerswap.files import write_atomic
from mergekit_layerswap.lab import language, testsets
from mergekit_layerswap.lab.preconditions import MEANINGS, by_name
from mergekit_layerswap.lab.settings import LabSettings
from mergekit_layerswap.lab.verdict import RIVALS, SWAP
from mergekit_layerswap.suite.leaderboard import Bar, picture, png

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FILTERS = (("flexible-extract", "score"), ("strict-match", "other_score"))
LANGUAGE_NAMES = {"en": "English", "sw": "Swahili"}
PICTURE = "lab.png"


def _stats(values: list[float]) -> dict[str, float]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std}


def _percent(stats: dict[str, float], n: int, form: str = ".1f") -> str:
    """A mean in %, with ± its std when there are seeds to spread over (`n` > 1)."""
    text = format(100 * stats["mean"], form)
    return f"{text} ± {100 * stats['std']:.1f}" if n > 1 else text


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def summarize(seeds: dict[int, dict], columns: list[str]) -> dict[str, dict]:
    """{model: {column: {filter: {mean, std}}}} over the seeds every model has."""
    names = sorted(set.intersection(*(set(s["models"]) for s in seeds.values())))
    summary = {}
    for name in names:
        summary[name] = {
            column: {
                label: _stats(
                    [s["models"][name]["columns"][column][key] or 0.0 for s in seeds.values()]
                )
                for label, key in FILTERS
            }
            for column in columns
        }
    return summary


def best_sweep(summary: dict, target_column: str) -> str | None:
    """The sweep variant with the highest mean target score (selected on the test set)."""
    variants = [n for n in summary if n.startswith("swap-")]
    if not variants:
        return None
    return max(variants, key=lambda n: summary[n][target_column]["flexible-extract"]["mean"])


def swap_words(swap: dict) -> str:
    """A designated swap in words, e.g. `bottom 1, top 1, transition 0`."""
    bottom, top = swap["donor"].get("bottom", 0), swap["donor"].get("top", 0)
    return f"bottom {bottom}, top {top}, transition {swap['transition']}"


def _role(name: str, best: str | None) -> str:
    """What a model is in the verdict, as a label suffix."""
    if name == SWAP:
        return " (designated)"
    if name in RIVALS:
        return " (rival)"
    if name == best:
        return " (best sweep variant)"
    return ""


def _ranked(data: dict) -> list[str]:
    """Model names, best first on the target task (the first column)."""
    summary, target = data["summary"], data["columns"][0]
    return sorted(summary, key=lambda n: (-summary[n][target]["flexible-extract"]["mean"], n))


#: The settings that name a design in lab.md (their descriptions are its glossary).
DESIGN = ("size", "tokenizer", "experts")


def _design(settings: dict) -> str:
    """e.g. `size tiny, tokenizer word, experts full` (lab.json files from before a setting
    existed lack it: its default)."""
    defaults = LabSettings.model_fields
    return ", ".join(f"{k} {settings.get(k, defaults[k].default)}" for k in DESIGN)


def _glossary(data: dict) -> list[str]:
    settings, columns = data["settings"], data["columns"]
    target = LANGUAGE_NAMES[settings["language"]]
    math_target, math_en, read_target = testsets.task_names(settings["language"])
    about = {
        math_target: f"word problems in {target}, what layer swapping should help (the "
        "verdict is taken on it)",
        math_en: "the same kinds of word problems in English, the control (the math "
        "expert's own domain)",
        read_target: f"questions answered in a {target} text, no arithmetic (the language "
        "expert's own domain)",
    }
    lines = ["## What the names mean", ""]
    for column in columns:
        tests = data["tests"][column]
        floor = tests.get("copy_floor")  # lab.json files from before it was recorded lack it
        copying = (
            f"; copying the question's first number scores {100 * floor:.1f} %"
            if (floor is not None)
            else ""
        )
        lines.append(f"- **{column}**: {about[column]}; {tests['n']} problems{copying}.")
    lines += [
        "- **math**, **lang**: the math expert (the base fine-tuned on English word problems) "
        f"and the language expert (the base fine-tuned on {target} text, no math); **base**: "
        "the model both were fine-tuned from, pretrained on both languages.",
        f"- **{SWAP}**, the **designated** swap: the math expert with the language expert's "
        "bottom and top layers, as `analyze` suggested from the weights alone (where each "
        "expert moved away from the base), before any score was seen.",
        "- **fallback**: `analyze` suggested no swap (no outer layer qualified), so the "
        "smallest one was used: bottom 1, top 1, transition 0.",
        "- **rivals**: math, lang and soup; the **margin** is the designated swap's score minus "
        "the best rival's, per seed. The **verdict** is *effect* when the mean margin over "
        "seeds is above twice its standard error, *no effect* when it is not, and *cannot "
        "judge* when a precondition fails on most seeds or there is one seed.",
        *(f"- **{name}**: {meaning}." for name, meaning in MEANINGS.items()),
        *(f"- **{k}** (design): {LabSettings.model_fields[k].description}." for k in DESIGN),
        "- **soup**: the plain 0.5/0.5 average of both experts; **task-arithmetic**, **ties**, "
        "**dare-ties**: both experts' changes from the base added to it (TIES and DARE-TIES "
        "keep half of the entries of each change, density 0.5).",
        "- **sweep variants**, e.g. swap-b1-t2-tr1: the language expert's bottom 1 and top 2 "
        "layers in the math expert, with 1 transition layer; `bN` = bottom N layers, `tN` = "
        "top N (no `t`: top 0), `trN` = N transition layers (blended between the two experts "
        "beside each swapped block; tr0: none). The **best sweep variant** is picked on the "
        "test set itself, so its score flatters it.",
        "- **flexible-extract**: the last number of the answer counts; **strict-match**: only "
        f'the number after "{language.PROMPT["en"][2]}" (English) or '
        f'"{language.PROMPT[settings["language"]][2]}" ({target}).',
    ]
    return lines


def _preconditions(data: dict) -> list[str]:
    """The preconditions table: value (threshold) and pass/fail per seed."""
    seeds = data["seeds"]
    lines = ["Preconditions (value, threshold, pass per seed; measured apart from the tests):", ""]
    lines += ["| precondition | " + " | ".join(f"seed {seed}" for seed in seeds) + " |"]
    lines += ["|---|" + "---|" * len(seeds)]
    for name in MEANINGS:
        cells = []
        for results in seeds.values():
            found = [r for r in results.get("preconditions", []) if r["name"] == name]
            cells += [
                f"{r['value']:.2f} ({r['threshold']:.2f}) {'pass' if r['passed'] else 'FAIL'}"
                for r in found
            ] or ["-"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _folder(out: Path, seed: str, name: str, kind: str) -> str:
    """Where the lab keeps a seed's model: inputs under models/, merges under suite/merges/."""
    root = out / f"seed-{seed}"
    return str(root / "models" / name if kind == "input" else root / "suite" / "merges" / name)


def commands(data: dict, out: Path) -> list[str]:
    """Per seed: `mergekit-layerswap eval` of the designated swap and its rivals, and plain
    `lm_eval` of the designated swap, with the lab's evaluation settings (absolute paths)."""
    settings, columns = data["settings"], ",".join(data["columns"])
    out = out.resolve()
    folder, tokens = str(out / "tasks"), str(settings["max_gen_toks"])
    lines = []
    for seed, results in data["seeds"].items():
        models = {
            name: _folder(out, seed, name, results["models"][name]["kind"])
            for name in (SWAP, *RIVALS)
        }
        device = ["--device", settings["device"]]
        rescored = str(out / "rescored" / f"seed-{seed}")
        lm_eval = ["lm_eval", "--model", "hf", "--model_args", f"pretrained={models[SWAP]}"]
        lm_eval += ["--include_path", folder, "--tasks", columns]
        lm_eval += ["--gen_kwargs", f"max_gen_toks={tokens}"]
        lm_eval += ["--batch_size", str(DEFAULT_HF_BATCH_SIZE), *device]
        scoring = EvalSettings(
            tasks=columns, include_path=folder, max_gen_toks=tokens, device=settings["device"]
        )
        ours = f"{eval_command(list(models.values()), scoring, rescored)} {shlex.join(device)}"
        lines += [ours, shlex.join(lm_eval)]
    return lines


def markdown(data: dict, out: Path) -> str:
    """lab.md: readable alone (`out`: the lab's folder, for the commands' absolute paths)."""
    columns, summary, settings = data["columns"], data["summary"], data["settings"]
    n = settings["seeds"]
    best = best_sweep(summary, columns[0])
    spread = "mean ± std over seeds, " if n > 1 else ""
    lines = [
        "# Layer swapping in miniature",
        "",
        f"{_seeds(n)}; design: {_design(settings)}; target language "
        f"{LANGUAGE_NAMES[settings['language']]} ({settings['language']}). Exact match in %, "
        f"{spread}flexible-extract (strict-match in brackets); best first on {columns[0]}.",
        "",
        f"![Scores per model, one panel per task; the designated swap shaded]({PICTURE})",
        "",
        "| model | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name in _ranked(data):
        cells = []
        for column in columns:
            scores = summary[name][column]
            strict = 100 * scores["strict-match"]["mean"]
            cells.append(f"{_percent(scores['flexible-extract'], n)} [{strict:.1f}]")
        lines.append(f"| {name}{_role(name, best)} | " + " | ".join(cells) + " |")
    lines += ["", "Designated swap per seed:", ""]
    for seed, results in data["seeds"].items():
        swap = results["swap"]
        how = "fallback" if swap["source"] == "fallback" else "suggested by analyze"
        lines.append(f"- seed {seed}: {swap_words(swap)} ({how})")
    lines += ["", *_preconditions(data), ""]
    lines += [f"**Verdict.** {data['verdict']['text']}", "", *_glossary(data), ""]
    lines += [
        "## Scoring again",
        "",
        "Per seed, the designated swap and its rivals with `mergekit-layerswap eval`, and the "
        "designated swap with plain lm-eval, on the lab's tasks and settings (sweep variants "
        "were built in memory and are not on disk):",
        "",
        "```bash",
        *commands(data, out),
        "```",
    ]
    return "\n".join(lines) + "\n"


def plot(data: dict) -> Figure:
    """lab.png: one panel per task; the designated swap (shaded) and its rivals first, then
    the other baselines and the sweep variants, each group best first on the target task."""
    columns, summary = data["columns"], data["summary"]
    n = data["settings"]["seeds"]
    best = best_sweep(summary, columns[0])
    headings = ("designated swap and its rivals", "other baselines", "sweep variants")
    groups: dict[str, list[Bar]] = {heading: [] for heading in headings}
    for name in _ranked(data):
        stats = {c: summary[name][c]["flexible-extract"] for c in columns}
        if name in (SWAP, *RIVALS):
            heading = headings[0]
        else:
            heading = headings[2] if name.startswith("swap-") else headings[1]
        groups[heading].append(
            Bar(
                name + _role(name, best),
                {c: 100 * s["mean"] for c, s in stats.items()},
                {c: 100 * s["std"] for c, s in stats.items()},
                marked=name == SWAP,
            )
        )
    shown = ", mean ± std" if n > 1 else ""
    title = f"Layer swapping in miniature: exact match (%), {_seeds(n)}{shown}"
    failed = data["verdict"]["reason"] if data["verdict"]["kind"] == "cannot judge" else ""
    note = (
        f"flexible-extract; best first on {columns[0]} within each group. Rivals: the math "
        "and language experts and their soup. The best sweep variant is picked on the test set."
        f"\nVerdict: {data['verdict']['kind']}" + (f" ({failed})." if failed else ".")
    )
    return picture(groups, columns, title, "\n".join([note, *_precondition_lines(data)]))


def _precondition_lines(data: dict) -> list[str]:
    """One line per precondition for lab.png: its value on each seed, pass or FAIL, and the
    threshold."""
    lines = ["Preconditions, per seed (value pass/FAIL; threshold):"]
    per_seed = (s.get("preconditions", []) for s in data["seeds"].values())
    for name, found in by_name(per_seed).items():
        values = ", ".join(f"{r['value']:.2f} {'pass' if r['passed'] else 'FAIL'}" for r in found)
        thresholds = [f"{r['threshold']:.2f}" for r in found]  # per seed, in order
        shown = thresholds[:1] if len(set(thresholds)) == 1 else thresholds
        lines.append(f"{name}: {values} (threshold {', '.join(shown)})")
    return lines


def write(data: dict, out: Path) -> list[Path]:
    """lab.json, lab.md and lab.png into `out`."""
    paths = [out / "lab.json", out / "lab.md", out / PICTURE]
    write_atomic(paths[0], json.dumps(data, indent=2, sort_keys=True) + "\n")
    write_atomic(paths[1], markdown(data, out))
    write_atomic(paths[2], png(plot(data)))
    return paths
