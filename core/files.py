"""Writing and moving files so that a crash or a second process never sees half of one.

The durability rule, for every file cfd writes whole:
- Always atomic: the bytes go to a temp file beside the target (same directory, so same file
  system), which then replaces the target in one `os.replace`. A reader sees the old file or
  the new one, never a torn one; a writer killed midway leaves only a `.<name>.*.tmp` file,
  which `remove_temps` clears (callers do so under their own lock).
- Durable by default: the temp file is fsynced before the replace and the directory after
  it, so once `write_atomic` returns the new content survives a power cut.
- `durable=False` only for a file whose loss or staleness after a power cut costs nothing
  but repeated work (a cache, the agent's status board, a download's progress sidecar, the
  last-synced blob id): these are rewritten often and an fsync each time would cost more
  than the rare redo. Each caller says why at the call.

A model is never overwritten: `move_no_clobber` puts a file into place only where no file is.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Callable
from pathlib import Path

_serial = itertools.count()  # unique temp names for threads of one process


def temp_beside(path: Path) -> Path:
    """A fresh temp name beside `path`, matched by `remove_temps(path)`."""
    return path.with_name(f".{path.name}.{os.getpid()}-{next(_serial)}.tmp")


def remove_temps(path: Path) -> None:
    """Temp files that writers of `path` killed mid-write left behind (hold the file's lock)."""
    try:
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            try:
                stale.unlink()
            except OSError:
                pass
    except OSError:
        pass


def write_atomic(path: Path, data: bytes | str, *, durable: bool = True, mode: int | None = None,
                 check: Callable[[], None] | None = None) -> None:
    """Replace `path` with `data` (str is written as UTF-8, newlines untouched) atomically.

    `mode`: the new file's permissions; by default those of the file it replaces, if any.
    `check`: called after the data is written and before the replace; whatever it raises
    leaves `path` untouched (e.g. "the file changed while we worked"). The temp file never
    outlives the call. Raises OSError (a full disk, permissions) with `path` unchanged.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    temp = temp_beside(path)
    try:
        with open(temp, "wb") as handle:
            handle.write(payload)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(temp, mode)
        else:
            _keep_mode(path, temp)
        if check is not None:
            check()
        os.replace(temp, path)
    finally:
        try:
            temp.unlink()
        except FileNotFoundError:
            pass
    if durable:
        fsync_dir(path.parent)


def _keep_mode(path: Path, temp: Path) -> None:
    try:
        os.chmod(temp, path.stat().st_mode & 0o7777)
    except OSError:
        pass  # a new file: the umask decides, as for any file we create


def fsync_dir(path: Path) -> None:
    """Make a rename or link in `path` durable (best effort: not every system can open a dir)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def move_no_clobber(source: Path, target: Path) -> None:
    """Move `source` to `target`, never replacing a file there (FileExistsError instead).

    A hard link is the atomic "create only if absent"; without links (FAT, some shares) the
    target is checked, then renamed; across disks (a folder symlinked to another disk) the
    file is copied beside the target and fsynced first. A symlink moves as itself. Once the
    target is in place the source is removed (best effort: a leftover is only clutter).
    """
    if not os.path.islink(source):
        try:
            os.link(source, target)  # fails with FileExistsError instead of overwriting
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                _copy_across(source, target)
                return
        else:
            _remove_source(source)
            return
    if os.path.lexists(target):
        raise FileExistsError(str(target))
    os.replace(source, target)


def _copy_across(source: Path, target: Path) -> None:
    import shutil  # its import loads the archive codecs (bz2, lzma): only when copying

    tmp = temp_beside(target)
    try:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        move_no_clobber(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    _remove_source(source)


def _remove_source(source: Path) -> None:
    try:
        os.unlink(source)
    except OSError:
        pass  # the target is in place, which is what counts; a source left over is only clutter
