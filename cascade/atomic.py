"""Atomic file writes: write a temp file beside the target, fsync, rename, fsync the folder.

A reader never sees a half-written file; an interrupted write leaves the old file (or
nothing) in place, and a finished one survives a power cut. Used for images, checkpoints,
configs and result tables. Folders (training checkpoints) are made atomic the same way:
fill a temp folder, ``fsync_tree`` it, rename it into place, ``fsync_dir`` the parent.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from cascade.errors import CascadeError


def fsync_dir(path: str | os.PathLike) -> None:
    """Make new or renamed entries of folder ``path`` durable (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder under ``root`` (before renaming it into place)."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(folder)


def replace_dir(new: str | os.PathLike | None, dest: str | os.PathLike) -> None:
    """Put the finished folder ``new`` at ``dest`` (None: just remove ``dest``): fsync it,
    move the folder it replaces aside to ``.DEST.old``, rename ``new`` into place, fsync the
    parent, delete the old one. A reader sees the old folder or the new one; a crash between
    the two renames leaves ``.DEST.old``, which ``recover_dir`` puts back."""
    dest = Path(dest)
    old = dest.with_name(f".{dest.name}.old")
    if new is not None:
        fsync_tree(new)
    if dest.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(dest, old)
    if new is not None:
        os.replace(new, dest)
    fsync_dir(dest.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(dest: str | os.PathLike) -> None:
    """Undo a ``replace_dir`` cut off between its two renames: ``.DEST.old`` back to ``DEST``."""
    dest = Path(dest)
    old = dest.with_name(f".{dest.name}.old")
    if old.exists() and not dest.exists():
        os.replace(old, dest)


def writable_dir(path: str | os.PathLike, hint: str = "choose a writable output folder") -> Path:
    """Create folder ``path`` if needed and check a file can be written there, or raise a
    one-line CascadeError (also when a parent is a file, or the disk is read-only or full)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CascadeError(f"cannot write to {path}: {e.strerror or e}; {hint}") from None
    return path


def _create_temp(path: Path) -> tuple[int, str]:
    """A new ``.NAME.RANDOM.tmp`` beside ``path``, created with mode 0666 less the umask (what
    a plain open() gives; tempfile.mkstemp would make it 0600, unreadable to the group)."""
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file in ``path``'s folder; on success fsync it and rename onto ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(path)
    except OSError as e:
        raise CascadeError(
            f"cannot write to {path.parent}: {e.strerror}; choose a writable output directory"
        ) from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)
