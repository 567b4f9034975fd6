"""Atomic file writes: the one way dp_fast writes a file that a reader (or a resumed run) relies on.

    with atomic_write(path) as tmp:
        torch.save(obj, tmp)          # any writer that takes a file name

The data goes to a temporary file next to `path` (same folder, so the rename cannot cross file
systems), which is fsync'd, renamed onto `path` with os.replace (atomic on POSIX) and the folder
fsync'd. A reader therefore sees the previous complete file or the new complete file, never a part of
one, even if the process is SIGKILLed or the machine loses power mid-write. If the body raises, the
temporary file is removed and `path` is left as it was.

The temporary file is created with mode 0o666 and the kernel applies the process umask, so the
written file gets the permissions any plain `open(path, "w")` would give (0o644 under the usual
umask 022): a results folder shared with a group stays readable. tempfile.mkstemp would create it
0o600 and the rename would keep that. Some writers replace the file they are given by one of their
own (safetensors' save_file writes its own 0o600 temporary file and renames it onto the name), so the
mode the kernel gave at creation is recorded and set again before the rename.

Temporary names are `.<name>.<pid>-<random><suffix>`: hidden, unique per writer, and recognisable,
so that a folder's owner can delete the leftovers of a killed write (see train.resume).
"""
from __future__ import annotations

import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Tuple, Union

PathLike = Union[str, os.PathLike]


def _create_temp(path: Path, suffix: str) -> Tuple[Path, int]:
    """A new empty file next to `path` and the permission bits the kernel gave it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")
        try:
            fd = os.open(tmp, flags, 0o666)  # the umask applies, as for any new file
        except FileExistsError:
            continue
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        return tmp, mode
    raise FileExistsError(f"no free temporary name next to {path}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; not every platform / file system can open or sync a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path to write; on normal exit it replaces `path` atomically (see module doc).

    suffix: end of the temporary name, for writers that pick the format from it (".tmp.mp4" for ffmpeg).
    The parent folder is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, mode = _create_temp(path, suffix)
    try:
        yield tmp
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:  # the writer put its own file there
            os.chmod(tmp, mode)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
