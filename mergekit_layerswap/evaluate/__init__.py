"""Scoring with lm-evaluation-harness (`mergekit-layerswap eval`): its own `mgsm_*` tasks by
default, or any lm-eval task or group (and local task folders).

Importing this package is cheap; lm-eval and torch load when an evaluation runs.
"""

from .columns import TaskSet, resolve
from .identity import ModelIdentity, resolve_model
from .mgsm import HEADLINE_FILTER, LANGUAGES, MODES, parse_languages
from .results import ColumnResult, EvalResults, ModelResult, read_results, render_markdown
from .run import evaluate_lm, evaluate_models
from .settings import EvalSettings, parse_tasks

__all__ = [
    "HEADLINE_FILTER",
    "LANGUAGES",
    "MODES",
    "ColumnResult",
    "EvalResults",
    "EvalSettings",
    "ModelIdentity",
    "ModelResult",
    "TaskSet",
    "evaluate_lm",
    "evaluate_models",
    "parse_languages",
    "parse_tasks",
    "read_results",
    "render_markdown",
    "resolve",
    "resolve_model",
]
