"""The streamed write of a whole layer swap, as one mergekit task.

mergekit's executor would load, merge and save every tensor through torch; for a swap, most
output tensors are byte copies of one input. `stream_rows` turns mergekit's planned save tasks
into rows (each output tensor's stored sources, weights and dtypes) and `StreamSwap` writes
them with `stream.write_model`: copies go from file to file in the kernel, transition tensors
are blended with `method.combine`. The bytes equal those of mergekit's per-tensor tasks, which
it replaces (see `patches.guard_planner`); where it cannot (`stream_rows` returns None),
mergekit's executor runs as usual.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from importlib.metadata import version

import torch
from mergekit.common import dtype_from_name
from mergekit.graph import Task

from mergekit_layerswap import checkpoint, stream, swap
from mergekit_layerswap.method import combine

#: Set to 0 to run layer_swap through mergekit's per-tensor executor instead of StreamSwap.
STREAM_ENV = "MERGEKIT_LAYERSWAP_STREAM"
#: safetensors dtype -> torch dtype, for the floating-point dtypes a merge handles.
_TORCH_DTYPES = {st: getattr(torch, name) for st, (name, _) in checkpoint.FLOAT_DTYPES.items()}
_ST_DTYPES = {dtype: name for name, dtype in _TORCH_DTYPES.items()}


@dataclass(frozen=True)
class _Row:
    """One output tensor of a streamed swap: its sources as (stored tensor, weight), its
    output dtype, and the dtype mergekit's loader casts inputs to (None: no cast)."""

    name: str
    parts: tuple[tuple[stream.Stored, float], ...]
    dtype: str
    load: str | None


class StreamSwap(Task[None]):
    """A whole layer swap as one mergekit task: copied tensors go from file to file in the
    kernel, transition tensors are blended with `combine`; the bytes equal those of
    mergekit's per-tensor tasks, which it replaces (see `guard_planner`)."""

    out_path: str
    tensors: tuple[_Row, ...]
    max_shard_size: int
    quiet: bool = False

    def arguments(self) -> dict[str, Task]:
        return {}

    def main_thread_only(self) -> bool:
        return True

    def execute(self) -> None:
        stream.write_model(
            self.out_path,
            [_output_tensor(row) for row in self.tensors],
            max_shard_size=self.max_shard_size,
            index_metadata={"mergekit_version": version("mergekit")},
            quiet=self.quiet,
        )


def _output_tensor(row: _Row) -> stream.OutputTensor:
    """A row as the writer's tensor: a byte copy when it has one source and no cast,
    otherwise computed as mergekit would (cast to `load`, align, combine, cast)."""
    stored = [item for item, _ in row.parts]
    name, dtype, load = row.name, row.dtype, row.load
    if len(stored) == 1 and stored[0].dtype == dtype and load in (None, dtype):
        return stream.OutputTensor(name, dtype, stored[0].shape, source=stored[0])

    def compute() -> memoryview:
        tensors = []
        for item in stored:
            raw = stream.read_bytes(item)
            tensor = torch.frombuffer(raw, dtype=_TORCH_DTYPES[item.dtype]).reshape(item.shape)
            tensors.append(tensor.to(_TORCH_DTYPES[load]) if load else tensor)
        aligned = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
        result = combine([t.to(aligned) for t in tensors], [w for _, w in row.parts])
        return memoryview(result.to(_TORCH_DTYPES[dtype]).contiguous().view(torch.uint8).numpy())

    return stream.OutputTensor(name, dtype, stored[0].shape, compute=compute, reads=tuple(stored))


def stream_rows(planner, tasks: list) -> tuple[_Row, ...] | None:
    """The planned merge as StreamSwap rows, or None where mergekit's executor must run
    it (tokenizer or vocabulary work, LoRA, pickles, multi-GPU, names the loader resolves
    through aliases or tied weights, non-float tensors, the opt-out variable)."""
    from mergekit.io.tasks import FinalizeModel, LoaderCache, SaveTensor

    plan, references = getattr(planner, "_layerswap", (None, {}))
    options, config = planner.options, planner.config
    if (
        plan is None
        or os.environ.get(STREAM_ENV, "1") == "0"
        or not options.safe_serialization
        or options.multi_gpu
        or options.read_to_gpu
        or options.unsafe_truncate_embeddings
        or not all(isinstance(task, (SaveTensor, FinalizeModel)) for task in tasks)
    ):
        return None
    indexes = {name: LoaderCache().get(ref).index for name, ref in references.items()}
    if any(ref.lora for ref in references.values()) or not all(
        index.is_safetensors for index in indexes.values()
    ):
        return None
    load = _ST_DTYPES.get(dtype_from_name(config.dtype)) if config.dtype else None
    if config.dtype and load is None:
        return None
    headers: dict[str, dict[str, stream.Stored]] = {}
    rows = []
    for save in (task for task in tasks if isinstance(task, SaveTensor)):
        position = checkpoint.tensor_position(save.tensor_name)
        weights = swap.tensor_weights(position, plan.num_layers, plan.swap)
        parts = []
        for model, weight in weights.items():
            shard = indexes[model].tensor_paths.get(save.tensor_name)
            if shard is None:
                return None
            path = os.path.join(indexes[model].base_path, shard)
            if path not in headers:
                headers[path] = stream.read_header(path)
            item = headers[path][save.tensor_name]
            if item.dtype not in _TORCH_DTYPES:
                return None
            parts.append((item, weight))
        loaded = [_TORCH_DTYPES[load or item.dtype] for item, _ in parts]
        dtype = dtype_from_name(save.dtype) or functools.reduce(torch.promote_types, loaded)
        if dtype not in _ST_DTYPES:
            return None
        rows.append(_Row(save.tensor_name, tuple(parts), _ST_DTYPES[dtype], load))
    return tuple(rows)
