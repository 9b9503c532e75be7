"""MGSM as lm-evaluation-harness defines it: languages, modes, task names, the task set we run.

Prompts, exemplars and answer filters are lm-eval's own `mgsm_*` task configs, unchanged. The
one override ever generated is `dataset_path`, to read a local copy of `juletxara/mgsm`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mergekit_layerswap.errors import InputError

from .online import DATASETS_OFFLINE, offline_switch, probe_failure

#: MGSM's 11 languages (Shi et al., 2022), as lm-eval names them.
LANGUAGES = ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")
#: lm-eval's MGSM task families: `mgsm_<mode>_<language>`.
MODES = ("native_cot", "direct", "en_cot")
#: The Hub dataset lm-eval's MGSM tasks load; a local copy must be laid out like it.
HUB_DATASET = "juletxara/mgsm"
#: Exemplars per language in the `train` split: the most `num_fewshot` can use.
MAX_FEWSHOT = 8
#: The filter of the headline `exact_match`: the last number in the generation.
HEADLINE_FILTER = "flexible-extract"
#: Name of the generated group that selects (and, offline, re-points) the official tasks.
GROUP = "mergekit_layerswap_mgsm"


def task_name(mode: str, language: str) -> str:
    """lm-eval's task name, e.g. `mgsm_native_cot_sw`."""
    return f"mgsm_{mode}_{language}"


def parse_languages(spec: str | Sequence[str]) -> tuple[str, ...]:
    """`"sw,te"`, `"all"` or a sequence of codes -> validated codes, in order, without repeats."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    codes = [item.strip() for item in items if item.strip()]
    if codes == ["all"]:
        return LANGUAGES
    unknown = [code for code in codes if code not in LANGUAGES]
    if unknown or not codes:
        given = ", ".join(repr(code) for code in unknown) or "none"
        raise InputError(
            f"unknown language code {given}: choose from {','.join(LANGUAGES)} or 'all'"
        )
    return tuple(dict.fromkeys(codes))


def _has_splits(source: str, language: str) -> bool:
    """Whether `datasets` finds a config `language` with train and test splits in `source`."""
    import datasets

    try:
        splits = datasets.load_dataset_builder(source, language).config.data_files
    except (OSError, ValueError):  # ConnectionError (offline, not cached) is an OSError
        return False
    return bool(splits) and {"train", "test"} <= set(splits)


def check_data_dir(data_dir: Path | None, languages: Sequence[str]) -> None:
    """Raise InputError unless MGSM can be read for every language, without long retries.

    `data_dir` must have a train and a test split per language. Without it the Hub dataset is
    used: offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) it must be in the datasets cache;
    online the Hub must answer a quick probe.
    """
    use_local = f"pass --data-dir DIR or set MGSM_DATA_DIR=DIR (a copy laid out like {HUB_DATASET})"
    if data_dir is None:
        if switch := offline_switch(DATASETS_OFFLINE):
            missing = [code for code in languages if not _has_splits(HUB_DATASET, code)]
            if missing:
                raise InputError(
                    f"no MGSM data: offline ({switch}) and {HUB_DATASET} ({','.join(missing)}) "
                    f"is not in the datasets cache; {use_local}"
                )
        elif failure := probe_failure():
            raise InputError(
                f"no MGSM data: the Hugging Face Hub is unreachable ({failure}); {use_local}"
            )
        return
    if not data_dir.is_dir():
        raise InputError(f"MGSM data directory not found: {data_dir}")
    for language in languages:
        if not _has_splits(str(data_dir), language):
            raise InputError(
                f"{data_dir} is not laid out like the Hub dataset {HUB_DATASET}: no config "
                f"{language!r} with train and test splits (e.g. {language}/test.jsonl)"
            )


def write_task_group(
    directory: Path, mode: str, languages: Sequence[str], data_dir: Path | None
) -> str:
    """Write the group YAML selecting the official tasks into `directory`; return its name.

    With `data_dir`, the group sets `dataset_path` (absolute) for its member tasks, which lm-eval
    applies on top of each task's own config; nothing else is overridden.
    """
    import yaml

    group: dict = {"group": GROUP, "task": [task_name(mode, code) for code in languages]}
    if data_dir is not None:
        group["dataset_path"] = str(data_dir.resolve())
    (directory / f"{GROUP}.yaml").write_text(yaml.safe_dump(group, sort_keys=False))
    return GROUP


def mgsm_configs() -> Path:
    """lm-eval's own folder of MGSM task configs."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent / "mgsm"


def task_manager(include_dir: Path):
    """An lm-eval TaskManager over lm-eval's own MGSM configs plus `include_dir`.

    Indexing only the MGSM folder (not all ~14k of lm-eval's task files) saves ~15 s per run;
    the task configs are the same files either way.
    """
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(mgsm_configs()), str(include_dir)], include_defaults=False)
