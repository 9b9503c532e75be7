"""Torch's intra-op thread count: the user's to choose (`OMP_NUM_THREADS`, a `--threads`
option); the package sets it only for a run the user asked for, and restores it after."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def chosen_threads(given: int | None) -> int | None:
    """A command's torch thread count: `--threads` when given; else torch's own default
    (None: untouched) when the user set `OMP_NUM_THREADS`, else 1.

    Measured on 2 cores (`bench/demo_under_load.py`): the tiny models' ops are small, so each
    step is many short parallel regions; with 2 threads, libgomp's workers spin at every
    barrier, and when another process takes one core the spinning thread burns the time
    slice its sibling needs: a training step went from 0.14 s (quiet) to 0.80 s with both
    cores busy, against 0.25 s to 0.39 s with 1 thread. `analyze` streams pieces of 2^20
    elements, too small for intra-op threads as well (its experts run in parallel threads)."""
    if given is not None:
        return given
    return None if os.environ.get("OMP_NUM_THREADS") else 1


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with `threads` intra-op torch threads (None: leave torch as it is), restored after."""
    import torch

    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def threads_problems(threads: int | None) -> list[str]:
    """The problem line of a `--threads` that is not a thread count."""
    if threads is not None and threads < 1:
        return [f"--threads: {threads} is not a thread count; give 1 or more"]
    return []
