"""The streaming pass: for every expert E and every tensor (ΔW = W_E − W_B in float32),
Σ W_B², Σ ΔW², Σ |ΔW| and the tensor's part of E's largest 1 % |ΔW|.

Tensors are streamed block by block from memory-mapped safetensors, so memory stays bounded
whatever the model size.

The top-1 % share is counted in the same single pass: |ΔW| values are binned by their float32
bit pattern (2^10 bins per power of two: a bin spans at most 0.1 % of its values), and a
running lower bound on the k-th largest value (the k-th largest seen so far) drops most
elements before binning. Every share is exact except that the elements of the one bin holding
the k-th largest value are apportioned in proportion to each tensor's count in that bin; the
summary records that apportioned part of the top set (``top_boundary_share``), which bounds
the error of any share. In bf16/fp16 checkpoints that bin mostly holds ties (copies of one
value), which no rule can rank: apportioning them is then the exact expectation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mergekit_layerswap.analysis.inputs import Item, Model
from mergekit_layerswap.errors import InputError

if TYPE_CHECKING:
    import torch

#: Fraction of each expert's largest |ΔW| whose whereabouts the top share reports.
TOP_FRACTION = 0.01
_BLOCK_ELEMENTS = 1 << 24  # rows mapped per model at a time: 32 MiB of bf16
_PIECE = 1 << 20  # elements computed at a time: float32 scratch that stays in cache
_SHIFT = 13  # |ΔW| bin = float32 bit pattern >> 13: 10 mantissa bits
_NUM_BINS = 1 << (31 - _SHIFT)


def ratio(change: float, norm: float) -> float:
    """``change / norm``; where `norm` is 0: inf if `change` is not, else 0."""
    if norm:
        return change / norm
    return math.inf if change else 0.0


class TopCounter:
    """Counts, per tensor, how many of one expert's k largest |ΔW| it holds — in one pass.

    Bins are float32 bit patterns >> 13 (monotonic in the value for non-negative floats).
    `floor` is the bin of the k-th largest value seen so far: nothing below it can make the
    final top k, so those elements are dropped before binning. Bin 0 (|ΔW| < 1.1e-41: zero)
    never counts as a change.
    """

    def __init__(self, k: int):
        self.k = k
        self.hist = np.zeros(_NUM_BINS, dtype=np.int64)  # every tensor so far
        self.current = np.zeros(_NUM_BINS, dtype=np.int64)  # the tensor being read
        self.floor = 1
        self.ceiling = 1  # one past the highest non-empty bin
        self.parts: list[tuple[int, np.ndarray]] = []  # per tensor: (first bin, counts)
        self._mask = np.empty(_PIECE, dtype=bool)

    def add(self, bits: np.ndarray) -> None:
        """Count `bits`, the int32 view of non-negative |ΔW| values."""
        lowest = self.floor << _SHIFT
        if bits.max() < lowest:  # cheap, and common once the floor is up
            return
        kept = bits[np.greater_equal(bits, lowest, out=self._mask[: bits.size])]
        if not kept.size:
            return
        kept >>= _SHIFT
        kept -= self.floor
        counts = np.bincount(kept)
        end = self.floor + counts.size
        self.hist[self.floor : end] += counts
        self.current[self.floor : end] += counts
        self.ceiling = max(self.ceiling, end)
        tail = np.cumsum(self.hist[self.floor : self.ceiling][::-1])
        reached = int(np.searchsorted(tail, self.k))  # first count from the top >= k
        if reached < tail.size:
            self.floor = self.ceiling - 1 - reached

    def end_tensor(self) -> None:
        self.parts.append((self.floor, self.current[self.floor : self.ceiling].copy()))
        self.current[: self.ceiling] = 0

    def result(self) -> tuple[list[float], dict[str, Any]]:
        """Each tensor's share of the top set; the set's size, threshold and the part of it
        apportioned from the threshold's bin."""
        total = int(self.hist[self.floor :].sum())
        if total < self.k:  # fewer changed elements than k: the top set is all of them
            shares = [int(counts.sum()) / total if total else 0.0 for _, counts in self.parts]
            return shares, {"top_count": total, "top_threshold": 0.0, "top_boundary_share": 0.0}
        edge = self.floor  # the bin holding the k-th largest value
        rest = self.k - int(self.hist[edge + 1 :].sum())
        inside = int(self.hist[edge])
        shares = []
        for first, counts in self.parts:  # counts[i] is bin first + i; first <= edge
            at_edge = int(counts[edge - first]) if edge - first < counts.size else 0
            above = int(counts[edge + 1 - first :].sum())
            shares.append((above + rest * at_edge / inside) / self.k)
        return shares, {
            "top_count": self.k,
            "top_threshold": float(np.array(edge << _SHIFT, dtype=np.int32).view(np.float32)),
            "top_boundary_share": rest / self.k,
        }


@dataclass
class Sums:
    """One expert's per-tensor sums (and the base's Σ W²), filled by the streaming pass."""

    top: TopCounter
    base_square: list[float] = field(default_factory=list)  # Σ W_base²
    square: list[float] = field(default_factory=list)  # Σ ΔW²
    absolute: list[float] = field(default_factory=list)  # Σ |ΔW|


def _blocks(
    tensors: Sequence[tuple[Model, str]], shape: tuple[int, ...]
) -> Iterator[list[torch.Tensor]]:
    """Same-shaped tensors of several models, flattened, a block of rows (at most 2^24
    elements) at a time. The files are mapped per block, so resident memory holds at most two
    blocks per model (the one in use and the one being released) however large the tensor."""
    from safetensors import safe_open

    rows = shape[0] if len(shape) > 1 else 1
    per_block = max(1, _BLOCK_ELEMENTS * rows // max(1, math.prod(shape)))
    for start in range(0, rows, per_block):
        with ExitStack() as files:
            blocks = []
            for model, key in tensors:
                handle = files.enter_context(safe_open(model.tensors[key].path, "pt"))
                if rows > 1:
                    blocks.append(handle.get_slice(key)[start : start + per_block].reshape(-1))
                else:
                    blocks.append(handle.get_tensor(key).reshape(-1))
            yield blocks


def _stream_expert(
    base: Model,
    expert: Model,
    column: int,
    items: Sequence[Item],
    k: int,
    on_bytes: Callable[[int], object],
) -> Sums:
    """One pass over every tensor of `expert` (its names: column `column` of the items)."""
    import torch

    sums = Sums(TopCounter(k))
    w = torch.empty(_PIECE)
    delta = torch.empty(_PIECE)
    for item in items:
        base_square = square = absolute = 0.0
        for blocks in _blocks([(base, item.keys[0]), (expert, item.keys[column])], item.shape):
            on_bytes(sum(b.numel() * b.element_size() for b in blocks))
            for offset in range(0, blocks[0].numel(), _PIECE):
                end = min(offset + _PIECE, blocks[0].numel())
                b = w[: end - offset].copy_(blocks[0][offset:end])
                d = delta[: end - offset].copy_(blocks[1][offset:end]).sub_(b)
                base_square += float(torch.dot(b, b))
                square += float(torch.dot(d, d))
                absolute += float(d.abs_().sum())
                sums.top.add(d.view(torch.int32).numpy())
        sums.base_square.append(base_square)
        sums.square.append(square)
        sums.absolute.append(absolute)
        sums.top.end_tensor()
    return sums


def stream(
    models: Sequence[Model], items: Sequence[Item], on_bytes: Callable[[int], object]
) -> list[Sums]:
    """One pass over every tensor of every expert against the base (models[0]).

    The experts run in parallel threads. Pieces of 2^20 elements are too small for torch's
    intra-op threads, which then spend more time waiting on each other than computing (15x
    slower on a busy 2-core machine); torch's thread count is the caller's to set, and the
    `analyze` command runs with 1 unless told otherwise (`--threads`, `OMP_NUM_THREADS`)."""
    k = max(1, math.ceil(TOP_FRACTION * sum(math.prod(item.shape) for item in items)))
    with ThreadPoolExecutor(min(len(models) - 1, os.cpu_count() or 1)) as pool:
        jobs = [
            pool.submit(_stream_expert, models[0], model, i, items, k, on_bytes)
            for i, model in enumerate(models[1:], start=1)
        ]
        return [job.result() for job in jobs]


def bytes_read(models: Sequence[Model], items: Sequence[Item]) -> int:
    """What `stream` reads: the base once per expert, and every expert once."""
    return sum(
        models[0].nbytes(item.keys[0]) + model.nbytes(key)
        for item in items
        for model, key in zip(models[1:], item.keys[1:], strict=True)
    )


def check_finite(models: Sequence[Model], items: Sequence[Item], sums: Sequence[Sums]) -> None:
    """InputError naming the first tensor of each model that holds NaN or infinite values
    (its sums are not finite): every figure of it would be meaningless."""
    bad: dict[str, str] = {}
    for column, expert in enumerate(sums, start=1):
        for item, base_square, square in zip(items, expert.base_square, expert.square, strict=True):
            if not math.isfinite(base_square):
                bad.setdefault(models[0].name, item.keys[0])
            elif not math.isfinite(square):
                bad.setdefault(models[column].name, item.keys[column])
    if bad:
        raise InputError(
            [
                f"{name}: tensor {key} holds NaN or infinite values; analyze needs finite weights"
                for name, key in bad.items()
            ]
        )
