"""`mergekit-layerswap analyze`: where each expert moved away from the shared base.

For every expert E and every tensor the base B has (ΔW = W_E − W_B, computed in float32):

- relative change ``‖ΔW‖_F / ‖W_B‖_F``;
- mean ``|ΔW|``;
- top-1 % share: the fraction of E's largest 1 % ``|ΔW|`` (all analysed tensors pooled) that
  lies in the tensor.

Tensors are named by mergekit's architecture definitions: per layer and parameter type
(``q_proj``, ``input_layernorm``, ...), plus rows of their own for the tensors outside the layer
stack (embeddings, final norm, head). They are streamed block by block from memory-mapped
safetensors, so memory stays bounded whatever the model size.

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

import csv
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mergekit_layerswap import swap
from mergekit_layerswap.checkpoint import CheckpointError, looks_local, model_folder

if TYPE_CHECKING:
    import torch

#: Fraction of each expert's largest |ΔW| whose whereabouts the top share reports.
TOP_FRACTION = 0.01
SUGGESTION_FILE = "suggested-layerswap.yml"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: safetensors dtype -> (mergekit's name, bytes per element)
_DTYPES = {
    "BF16": ("bfloat16", 2),
    "F16": ("float16", 2),
    "F32": ("float32", 4),
    "F64": ("float64", 8),
}
_BLOCK_ELEMENTS = 1 << 24  # rows mapped per model at a time: 32 MiB of bf16
_PIECE = 1 << 20  # elements computed at a time: float32 scratch that stays in cache
_SHIFT = 13  # |ΔW| bin = float32 bit pattern >> 13: 10 mantissa bits
_NUM_BINS = 1 << (31 - _SHIFT)


class AnalysisError(ValueError):
    """Bad input (missing model, mismatched shapes, unknown names): one line for the user."""


# --- models ----------------------------------------------------------------------------------


def parse_expert(spec: str) -> tuple[str, str]:
    """``"math=./math-expert"`` -> ``("math", "./math-expert")``."""
    name, sep, reference = spec.partition("=")
    if not sep or not name or not reference:
        raise AnalysisError(f"--expert takes NAME=MODEL, got {spec!r}")
    return name, reference


@dataclass(frozen=True)
class Checkpoint:
    """A model's safetensors headers: every tensor's file, shape and dtype (no data read)."""

    name: str
    reference: str  # as the user gave it
    path: Path  # the local directory (a Hub snapshot for Hub ids)
    tensors: dict[str, tuple[Path, tuple[int, ...], str]]

    @property
    def merge_reference(self) -> str:
        """How a mergekit config names this model: its absolute path, or the Hub id."""
        return str(self.path.resolve()) if looks_local(self.reference) else self.reference

    def nbytes(self, name: str) -> int:
        _, shape, dtype = self.tensors[name]
        return math.prod(shape) * _DTYPES[dtype][1]

    def dtype(self, names: Sequence[str]) -> str:
        """The storage dtype of most of the bytes of `names`, in mergekit's spelling."""
        sizes: dict[str, int] = {}
        for name in names:
            dtype = self.tensors[name][2]
            sizes[dtype] = sizes.get(dtype, 0) + self.nbytes(name)
        return _DTYPES[max(sizes, key=sizes.__getitem__)][0]


def _resolve(name: str, reference: str) -> Path:
    """A local directory, or a Hub snapshot of the model's safetensors and JSON files."""
    try:
        return model_folder(reference, ("*.safetensors", "*.json"))
    except CheckpointError as error:
        raise AnalysisError(f"{name}: {error}") from None


def read_checkpoint(name: str, reference: str) -> Checkpoint:
    """Resolve `reference` and read its safetensors headers (sharded or single-file)."""
    from safetensors import SafetensorError, safe_open

    path = _resolve(name, reference)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
        except (OSError, ValueError, KeyError, AttributeError) as error:
            raise AnalysisError(f"{name}: unreadable {index} ({error})") from None
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise AnalysisError(f"{name}: no safetensors weights in {path}")
    tensors: dict[str, tuple[Path, tuple[int, ...], str]] = {}
    for file in files:
        if not file.is_file():
            raise AnalysisError(f"{name}: missing weight file {file} (listed in {index.name})")
        try:
            with safe_open(file, framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (not iterable)
                    view = handle.get_slice(key)
                    tensors[key] = (file, tuple(view.get_shape()), view.get_dtype())
        except (OSError, SafetensorError) as error:
            raise AnalysisError(f"{name}: unreadable weight file {file} ({error})") from None
    return Checkpoint(name, reference, path, tensors)


# --- which tensor is which: mergekit's architecture definitions -----------------------------


@dataclass(frozen=True)
class Role:
    """One tensor of the architecture and its figure cell (layer, parameter type)."""

    names: tuple[str, ...]  # the tensor's name, then its aliases
    layer: int | None  # None: outside the layer stack
    parameter: str  # parameter type; for tensors outside the stack, their row's name
    optional: bool = False


@dataclass(frozen=True)
class Layout:
    architecture: str
    num_layers: int
    roles: tuple[Role, ...]  # embeddings, layer 0 ... layer n-1, final norm and head, others


def _short_labels(names: Sequence[str]) -> dict[str, str]:
    """The shortest dotted suffix that tells each name from the others, ``.weight`` dropped:
    ``model.layers.0.self_attn.q_proj.bias`` -> ``q_proj.bias`` beside ``q_proj``."""
    split = {}
    for name in dict.fromkeys(names):
        stem, _, last = name.rpartition(".")
        kind = last if stem and last in ("weight", "bias") else ""
        split[name] = (stem if kind else name).split("."), ".bias" if kind == "bias" else ""
    stems = {tuple(parts) for parts, _ in split.values()}
    labels = {}
    for name, (parts, tail) in split.items():
        for size in range(1, len(parts) + 1):
            label = parts[-size:]
            unique = all(
                tuple(other[-size:]) != tuple(label) or list(other) == parts for other in stems
            )
            if unique and not label[0].isdigit():
                break
        labels[name] = ".".join(label) + tail
    return labels


def read_layout(name: str, model_dir: Path) -> Layout:
    """The tensors mergekit knows for the model in `model_dir`, each with its figure cell."""
    from mergekit.architecture import arch_info_for_config
    from mergekit.architecture.base import ConfiguredModuleArchitecture, WeightInfo
    from transformers import AutoConfig

    if not (model_dir / "config.json").is_file():
        raise AnalysisError(f"{name}: {model_dir} has no config.json")
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except Exception as error:  # unknown model_type, malformed JSON
        raise AnalysisError(f"{name}: unreadable config.json ({error})") from None
    architectures = getattr(config, "architectures", None) or []
    if len(architectures) != 1:
        raise AnalysisError(
            f"{name}: config.json must name exactly one architecture (got {architectures!r})"
        )
    info = arch_info_for_config(config)
    if info is None:
        raise AnalysisError(f"{name}: mergekit 0.1.5 has no definition of {architectures[0]}")
    modules = {
        module: ConfiguredModuleArchitecture(
            info=definition.architecture, config=config, weight_prefix=definition.weight_prefix
        )
        for module, definition in info.modules.items()
    }
    # The layer stack: the language model (the module holding token embeddings or the head),
    # else the module with the most layers.
    main = max(
        modules,
        key=lambda m: (
            any(w.vocabulary_axis is not None for w in modules[m].all_weights()),
            modules[m].num_layers(),
        ),
    )
    stack = modules[main]

    def role(weight: WeightInfo, layer: int | None, parameter: str) -> Role:
        return Role((weight.name, *(weight.aliases or ())), layer, parameter, weight.optional)

    in_layers: list[tuple[int, str, WeightInfo]] = []
    outside = stack.pre_weights()
    for index in range(stack.num_layers()):
        for weight in stack.layer_weights(index):
            parts = weight.name.split(".")
            if str(index) in parts:  # the name below the layer index is the parameter type
                in_layers.append((index, ".".join(parts[parts.index(str(index)) + 1 :]), weight))
            else:
                outside.append(weight)
    outside += stack.post_weights()
    types = _short_labels([parameter for _, parameter, _ in in_layers])
    rows = _short_labels([weight.name for weight in outside])
    pre = len(stack.pre_weights())
    roles = [role(w, None, rows[w.name]) for w in outside[:pre]]
    roles += [role(w, layer, types[parameter]) for layer, parameter, w in in_layers]
    roles += [role(w, None, rows[w.name]) for w in outside[pre:]]
    for module, configured in modules.items():
        if module != main:
            roles += [role(w, None, module) for w in configured.all_weights()]
    return Layout(architectures[0], stack.num_layers(), tuple(roles))


# --- validation: everything that can be checked before a tensor is read ---------------------


@dataclass(frozen=True)
class _Item:
    """One tensor to stream: its role, its name in the base then in each expert, its shape."""

    role: Role
    keys: tuple[str, ...]
    shape: tuple[int, ...]


def _find(checkpoint: Checkpoint, role: Role) -> str | None:
    return next((n for n in role.names if n in checkpoint.tensors), None)


def _plan(base: Checkpoint, experts: Sequence[Checkpoint], layout: Layout) -> list[_Item]:
    """Match every architecture tensor across the models; raise on any mismatch."""
    items = []
    for role in layout.roles:
        key = _find(base, role)
        if key is None:
            if role.optional:
                continue  # e.g. a head tied to the embeddings
            raise AnalysisError(
                f"base: lacks tensor {role.names[0]}, which mergekit's "
                f"{layout.architecture} definition requires"
            )
        shape = base.tensors[key][1]
        keys = [key]
        for expert in experts:
            other = _find(expert, role)
            if other is None:
                raise AnalysisError(
                    f"expert {expert.name!r}: lacks tensor {role.names[0]}, which the base has"
                )
            if expert.tensors[other][1] != shape:
                raise AnalysisError(
                    f"expert {expert.name!r}: tensor {other} has shape "
                    f"{list(expert.tensors[other][1])}, the base's is {list(shape)}"
                )
            keys.append(other)
        for checkpoint, name in zip((base, *experts), keys, strict=True):
            if checkpoint.tensors[name][2] not in _DTYPES:
                raise AnalysisError(
                    f"{checkpoint.name}: tensor {name} is {checkpoint.tensors[name][2]}; "
                    "analyze reads bf16, fp16, fp32 and fp64 weights"
                )
        items.append(_Item(role, tuple(keys), shape))
    return items


# --- the streaming pass ----------------------------------------------------------------------


class _TopCounter:
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
class _Sums:
    """One expert's per-tensor sums (and the base's Σ W²), filled by the streaming pass."""

    top: _TopCounter
    base_square: list[float] = field(default_factory=list)  # Σ W_base²
    square: list[float] = field(default_factory=list)  # Σ ΔW²
    absolute: list[float] = field(default_factory=list)  # Σ |ΔW|


def _blocks(
    tensors: Sequence[tuple[Checkpoint, str]], shape: tuple[int, ...]
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
                handle = files.enter_context(safe_open(model.tensors[key][0], "pt"))
                if rows > 1:
                    blocks.append(handle.get_slice(key)[start : start + per_block].reshape(-1))
                else:
                    blocks.append(handle.get_tensor(key).reshape(-1))
            yield blocks


def _stream_expert(
    base: Checkpoint,
    expert: Checkpoint,
    column: int,
    items: Sequence[_Item],
    k: int,
    on_bytes: Callable[[int], object],
) -> _Sums:
    """One pass over every tensor of `expert` (its names: column `column` of the items)."""
    import torch

    sums = _Sums(_TopCounter(k))
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


def _stream(
    models: Sequence[Checkpoint], items: Sequence[_Item], on_bytes: Callable[[int], object]
) -> list[_Sums]:
    """One pass over every tensor of every expert against the base (models[0]).

    Pieces of 2^20 elements are too small for torch's intra-op threads, which then spend more
    time waiting on each other than computing (15x slower on a busy 2-core machine); torch runs
    single-threaded here and the experts run in parallel threads instead."""
    import torch

    k = max(1, math.ceil(TOP_FRACTION * sum(math.prod(item.shape) for item in items)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(min(len(models) - 1, os.cpu_count() or 1)) as pool:
            jobs = [
                pool.submit(_stream_expert, models[0], model, i, items, k, on_bytes)
                for i, model in enumerate(models[1:], start=1)
            ]
            return [job.result() for job in jobs]
    finally:
        torch.set_num_threads(threads)


# --- figures ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One expert's figures for one cell: a layer's parameter type, a layer's total
    (``parameter == "total"``), or a tensor outside the layer stack (``layer is None``)."""

    expert: str
    layer: int | None
    parameter: str
    elements: int
    relative_change: float  # inf where the base is all zeros and the expert is not
    mean_abs_change: float
    top_share: float


def _ratio(change: float, norm: float) -> float:
    if norm:
        return change / norm
    return math.inf if change else 0.0


def _rows(expert: str, items: Sequence[_Item], sums: _Sums, shares: Sequence[float]) -> list[Row]:
    """Sum the per-tensor figures into cells: (layer, type), (layer, "total"), outside rows."""
    cells: dict[tuple[int | None, str], list[float]] = {}
    for i, item in enumerate(items):
        cell_keys = [(item.role.layer, item.role.parameter)]
        if item.role.layer is not None:
            cell_keys.append((item.role.layer, "total"))
        values = (
            math.prod(item.shape),
            sums.base_square[i],
            sums.square[i],
            sums.absolute[i],
            shares[i],
        )
        for key in cell_keys:
            cell = cells.setdefault(key, [0.0] * len(values))
            for j, value in enumerate(values):
                cell[j] += value
    return [
        Row(
            expert,
            layer,
            parameter,
            int(numel),
            _ratio(math.sqrt(square), math.sqrt(base)),
            absolute / numel,
            share,
        )
        for (layer, parameter), (numel, base, square, absolute, share) in cells.items()
    ]


@dataclass(frozen=True)
class Suggestion:
    """The donor's outer blocks where it changed more than the host (none: nothing to swap)."""

    host: str
    donor: str
    ratio: float
    bottom: int
    top: int
    transition: int
    host_change: tuple[float, ...]  # per-layer relative change
    donor_change: tuple[float, ...]

    @property
    def donor_layers(self) -> list[int]:
        n = len(self.host_change)
        return [*range(self.bottom), *range(n - self.top, n)]

    def describe(self) -> str:
        """The suggestion in one sentence."""
        if not self.donor_layers:
            return f"no outer layer changed more in {self.donor} than in {self.host}: no swap"
        n = len(self.host_change)
        blocks = [f"layers 0-{self.bottom - 1} (bottom: {self.bottom})"] if self.bottom else []
        blocks += [f"layers {n - self.top}-{n - 1} (top: {self.top})"] if self.top else []
        return (
            f"host {self.host}, donor {self.donor}: take the donor's {' and '.join(blocks)}, "
            f"transition {self.transition}"
        )


def suggest(
    host: str,
    donor: str,
    host_change: Sequence[float],
    donor_change: Sequence[float],
    ratio: float = 1.0,
) -> Suggestion:
    """The rule: layer l is the donor's when donor_change[l] > ratio × host_change[l];
    bottom = the longest run of such layers from layer 0, top = the longest run ending at the
    last layer (not overlapping bottom); transition = 1 when the host layers between the blocks
    leave room for one blended layer at each inner edge (the swap rule's check), else 0."""
    n = len(host_change)
    wins = [d > ratio * h for h, d in zip(host_change, donor_change, strict=True)]
    bottom = next((i for i, win in enumerate(wins) if not win), n)
    top = next((i for i, win in enumerate(reversed(wins[bottom:])) if not win), n - bottom)
    claim = swap.Claim(donor, bottom, top)
    edges = bottom + top < n  # some host layers remain, next to the blocks' inner edges
    fits = edges and not swap.problems(swap.SwapConfig(host, (claim,), transition=1), n)
    return Suggestion(
        host, donor, ratio, bottom, top, int(fits), tuple(host_change), tuple(donor_change)
    )


@dataclass(frozen=True)
class Analysis:
    """Everything `analyze` measured; `rows` holds every figure of every expert."""

    base: str
    experts: dict[str, str]  # name -> model, as given
    architecture: str
    num_layers: int
    parameters: list[str]  # the layers' parameter types
    order: list[tuple[int | None, str]]  # display rows: outside rows and (layer, "total")
    rows: list[Row]
    summary: dict[str, dict[str, Any]]  # per expert: dtype, elements, totals, top-set facts
    suggestion: Suggestion | None = None
    files: list[Path] = field(default_factory=list)

    def cell(self, expert: str, layer: int | None, parameter: str) -> Row:
        return next(
            r for r in self.rows if (r.expert, r.layer, r.parameter) == (expert, layer, parameter)
        )

    def layer_change(self, expert: str) -> list[float]:
        """Per-layer relative change of `expert` (whole layer, every parameter type)."""
        return [self.cell(expert, i, "total").relative_change for i in range(self.num_layers)]


# --- outputs ---------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    """inf/nan -> null, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _write_tables(analysis: Analysis, out: Path) -> list[Path]:
    with open(out / "analysis.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(Row.__dataclass_fields__)
        for row in analysis.rows:
            writer.writerow(["" if v is None else v for v in asdict(row).values()])
    data = {
        "base": analysis.base,
        "experts": analysis.experts,
        "architecture": analysis.architecture,
        "num_layers": analysis.num_layers,
        "parameters": analysis.parameters,
        "top_fraction": TOP_FRACTION,
        "formulas": {
            "relative_change": "||W_expert - W_base||_F / ||W_base||_F (null: base all zeros)",
            "mean_abs_change": "mean of |W_expert - W_base|",
            "top_share": f"share of the expert's largest {TOP_FRACTION:.0%} "
            "|W_expert - W_base| (all analysed tensors pooled) that lies in the cell",
        },
        "summary": analysis.summary,
        "rows": [asdict(row) for row in analysis.rows],
        "suggestion": asdict(analysis.suggestion) if analysis.suggestion else None,
    }
    (out / "analysis.json").write_text(json.dumps(_json_safe(data), indent=1) + "\n")
    return [out / "analysis.json", out / "analysis.csv"]


def _row_label(layer: int | None, name: str) -> str:
    return name if layer is None else f"layer {layer}"


def _plot_heatmaps(analysis: Analysis, out: Path) -> list[Path]:
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure

    columns = [*analysis.parameters, "total"]
    grids = {}
    for expert in analysis.experts:
        grid = np.full((len(analysis.order), len(columns)), np.nan)
        for r in analysis.rows:
            if r.expert == expert:
                y = analysis.order.index((r.layer, "total" if r.layer is not None else r.parameter))
                grid[y, columns.index(r.parameter) if r.layer is not None else -1] = (
                    r.relative_change
                )
        grids[expert] = grid
    values = np.concatenate([g[np.isfinite(g) & (g > 0)] for g in grids.values()])
    norm = LogNorm(values.min(), values.max()) if values.size else Normalize(0, 1)
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    files = []
    for expert, grid in grids.items():
        fig = Figure(figsize=(2.5 + 0.6 * len(columns), 1.5 + 0.25 * len(analysis.order)))
        ax = fig.subplots()
        image = ax.imshow(
            np.ma.masked_invalid(grid),
            aspect="auto",
            norm=norm,
            cmap=cmap,
            interpolation="nearest",
        )
        ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
        ax.set_yticks(range(len(analysis.order)), [_row_label(*o) for o in analysis.order])
        ax.set_title(f"{expert}: relative change per tensor (grey: no change)")
        fig.colorbar(image, ax=ax, label="‖ΔW‖_F / ‖W_base‖_F")
        path = out / f"heatmap-{expert}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        files.append(path)
    return files


def _plot_layers(analysis: Analysis, out: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    changes = {expert: analysis.layer_change(expert) for expert in analysis.experts}
    for expert, change in changes.items():
        ax.plot(range(analysis.num_layers), change, marker="o", label=expert)
    if all(0 < v < math.inf for change in changes.values() for v in change):
        ax.set_yscale("log")
    s = analysis.suggestion
    if s is not None:
        label: str | None = f"suggested: {s.donor}'s layers into {s.host}"
        for start, end in ((0, s.bottom), (analysis.num_layers - s.top, analysis.num_layers)):
            if end > start:
                ax.axvspan(start - 0.5, end - 0.5, color="tab:orange", alpha=0.15, label=label)
                label = None
    ax.set_xlabel("layer")
    ax.set_ylabel("‖ΔW‖_F / ‖W_base‖_F (whole layer)")
    ax.set_title("Where each expert changed: relative change per layer")
    ax.grid(alpha=0.3)
    ax.legend()
    path = out / "layers.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _suggestion_table(s: Suggestion) -> list[str]:
    lines = [f"{'layer':>5}  {'r_host':>10}  {'r_donor':>10}  {'donor/host':>10}"]
    donor = set(s.donor_layers)
    for layer, (h, d) in enumerate(zip(s.host_change, s.donor_change, strict=True)):
        mark = "  <- donor" if layer in donor else ""
        lines.append(f"{layer:>5}  {h:>10.4g}  {d:>10.4g}  {_ratio(d, h):>10.3g}{mark}")
    return lines


def _rule_text(s: Suggestion) -> str:
    return (
        f"layer l goes to the donor ({s.donor}) when r_donor(l) > {s.ratio:g} x r_host(l) "
        f"({s.host}), where r(l) = ||W_expert - W_base||_F / ||W_base||_F over all of layer "
        "l's tensors; bottom = the longest run of such layers from layer 0, top = the longest "
        "run ending at the last layer; transition = 1 when the host layers between the blocks "
        "leave room for one blended layer at each inner edge, else 0."
    )


def suggestion_yaml(s: Suggestion, host: Checkpoint, donor: Checkpoint, dtype: str) -> str:
    """A complete `layer_swap` config for `s`, with the rule and its numbers as comments."""
    import textwrap

    import yaml

    claims = {key: value for key, value in (("bottom", s.bottom), ("top", s.top)) if value}
    config = {
        "merge_method": "layer_swap",
        "base_model": host.merge_reference,
        "models": [
            {"model": host.merge_reference},
            {"model": donor.merge_reference, "parameters": claims},
        ],
        "parameters": {"transition": s.transition},
        "dtype": dtype,
    }
    comments = [
        "Suggested by `mergekit-layerswap analyze`; run: mergekit-yaml THIS_FILE OUTPUT_DIR",
        *textwrap.wrap("Rule: " + _rule_text(s), 90),
        "",
        *_suggestion_table(s),
    ]
    header = "".join(f"# {line}".rstrip() + "\n" for line in comments)
    return header + yaml.safe_dump(config, sort_keys=False)


def _write_report(analysis: Analysis, out: Path) -> Path:
    experts = list(analysis.experts)
    head = ["row", *(f"{e}: rel. change" for e in experts), *(f"{e}: top-1 %" for e in experts)]
    lines = [
        "# Layer analysis",
        "",
        f"Base `{analysis.base}`; experts "
        + ", ".join(f"{e} (`{ref}`)" for e, ref in analysis.experts.items())
        + f"; {analysis.architecture}, {analysis.num_layers} layers.",
        "",
        "Rel. change = ‖W_expert − W_base‖_F / ‖W_base‖_F over the row's tensors; top-1 % = the "
        "share of the expert's largest 1 % absolute changes that lies in the row. Per parameter "
        "type: `analysis.csv`, `analysis.json` and the heatmaps.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for layer, parameter in analysis.order:
        cells = [analysis.cell(e, layer, parameter) for e in experts]
        lines.append(
            f"| {_row_label(layer, parameter)} | "
            + " | ".join(f"{c.relative_change:.4g}" for c in cells)
            + " | "
            + " | ".join(f"{100 * c.top_share:.1f} %" for c in cells)
            + " |"
        )
    lines += [
        "",
        "| expert | dtype | rel. change (model) | mean abs. change | top 1 % = abs. change ≥ |",
        "|---|---|---|---|---|",
    ]
    for expert, facts in analysis.summary.items():
        lines.append(
            f"| {expert} | {facts['dtype']} | {facts['relative_change']:.4g} | "
            f"{facts['mean_abs_change']:.4g} | {facts['top_threshold']:.4g} |"
        )
    lines += ["", "![per-layer change](layers.png)", ""]
    lines += [f"![heatmap {e}](heatmap-{e}.png)" for e in experts]
    lines += ["", "## Suggested layer swap", ""]
    s = analysis.suggestion
    if s is None:
        lines.append("Pass `--host` and `--donor` for a suggested `layer_swap` config.")
    else:
        sentence = s.describe()
        lines.append(f"{sentence[0].upper()}{sentence[1:]}.")
        if s.donor_layers:
            lines.append(f"`{SUGGESTION_FILE}` runs as is: `mergekit-yaml {SUGGESTION_FILE} OUT`.")
        lines += ["", "Rule: " + _rule_text(s), "", "```", *_suggestion_table(s), "```"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# --- the command -----------------------------------------------------------------------------


def _check_names(names: Sequence[str], host: str | None, donor: str | None, ratio: float) -> None:
    if not names:
        raise AnalysisError("give at least one --expert NAME=MODEL")
    for name in names:
        if not _NAME.match(name):
            raise AnalysisError(
                f"expert name {name!r} may hold only letters, digits, '_', '-' and '.' "
                "(it names output files)"
            )
        if names.count(name) > 1:
            raise AnalysisError(f"expert {name!r} is given twice; give each expert once")
    if (host is None) != (donor is None):
        raise AnalysisError("give --host and --donor together (or neither)")
    for option, name in (("--host", host), ("--donor", donor)):
        if name is not None and name not in names:
            raise AnalysisError(f"{option} {name!r} is not among the experts ({', '.join(names)})")
    if host is not None and host == donor:
        raise AnalysisError("--host and --donor must be two different experts")
    if not ratio > 0:
        raise AnalysisError(f"--ratio must be positive, got {ratio}")


def _load(base: str, experts: Sequence[tuple[str, str]]) -> tuple[list[Checkpoint], Layout]:
    """Read every model's headers and config; check they describe the same shapes."""
    models = [read_checkpoint("base", base)]
    seen: dict[Path, str] = {}
    for name, reference in experts:
        model = read_checkpoint(name, reference)
        where = model.path.resolve()
        if where in seen:
            raise AnalysisError(
                f"experts {seen[where]!r} and {name!r} are the same model ({where})"
            )
        seen[where] = name
        models.append(model)
    layout = read_layout("base", models[0].path)
    for model in models[1:]:
        layers = read_layout(model.name, model.path).num_layers
        if layers != layout.num_layers:
            raise AnalysisError(
                f"expert {model.name!r} has {layers} layers, the base has {layout.num_layers}"
            )
    return models, layout


def analyze(
    base: str,
    experts: Sequence[tuple[str, str]],
    output: str | Path,
    *,
    host: str | None = None,
    donor: str | None = None,
    ratio: float = 1.0,
    progress: bool = False,
) -> Analysis:
    """Measure how far each expert moved from `base` and write every output into `output`.

    `experts` are (name, model) pairs; a model is a local directory or a Hub id. With `host`
    and `donor` (two expert names) a `layer_swap` config is suggested. Every input is checked
    before any tensor is read; bad input raises AnalysisError.
    """
    from tqdm import tqdm

    _check_names([name for name, _ in experts], host, donor, ratio)
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise AnalysisError(f"--output {output} is a file, not a folder")
    models, layout = _load(base, experts)
    items = _plan(models[0], models[1:], layout)
    total = sum(  # the base is read once per expert
        models[0].nbytes(item.keys[0]) + m.nbytes(key)
        for item in items
        for m, key in zip(models[1:], item.keys[1:], strict=True)
    )
    with tqdm(total=total, unit="B", unit_scale=True, disable=not progress) as bar:
        sums = _stream(models, items, bar.update)

    rows: list[Row] = []
    summary = {}
    elements = sum(math.prod(item.shape) for item in items)
    for i, (model, expert) in enumerate(zip(models[1:], sums, strict=True), start=1):
        shares, top_facts = expert.top.result()
        rows += _rows(model.name, items, expert, shares)
        summary[model.name] = {
            "dtype": model.dtype([item.keys[i] for item in items]),
            "elements": elements,
            "relative_change": _ratio(
                math.sqrt(sum(expert.square)), math.sqrt(sum(expert.base_square))
            ),
            "mean_abs_change": sum(expert.absolute) / elements,
            **top_facts,
        }
    order = list(
        dict.fromkeys(
            (None, i.role.parameter) if i.role.layer is None else (i.role.layer, "total")
            for i in items
        )
    )
    parameters = list(dict.fromkeys(i.role.parameter for i in items if i.role.layer is not None))
    analysis = Analysis(
        base,
        dict(experts),
        layout.architecture,
        layout.num_layers,
        parameters,
        order,
        rows,
        summary,
    )
    if host is not None and donor is not None:
        analysis = replace(
            analysis,
            suggestion=suggest(
                host, donor, analysis.layer_change(host), analysis.layer_change(donor), ratio
            ),
        )

    out.mkdir(parents=True, exist_ok=True)
    files = [*_write_tables(analysis, out), *_plot_heatmaps(analysis, out)]
    files.append(_plot_layers(analysis, out))
    s = analysis.suggestion
    if s is not None and s.donor_layers:
        by_name = {m.name: m for m in models}
        text = suggestion_yaml(s, by_name[s.host], by_name[s.donor], summary[s.host]["dtype"])
        (out / SUGGESTION_FILE).write_text(text)
        files.append(out / SUGGESTION_FILE)
    else:  # no stale suggestion from an earlier run
        (out / SUGGESTION_FILE).unlink(missing_ok=True)
    files.append(_write_report(analysis, out))
    return replace(analysis, files=files)
