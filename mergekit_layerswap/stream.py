"""Write safetensors shards whose tensors are byte ranges of other safetensors files.

A layer swap copies almost every tensor unchanged, so the fastest exact merge is a copy of
bytes: headers are read (JSON, no tensor data), each output shard's header is written up
front, and each copied tensor goes from the input file to the output file inside the
kernel (`os.copy_file_range`), never through Python memory. Tensors that must be computed
(transition layers) come from a callback as raw bytes. The layout of each shard is the one
`safetensors.torch.save_file` produces (tests compare the bytes), and shards are named and
indexed as mergekit's writer names them. Files appear under their final names only when
complete. No torch here.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from mergekit_layerswap.checkpoint import Stored
from mergekit_layerswap.checkpoint import read_header as read_header  # the one reader

#: safetensors' dtype enum order; save_file lays tensors out by descending rank, then name.
_DTYPES = "BOOL U8 I8 F8_E5M2 F8_E4M3 F8_E8M0 I16 U16 F16 BF16 I32 U32 F32 C64 F64 I64 U64"
DTYPE_RANK = {name: rank for rank, name in enumerate(_DTYPES.split())}
_CHUNK = 64 << 20
_BINARY = getattr(os, "O_BINARY", 0)  # Windows opens files in text mode otherwise
#: How far ahead of the copy the kernel is asked to read (posix_fadvise WILLNEED): reads of
#: the next tensors overlap the writes of this one, without flooding the page cache.
PREFETCH = 1 << 30


def _pread(handle: int, count: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(handle, count, offset)
    os.lseek(handle, offset, os.SEEK_SET)  # Windows
    return os.read(handle, count)


def read_bytes(files: dict[str, int], item: Stored) -> bytearray:
    """A stored tensor's bytes (a writable buffer, e.g. for torch.frombuffer), read through
    the writer's one descriptor of its file (`files`: path -> descriptor)."""
    handle = _handle(files, item.path)
    data = bytearray(item.end - item.start)
    done = 0
    while done < len(data):
        chunk = _pread(handle, len(data) - done, item.start + done)
        if not chunk:
            raise OSError(errno.EIO, f"{item.path}: unexpected end of file")
        data[done : done + len(chunk)] = chunk
        done += len(chunk)
    return data


@dataclass(frozen=True)
class OutputTensor:
    """One tensor to write: copied from `source`, or computed by `compute(read)` (raw bytes
    of `dtype`/`shape`, C order) from the stored tensors `reads` (read ahead of time;
    `read(item)` returns one's bytes through the writer's open files)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    source: Stored | None = None
    compute: Callable[[Callable[[Stored], bytearray]], memoryview | bytes] | None = None
    reads: tuple[Stored, ...] = ()

    @property
    def nbytes(self) -> int:
        if self.source is not None:
            return self.source.end - self.source.start
        return math.prod(self.shape) * _itemsize(self.dtype)


def _itemsize(dtype: str) -> int:
    if dtype == "BOOL" or dtype.startswith(("U8", "I8", "F8")):
        return 1
    return int("".join(ch for ch in dtype if ch.isdigit())) // 8


def shard_groups(tensors: list[OutputTensor], max_shard_size: int) -> list[list[OutputTensor]]:
    """Fill shards in order, as mergekit's TensorWriter does (a shard is closed when the
    next tensor would take it past `max_shard_size`; 0 means one shard)."""
    shards: list[list[OutputTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and max_shard_size > 0 and size + tensor.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards


def shard_header(tensors: Iterable[OutputTensor]) -> tuple[bytes, list[OutputTensor]]:
    """The header bytes (length prefix included) and data order of one shard, as
    `safetensors.torch.save_file(..., metadata={"format": "pt"})` writes them."""
    ordered = sorted(tensors, key=lambda t: (-DTYPE_RANK[t.dtype], t.name))
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor in ordered:
        header[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, ordered


def _copy_range(source: int, target: int, start: int, count: int) -> None:
    """Append `count` bytes of `source` from `start` to `target` (in the kernel if it can)."""
    done = 0
    if hasattr(os, "copy_file_range"):  # Linux; macOS and Windows copy through user space
        try:
            while done < count:
                copied = os.copy_file_range(source, target, count - done, start + done)
                if copied == 0:
                    raise OSError(errno.EIO, "unexpected end of input file")
                done += copied
            return
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
    os.lseek(source, start + done, os.SEEK_SET)
    while done < count:  # no copy_file_range, or a filesystem without it
        chunk = os.read(source, min(_CHUNK, count - done))
        if not chunk:
            raise OSError(errno.EIO, "unexpected end of input file")
        os.write(target, chunk)
        done += len(chunk)


def _handle(files: dict[str, int], path: str) -> int:
    if path not in files:
        files[path] = os.open(path, os.O_RDONLY | _BINARY)
    return files[path]


def _prefetch(tensors: list[OutputTensor], files: dict[str, int]):
    """Yield each tensor after asking the kernel to read the inputs of the tensors up to
    PREFETCH bytes ahead of it."""

    def inputs(tensor: OutputTensor) -> tuple[Stored, ...]:
        return (tensor.source,) if tensor.source is not None else tensor.reads

    if not hasattr(os, "posix_fadvise"):  # macOS, Windows: the kernel's own read-ahead
        yield from tensors
        return
    ahead, issued = 0, 0
    for tensor in tensors:
        while issued < len(tensors) and ahead < PREFETCH:
            for item in inputs(tensors[issued]):
                handle = _handle(files, item.path)
                os.posix_fadvise(handle, item.start, item.end - item.start, os.POSIX_FADV_WILLNEED)
                ahead += item.end - item.start
            issued += 1
        yield tensor
        ahead -= sum(item.end - item.start for item in inputs(tensor))


def _write_shard(path: Path, tensors: list[OutputTensor], files: dict, progress: tqdm) -> None:
    header, ordered = shard_header(tensors)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _BINARY, 0o644)
    try:
        os.write(target, header)
        for tensor in _prefetch(ordered, files):
            if tensor.source is None:
                data = memoryview(tensor.compute(functools.partial(read_bytes, files))).cast("B")
                if len(data) != tensor.nbytes:
                    raise ValueError(
                        f"{tensor.name}: computed {len(data)} bytes, expected {tensor.nbytes}"
                    )
                while data:
                    data = data[os.write(target, data) :]
            else:
                handle = _handle(files, tensor.source.path)
                _copy_range(handle, target, tensor.source.start, tensor.nbytes)
            progress.update(tensor.nbytes)
    finally:
        os.close(target)


def write_model(
    folder: str | Path,
    tensors: list[OutputTensor],
    *,
    max_shard_size: int = 5 * 1000**3,
    index_metadata: dict | None = None,
    quiet: bool = False,
) -> list[str]:
    """Write `tensors` as model.safetensors (or numbered shards plus the index, as mergekit
    names them) into `folder`; returns the shard file names. Shards are written under
    hidden names and renamed into place when all are complete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    groups = shard_groups(tensors, max_shard_size)
    names = (
        ["model.safetensors"]
        if len(groups) == 1
        else [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    )
    partial = [folder / f".{name}.partial" for name in names]
    files: dict[str, int] = {}
    total = sum(t.nbytes for t in tensors)
    try:
        with tqdm(total=total, unit="B", unit_scale=True, desc="layer_swap", disable=quiet) as bar:
            for group, path in zip(groups, partial, strict=True):
                _write_shard(path, group, files, bar)
        for path, name in zip(partial, names, strict=True):
            os.replace(path, folder / name)
    finally:
        for handle in files.values():
            os.close(handle)
        for path in partial:
            path.unlink(missing_ok=True)
    if len(groups) > 1:
        index = {
            "metadata": {"total_size": total, **(index_metadata or {})},
            "weight_map": {
                t.name: name for group, name in zip(groups, names, strict=True) for t in group
            },
        }
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return names
