"""Materialise the tree of one commit into a directory, atomically; prune old checkouts."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from dulwich.object_store import BaseObjectStore, tree_lookup_path
from dulwich.objects import Blob, Commit, ObjectID, Tree
from dulwich.repo import Repo

from olladist.source.errors import SourceError

log = logging.getLogger("olladist.source")

SHA_RE = re.compile(r"[0-9a-f]{40}")
# <sha> for the repository root, <sha>.<8 hex of the path> for a subdirectory.
_CHECKOUT_RE = re.compile(r"(?P<sha>[0-9a-f]{40})(\.[0-9a-f]{8})?")
_TMP_PREFIX = ".tmp-"


def normalise_subpath(path: str) -> str:
    """Return PATH as clean relative posix form ("" for the root); refuse escapes."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if path.startswith("/") or ".." in parts:
        raise SourceError(
            f"spec path {path!r} must be relative and stay inside the repository",
            hint="use a path such as 'clusters/lab' (no leading '/', no '..')",
        )
    return "/".join(parts)


def _safe_name(name: bytes) -> bool:
    # Git itself refuses these; a hand-crafted tree could still hold them.
    return name not in (b"", b".", b"..", b".git") and b"/" not in name and b"\0" not in name


def checkout_name(sha: str, subpath: str) -> str:
    """Directory name of a checkout. A subdirectory gets a suffix so that two sources with
    different paths sharing a state dir can never hand out each other's files."""
    if not subpath:
        return sha
    return f"{sha}.{hashlib.sha256(subpath.encode()).hexdigest()[:8]}"


def materialise(repo: Repo, commit: Commit, subpath: str, checkouts: Path) -> Path:
    """Write the tree of SUBPATH at COMMIT to CHECKOUTS/<name>/ (kept if already there)."""
    sha = commit.id.decode("ascii")
    target = checkouts / checkout_name(sha, subpath)
    if target.is_dir():
        os.utime(target)  # mtime = last use, so pruning keeps the recently used ones
        return target
    store = repo.object_store
    tree_id = commit.tree
    if subpath:
        try:
            mode, tree_id = tree_lookup_path(store.__getitem__, commit.tree, subpath.encode())
        except KeyError:
            raise SourceError(
                f"path {subpath!r} does not exist in commit {sha}",
                hint="check OLLADIST_PATH / --path against the repository layout",
            ) from None
        if not stat.S_ISDIR(mode):
            raise SourceError(f"path {subpath!r} in commit {sha} is a file, not a directory")
    checkouts.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{sha[:12]}-", dir=checkouts))
    try:
        _write_tree(store, tree_id, tmp, sha)
        tmp.chmod(0o755)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("checkout commit=%s dir=%s", sha, target)
    return target


def _write_tree(store: BaseObjectStore, tree_id: ObjectID, dest: Path, sha: str) -> None:
    tree = store[tree_id]
    assert isinstance(tree, Tree)
    for entry in tree.iteritems():
        name, mode, child = entry.path, entry.mode, entry.sha
        if not _safe_name(name):
            raise SourceError(f"commit {sha} holds an unsafe file name {name!r}")
        path = dest / name.decode("utf-8", errors="surrogateescape")
        if stat.S_ISDIR(mode):
            path.mkdir(mode=0o755)
            _write_tree(store, child, path, sha)
        elif stat.S_ISREG(mode):
            blob = store[child]
            assert isinstance(blob, Blob)
            path.write_bytes(blob.as_raw_string())
            path.chmod(0o755 if mode & 0o111 else 0o644)
        else:
            # Symlinks could point outside the checkout and submodules are other repositories:
            # neither belongs in a spec, so they are left out and said so.
            kind = "symlink" if stat.S_ISLNK(mode) else "submodule"
            log.warning("checkout skipped commit=%s path=%s kind=%s", sha, path.name, kind)


def prune(checkouts: Path, keep: int, protect: set[str]) -> list[str]:
    """Delete all but the KEEP newest checkouts, never one of a commit in PROTECT; drop stale
    temp dirs.

    Call with the source lock held, so no temp dir belongs to a running checkout.
    """
    if not checkouts.is_dir():
        return []
    entries = [p for p in checkouts.iterdir() if p.is_dir()]
    for stale in (p for p in entries if p.name.startswith(_TMP_PREFIX)):
        shutil.rmtree(stale, ignore_errors=True)
    done = sorted(
        (p for p in entries if _CHECKOUT_RE.fullmatch(p.name)),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    removed = []
    for old in done[keep:]:
        if old.name[:40] in protect:
            continue
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old.name)
    if removed:
        log.info("checkout pruned commits=%s", ",".join(removed))
    return removed
