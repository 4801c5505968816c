"""Rendered files as values, and the one way olladist writes a file to disk."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class File:
    content: str
    mode: int = 0o644


def under_root(root: Path, path: str) -> Path:
    """Map an absolute node path (``/etc/olladist/x``) to its place under ``root``."""
    if not path.startswith("/"):
        raise ValueError(f"not an absolute path: {path!r}")
    return root / path.lstrip("/")


# A write takes milliseconds: a temp file this old was left by a writer that was killed.
STALE_TEMP_AGE = 60.0


def _remove_stale_temps(target: Path) -> None:
    """Remove temp files of ``target`` that a killed write left behind (SIGKILL between the
    temp file and the rename): they are never read, but would pile up."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[A-Za-z0-9_]{{8}}\.tmp")
    now = time.time()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(target.parent):
            if pattern.fullmatch(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_AGE:
                        os.unlink(entry.path)


def write_atomic(target: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``target`` so that a reader sees the old file or the new one, never a
    torn one: temp file in the same directory, fsync, chmod, rename, fsync the directory."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dirfd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def write_tree(files: dict[str, File], out: Path) -> None:
    """Write rendered files under ``out`` as they would be under ``/`` (for `olladist render`)."""
    for path, f in files.items():
        write_atomic(under_root(out, path), f.content.encode(), f.mode)
