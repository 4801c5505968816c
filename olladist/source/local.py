"""DirSource: a plain local directory (development); its commit id is a hash of its files."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from threading import Event

import watchfiles

from olladist.source.errors import SourceError
from olladist.source.result import FetchResult

log = logging.getLogger("olladist.source")

DIR_PREFIX = "dir:"


def _ignored(name: str) -> bool:
    # Hidden files (.git, editor locks) and backups are not spec files; an editor touching
    # them must not look like an edit of the spec.
    return name.startswith(".") or name.endswith("~") or name == "__pycache__"


def content_id(root: Path) -> str:
    """`dir:` + sha256 over the relative path and content of every non-hidden file."""
    digest = hashlib.sha256()
    files: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _ignored(d)]
        for name in filenames:
            if not _ignored(name):
                full = Path(dirpath, name)
                files.append((full.relative_to(root).as_posix(), full))
    for rel, full in sorted(files):
        try:
            data = full.read_bytes()
        except FileNotFoundError:
            continue  # deleted while we walked; the watcher will report it
        except OSError as exc:
            raise SourceError(f"cannot read spec file {full}: {exc}") from exc
        digest.update(rel.encode("utf-8", errors="surrogateescape") + b"\0")
        digest.update(hashlib.sha256(data).digest())
    return DIR_PREFIX + digest.hexdigest()[:40]


class DirSource:
    """The spec files in a local directory, read in place."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().absolute()
        self._last: str | None = None

    def describe(self) -> str:
        return f"dir {self.path}"

    def _require_dir(self) -> None:
        if not self.path.is_dir():
            raise SourceError(
                f"spec directory {self.path} does not exist",
                hint="give --spec DIR or OLLADIST_SOURCE a directory holding cluster.yaml",
            )

    def commit(self) -> str:
        self._require_dir()
        return content_id(self.path)

    def poll(self, accepted: str | None = None) -> FetchResult:
        commit = self.commit()
        baseline = accepted if accepted is not None else self._last
        self._last = commit
        changed = commit != baseline
        if changed:
            log.info("poll dir=%s commit=%s changed=True", self.path, commit)
        return FetchResult(commit=commit, changed=changed, checkout=self.path)

    def checkout(self, commit: str) -> Path:
        """The directory, if it still holds COMMIT (a directory keeps no history)."""
        current = self.commit()
        if commit != current:
            raise SourceError(
                f"{self.path} no longer holds {commit} (now {current}); a local directory "
                "keeps no history",
            )
        return self.path

    def watch(self, *, debounce_ms: int = 200, stop_event: Event | None = None) -> Iterator[str]:
        """Yield the new commit id each time the spec files change (debounced).

        Changes that leave the content as it was (touch, hidden files) yield nothing. Stops
        when STOP_EVENT is set.
        """
        self._require_dir()
        last = content_id(self.path)
        for _changes in watchfiles.watch(
            self.path,
            debounce=debounce_ms,
            step=50,
            stop_event=stop_event,
            rust_timeout=1000,
            yield_on_timeout=False,
        ):
            current = content_id(self.path)
            if current != last:
                last = current
                log.info("watch dir=%s commit=%s", self.path, current)
                yield current
