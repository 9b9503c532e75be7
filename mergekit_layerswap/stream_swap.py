"""The streamed write of a whole layer swap, as one mergekit task.

mergekit's executor would load, merge and save every tensor through torch; for a swap, most
output tensors are byte copies of one input. `stream_rows` turns mergekit's planned save tasks
into rows (each output tensor's stored sources, weights and dtypes) and `StreamSwap` writes
them with `stream.write_model`: copies go from file to file in the kernel, transition tensors
are blended with `method.combine`. The bytes equal those of mergekit's per-tensor tasks, which
it replaces (see `plugin`); where it cannot (`stream_rows` returns None),
mergekit's executor runs as usual.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from importlib.metadata import version

import torch
from mergekit.common import ModelReference, dtype_from_name
from mergekit.graph import Task

from mergekit_layerswap import checkpoint, stream, swap_rule
from mergekit_layerswap.method import combine
from mergekit_layerswap.validate import CheckedSwap

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
    mergekit's per-tensor tasks, which it replaces (see `plugin`)."""

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

    def compute(read) -> memoryview:
        tensors = []
        for item in stored:
            raw = read(item)
            tensor = torch.frombuffer(raw, dtype=_TORCH_DTYPES[item.dtype]).reshape(item.shape)
            tensors.append(tensor.to(_TORCH_DTYPES[load]) if load else tensor)
        aligned = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
        result = combine([t.to(aligned) for t in tensors], [w for _, w in row.parts])
        return memoryview(result.to(_TORCH_DTYPES[dtype]).contiguous().view(torch.uint8).numpy())

    return stream.OutputTensor(name, dtype, stored[0].shape, compute=compute, reads=tuple(stored))


def _stored(
    swap: CheckedSwap, name: str, reference: ModelReference
) -> dict[str, stream.Stored] | None:
    """A model's stored tensors: the headers its check read (a local safetensors model), else
    those of the files mergekit's loader found (a Hub download); None for pickled weights."""
    from mergekit.io.tasks import LoaderCache

    found = swap.tensors.get(name)
    if found is not None and checkpoint.looks_local(checkpoint.split_reference(name)[0]):
        return found
    index = LoaderCache().get(reference).index
    if not index.is_safetensors:
        return None
    shards = {
        shard: stream.read_header(os.path.join(index.base_path, shard))
        for shard in set(index.tensor_paths.values())
    }
    return {tensor: shards[shard][tensor] for tensor, shard in index.tensor_paths.items()}


def stream_rows(
    swap: CheckedSwap, references: dict[str, ModelReference], tasks: list, options, config
) -> tuple[_Row, ...] | None:
    """mergekit's planned save tasks of a checked swap as StreamSwap rows, or None where
    mergekit's executor must run them (tokenizer or vocabulary work, LoRA, pickles,
    multi-GPU, names the loader resolves through aliases or tied weights, non-float
    tensors, the opt-out variable). `references`: each model's mergekit reference by name."""
    from mergekit.io.tasks import FinalizeModel, SaveTensor

    if (
        os.environ.get(STREAM_ENV, "1") == "0"
        or not options.safe_serialization
        or options.multi_gpu
        or options.read_to_gpu
        or options.unsafe_truncate_embeddings
        or not all(isinstance(task, (SaveTensor, FinalizeModel)) for task in tasks)
        or any(ref.lora for ref in references.values())
    ):
        return None
    stored = {name: _stored(swap, name, ref) for name, ref in references.items()}
    if any(found is None for found in stored.values()):
        return None
    load = _ST_DTYPES.get(dtype_from_name(config.dtype)) if config.dtype else None
    if config.dtype and load is None:
        return None
    rows = []
    for save in (task for task in tasks if isinstance(task, SaveTensor)):
        position = checkpoint.tensor_position(save.tensor_name)
        weights = swap_rule.tensor_weights(position, swap.num_layers, swap.swap)
        parts = []
        for model, weight in weights.items():
            item = stored[model].get(save.tensor_name)
            if item is None or item.dtype not in _TORCH_DTYPES:
                return None
            parts.append((item, weight))
        loaded = [_TORCH_DTYPES[load or item.dtype] for item, _ in parts]
        dtype = dtype_from_name(save.dtype) or functools.reduce(torch.promote_types, loaded)
        if dtype not in _ST_DTYPES:
            return None
        rows.append(_Row(save.tensor_name, tuple(parts), _ST_DTYPES[dtype], load))
    return tuple(rows)
