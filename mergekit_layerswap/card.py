"""Model cards for layer_swap merges: what was swapped, where it came from, how it scored.

The front matter is built with huggingface_hub's own `ModelCardData`/`EvalResult`, so the
Hub's parser accepts it (`model-index` carries the scores, MGSM or lm-eval tasks, when the
model was scored). The body holds a compact layer map, the sources of the embeddings and
head, the exact mergekit config, the scores table, how to reproduce it, and the citations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mergekit_layerswap import checkpoint, swap, swap_rule, validate
from mergekit_layerswap.complete import CARD_FILE, CONFIG_FILE
from mergekit_layerswap.errors import InputError, first_line
from mergekit_layerswap.evaluate.identity import fingerprint_dir
from mergekit_layerswap.evaluate.mgsm import HEADLINE_FILTER, HUB_DATASET
from mergekit_layerswap.evaluate.results import ColumnResult, EvalResults, ModelResult
from mergekit_layerswap.evaluate.settings import eval_command
from mergekit_layerswap.files import write_atomic
from mergekit_layerswap.layer_map import runs

PAPER = "https://arxiv.org/abs/2410.01335"
CITATION = """@inproceedings{bandarkar2025layerswapping,
  title     = {Layer Swapping for Zero-Shot Cross-Lingual Transfer in Large Language Models},
  author    = {Bandarkar, Lucas and others},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2025},
  url       = {https://arxiv.org/abs/2410.01335}
}"""
#: How to install what the commands below the card's "Reproduce" need.
INSTALL = (
    "mergekit-layerswap is not yet on a package index: install it from a clone of its "
    "repository with `pip install -e .` (this registers `merge_method: layer_swap` with "
    "mergekit), then run these in a copy of this folder:"
)
MGSM_CITATION = (
    "MGSM: Shi et al., *Language Models are Multilingual Chain-of-Thought Reasoners* (2022); "
    "GSM8K: Cobbe et al. (2021)."
)


def _label(source: str, host: str) -> str:
    return f"`{source}`" + (" (host)" if source == host else "")


def _share(weights: dict, host: str) -> str:
    if len(weights) == 1:
        return _label(next(iter(weights)), host)
    return " + ".join(f"{w:.3g} × {_label(s, host)}" for s, w in weights.items())


def layer_map(config: swap.SwapConfig, num_layers: int) -> list[tuple[str, str]]:
    """(layers, source) rows: runs of layers with the same sources, plus embeddings/head."""
    slices = runs(config, num_layers)
    rows = [("embeddings", _share(slices[0].weights, config.host))]
    for spec in slices[1:-1]:
        span = f"{spec.start}" if spec.end - spec.start == 1 else f"{spec.start}–{spec.end - 1}"
        rows.append((span, _share(spec.weights, config.host)))
    rows.append(("final norm + lm_head", _share(slices[-1].weights, config.host)))
    return rows


def _hub_ids(references: list[str]) -> list[str]:
    """Only Hub ids belong in `base_model` (local paths mean nothing on the Hub)."""
    ids = [checkpoint.split_reference(r)[0] for r in references]
    return [i for i in ids if not checkpoint.looks_local(i)]


def _model_result(results: EvalResults | None, model_dir: Path | None) -> ModelResult | None:
    """The scores in `results` of the model in `model_dir`, matched by its fingerprint
    (where a model was scored from does not identify it; its files do)."""
    if results is None:
        return None
    if model_dir is None:
        raise InputError("scores can only be attached to a model folder they were computed for")
    fingerprint = fingerprint_dir(model_dir)
    for model in results.models:
        if model.identity.fingerprint == fingerprint:
            return model
    scored = ", ".join(
        f"{m.identity.location} ({m.identity.fingerprint[:12]})" for m in results.models
    )
    raise InputError(
        f"--results scores {scored or 'no model'}, not {model_dir} (fingerprint "
        f"{fingerprint[:12]}); score this folder with `mergekit-layerswap eval` first"
    )


def _partial(settings) -> str:
    """How a `--limit` evaluation is marked: it is not comparable to a full one."""
    per = "language" if settings.is_mgsm else "task"
    return f"partial: first {settings.limit} problems per {per}" if settings.limit else ""


def _eval_result(results: EvalResults, column: str, result: ColumnResult) -> Any:
    """One model-index entry: an MGSM language, or an lm-eval task (named as the dataset)."""
    from huggingface_hub import EvalResult

    settings = results.settings
    shots = "task's shots" if settings.num_fewshot is None else f"{settings.num_fewshot}-shot"
    setup = ", ".join([settings.mode] * settings.is_mgsm + [shots])
    setup = "; ".join(filter(None, [setup, _partial(settings)]))
    if settings.is_mgsm:
        names = ("Multilingual grade-school math", HUB_DATASET, f"MGSM ({column})", column)
    else:
        # the config names the task too: the Hub groups model-index entries by dataset type
        # and config, and local tasks often share a type (`json`)
        names = (column, result.dataset or column, column, column)
    task_name, dataset_type, dataset_name, dataset_config = names
    return EvalResult(
        task_type="text-generation",
        task_name=task_name,
        dataset_type=dataset_type,
        dataset_name=dataset_name,
        dataset_config=dataset_config,
        dataset_split=f"test[:{settings.limit}]" if settings.limit else "test",
        metric_type=result.metric,
        metric_value=result.score,  # a fraction, as in results.json
        metric_name=f"{result.metric} ({result.filter}, {setup})",
        source_name=f"lm-evaluation-harness {results.versions.get('lm_eval', '')}".strip(),
        source_url="https://github.com/EleutherAI/lm-evaluation-harness",
    )


def _front_matter(name: str, raw: dict, results: EvalResults | None, scored: ModelResult | None):
    from huggingface_hub import ModelCardData

    references = [validate.reference(e.get("model")) for e in raw.get("models", [])]
    eval_results = None
    if scored is not None:
        eval_results = [_eval_result(results, c, r) for c, r in scored.columns.items()]
    mgsm = scored is not None and results.settings.is_mgsm
    return ModelCardData(
        model_name=name,
        base_model=_hub_ids([r for r in references if r]) or None,
        library_name="transformers",
        tags=["merge", "mergekit", "layer-swap"],
        language=list(scored.columns) if mgsm else None,
        eval_results=eval_results,
    )


def _scores_section(results: EvalResults, scored: ModelResult) -> list[str]:
    settings = results.settings
    version = results.versions.get("lm_eval", "?")
    if settings.is_mgsm:
        title, full = "MGSM", "full MGSM (250 problems per language)"
        about = (
            f"lm-evaluation-harness {version}, tasks `mgsm_{settings.mode}_*`, "
            f"{settings.num_fewshot}-shot; exact match with the `{HEADLINE_FILTER}` filter (%)."
        )
        header = "| language | exact match | ± stderr | n |"
    else:
        title, full = "Scores", "the full tasks"
        about = (
            f"lm-evaluation-harness {version}, tasks {', '.join(settings.tasks)}; the headline "
            "metric of each task with its filter (%)."
        )
        header = "| task | metric (filter) | score | ± stderr | n |"
    lines = [f"## {title}", "", about, ""]
    if settings.limit:
        lines += [
            f"**Partial evaluation** ({_partial(settings)}, `--limit {settings.limit}`): "
            f"not comparable to {full}.",
            "",
        ]
    lines += [header, "|---|" + "---:|" * (header.count("|") - 2)]
    rows = []
    for code, result in scored.columns.items():
        stderr = "–" if result.stderr is None else f"{100 * result.stderr:.1f}"
        metric = [] if settings.is_mgsm else [f"{result.metric} ({result.filter})"]
        rows.append([code, *metric, f"{100 * result.score:.1f}", stderr, str(result.n)])
    no_metric = [] if settings.is_mgsm else [""]
    rows.append(["**average**", *no_metric, f"**{100 * scored.average:.1f}**", "", ""])
    lines += [("| " + " | ".join(cells) + " |").replace("  ", " ") for cells in rows]
    return [*lines, ""]


def render(
    raw: dict,
    config_text: str,
    *,
    name: str,
    num_layers: int,
    results: EvalResults | None = None,
    model_dir: Path | None = None,
) -> str:
    """The card of a layer_swap merge (`raw` = its mergekit config, as loaded)."""
    config = swap.SwapConfig.from_mergekit(raw)
    scored = _model_result(results, model_dir)
    data = _front_matter(name, raw, results, scored)
    body = [
        f"# {name}",
        "",
        f"A [layer swapping]({PAPER}) merge (Bandarkar et al., ICLR 2025) made with "
        "[mergekit](https://github.com/arcee-ai/mergekit) and mergekit-layerswap: the host "
        f"`{config.host}` keeps its layers except those its donors replace; transition layers "
        "are weighted averages of the two.",
        "",
        f"## Layer map ({num_layers} layers)",
        "",
        "| layers | source |",
        "|---|---|",
        *(f"| {span} | {source} |" for span, source in layer_map(config, num_layers)),
        "",
        f"Transition width: {config.transition}. Embeddings follow "
        + ("the host" if config.embed_source == "base" else "layer 0")
        + "; the final norm and lm_head follow "
        + ("the host." if config.head_source == "base" else "the last layer."),
        "",
    ]
    if scored is not None:
        body += _scores_section(results, scored)
    seed = config_text.splitlines()[0] if config_text.startswith("# reproduce:") else ""
    command = seed.removeprefix("# reproduce: ") or f"mergekit-yaml {CONFIG_FILE} OUT"
    body += [
        "## Configuration",
        "",
        "```yaml",
        config_text.strip(),
        "```",
        "",
        "## Reproduce",
        "",
        INSTALL,
        "",
        "```bash",
        command,
    ]
    if scored is not None:
        body.append(eval_command(["OUT"], results.settings, "results/"))
    mgsm = scored is None or results.settings.is_mgsm
    body += ["```", "", "## Citation", "", "```bibtex", CITATION, "```", ""]
    body += [MGSM_CITATION, ""] if mgsm else []
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)


def read_config(model_dir: Path) -> tuple[dict, str]:
    """The mergekit config saved beside a merged model; InputError if it is absent, does not
    parse or is not a layer_swap config."""
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"{model_dir} has no {CONFIG_FILE}: is it a mergekit output folder?")
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        raise InputError(f"{path} does not parse as YAML ({first_line(error)})") from None
    if not isinstance(raw, dict) or raw.get("merge_method") != validate.METHOD:
        raise InputError(f"{path} is not a layer_swap config; this card describes layer swaps")
    return raw, text


def _swap_problems(raw: dict, num_layers: int) -> list[str]:
    """Why `raw` (a saved config) cannot be described: malformed models or parameters, or a
    swap the rule refuses for `num_layers` layers; empty when it can."""
    models = raw.get("models")
    if (
        validate.reference(raw.get("base_model")) is None
        or not isinstance(models, list)
        or not all(isinstance(entry, dict) for entry in models)
    ):
        return ["expected `base_model: MODEL` and `models:` a list of `- model: MODEL`"]
    try:
        config = swap.SwapConfig.from_mergekit(raw)
    except ValidationError as error:
        return [f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors()]
    except TypeError as error:  # `parameters: 5`
        return [f"parameters must be mappings of names to values ({first_line(error)})"]
    return [problem.message for problem in swap_rule.problems(config, num_layers)]


def write_card(model_dir: str | Path, results: EvalResults | None = None) -> Path:
    """Write (or refresh) MODEL_DIR/README.md from its saved config and optional results."""
    model_dir = Path(model_dir)
    raw, text = read_config(model_dir)
    num_layers = checkpoint.model_info(str(model_dir.resolve())).num_layers
    if problems := _swap_problems(raw, num_layers):
        raise InputError(
            f"{model_dir / CONFIG_FILE} is not a valid layer_swap config: {'; '.join(problems)}"
        )
    card = render(
        raw,
        text,
        name=model_dir.resolve().name,
        num_layers=num_layers,
        results=results,
        model_dir=model_dir,
    )
    path = model_dir / CARD_FILE
    write_atomic(path, card)
    return path
