"""The package's one way to write a file that a reader must never see half-written."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from mergekit_layerswap.errors import InputError


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write `data` (str as UTF-8) to `path` through a temporary file beside it, named for
    this process, then rename: a reader, or a rerun after a kill, finds the old file or the
    new one, never a part of one, and no temporary file stays behind. An OSError that names
    no file (a full disk: ENOSPC on write) is raised naming `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        partial.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(partial, path)
    except OSError as error:
        if error.filename is not None or error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error
    finally:
        partial.unlink(missing_ok=True)


@contextlib.contextmanager
def hold(folder: Path, lock_file: str, run: str, option: str) -> Iterator[None]:
    """Hold `folder` (made if missing) for this process: a second holder gets an InputError
    naming the first one's pid (`run`: what holds it, `option`: where to choose another).
    The lock dies with its process (no stale lock after a kill)."""
    import fcntl

    try:
        if folder.exists() and not folder.is_dir():
            raise InputError([f"{folder}: exists and is not a folder; choose {option}"])
        folder.mkdir(parents=True, exist_ok=True)
        handle = (folder / lock_file).open("a+")
    except OSError as error:
        reason = error.strerror or str(error)
        raise InputError(
            [f"{folder}: cannot write the output folder ({reason}); choose another {option}"]
        ) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            other = handle.read().strip() or "unknown"
            raise InputError(
                f"{folder}: another {run} (pid {other}) is using this output folder; wait for "
                f"it to finish or choose another {option}"
            ) from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def link_out(root: Path, path: Path) -> str | None:
    """A problem line when `path`, inside `root`, is a symbolic link leading out of `root`:
    what is written through it would land elsewhere."""
    if path.is_symlink() and not path.resolve().is_relative_to(root.resolve()):
        return f"{path} is a link out of {root} (to {path.resolve()}); remove the link"
    return None
