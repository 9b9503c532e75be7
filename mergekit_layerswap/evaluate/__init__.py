"""MGSM scoring with lm-evaluation-harness's own `mgsm_*` tasks (`mergekit-layerswap eval`).

Importing this package is cheap; lm-eval and torch load when an evaluation runs.
"""

from .identity import ModelIdentity, resolve_model
from .results import EvalResults, LanguageResult, ModelResult, read_results, render_markdown
from .run import evaluate_lm, evaluate_models
from .settings import EvalSettings
from .tasks import HEADLINE_FILTER, LANGUAGES, MODES, EvalInputError, parse_languages

__all__ = [
    "HEADLINE_FILTER",
    "LANGUAGES",
    "MODES",
    "EvalInputError",
    "EvalResults",
    "EvalSettings",
    "LanguageResult",
    "ModelIdentity",
    "ModelResult",
    "evaluate_lm",
    "evaluate_models",
    "parse_languages",
    "read_results",
    "render_markdown",
    "resolve_model",
]
