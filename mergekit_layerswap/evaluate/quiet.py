"""Keep an evaluation's terminal to progress, results and real warnings.

Four sources of noise are silenced where they arise, only while `quiet()` is active:

- lm-eval records the git commit of the working directory with `git describe`, whose
  `fatal: not a git repository` reaches the terminal outside a checkout: the same lookup runs
  with git's stderr captured;
- lm-eval warns about what this package asks for on purpose (a generation length, the number
  of exemplars, an in-memory model): those exact messages are dropped, every other one kept;
- `datasets` draws progress bars while it prepares MGSM's small splits: turned off;
- transformers draws a "Loading weights" bar for every model it loads: turned off
  (`hf_bars_off`, also for the lab's own loads and saves).
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

#: lm-eval's warnings (their format strings' openings) about settings we pass deliberately.
EXPECTED_WARNINGS = {
    "lm_eval.evaluator": (
        "generation_kwargs: %s specified through cli",
        "Overwriting default num_fewshot of %s",
    ),
    "lm_eval.models.huggingface": (
        "`pretrained` model kwarg is not of type `str`",
        "Passed an already-initialized model through `pretrained`",
    ),
}


class _DropExpected(logging.Filter):
    def __init__(self, openings: tuple[str, ...]) -> None:
        super().__init__()
        self.openings = openings

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.openings)


def git_commit_hash() -> str | None:
    """lm-eval's `get_git_commit_hash` (same result), without git's complaint on stderr."""
    from lm_eval.loggers.utils import get_commit_from_path

    try:
        done = subprocess.run(
            ["git", "describe", "--always"], capture_output=True, text=True, check=True
        )
    except (subprocess.CalledProcessError, FileNotFoundError):
        return get_commit_from_path(os.getcwd())
    return done.stdout.strip()


@contextmanager
def hf_bars_off() -> Iterator[None]:
    """transformers' progress bars (loading, saving a model) off while the block runs, then
    as they were."""
    from transformers.utils import logging as hf_logging

    if not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


@contextmanager
def quiet() -> Iterator[None]:
    """Silence the noise above while the block runs; restore everything after."""
    import datasets
    import lm_eval.evaluator

    with ExitStack() as stack:
        for name, openings in EXPECTED_WARNINGS.items():
            logger, drop = logging.getLogger(name), _DropExpected(openings)
            logger.addFilter(drop)
            stack.callback(logger.removeFilter, drop)
        original = lm_eval.evaluator.get_git_commit_hash
        lm_eval.evaluator.get_git_commit_hash = git_commit_hash
        stack.callback(setattr, lm_eval.evaluator, "get_git_commit_hash", original)
        if datasets.is_progress_bar_enabled():
            datasets.disable_progress_bars()
            stack.callback(datasets.enable_progress_bars)
        stack.enter_context(hf_bars_off())
        yield
