"""Where the cluster spec comes from: a git repository (via dulwich) or a local directory.

A source knows nothing of the spec's contents: `poll()` gives a commit id and a directory
holding the spec files of that commit. See docs/source.md for the operator's view.

    src = open_source("https://git.example/ops/cluster.git", state_dir=STATE_DIR)
    result = src.poll(accepted=last_applied_commit)
    if result.changed:
        spec = load_spec(result.checkout)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from olladist.source.errors import (
    FetchError,
    RollbackRefused,
    SignatureError,
    SourceError,
    redact_url,
)
from olladist.source.git import GitSource
from olladist.source.local import DirSource, content_id
from olladist.source.result import FetchResult
from olladist.source.verify import GpgVerify, SshVerify, Verify

__all__ = [
    "DirSource",
    "FetchError",
    "FetchResult",
    "GitSource",
    "GpgVerify",
    "RollbackRefused",
    "SignatureError",
    "Source",
    "SourceError",
    "SshVerify",
    "Verify",
    "content_id",
    "open_source",
    "redact_url",
    "source_from_env",
    "verify_from_env",
]


class Source(Protocol):
    def describe(self) -> str: ...

    def poll(self, accepted: str | None = None) -> FetchResult: ...

    def checkout(self, commit: str) -> Path: ...


def _is_git_location(location: str) -> bool:
    if "://" in location:
        return True
    path = Path(location).expanduser()
    if path.exists():
        bare = (path / "HEAD").is_file() and (path / "objects").is_dir()
        return bare or (path / ".git").exists()
    head = location.split("/", 1)[0]
    return ":" in head  # scp-like user@host:repo.git


def open_source(
    location: str | os.PathLike[str],
    *,
    state_dir: str | os.PathLike[str],
    ref: str = "main",
    path: str = ".",
    verify: Verify | None = None,
    allow_rollback: bool = False,
    floor_file: str | os.PathLike[str] | None = None,
) -> GitSource | DirSource:
    """A GitSource for a URL or a git repository on disk, else a DirSource of LOCATION/PATH.

    A local git repository is read at its committed REF (the GitOps contract); to try
    uncommitted edits, give the directory to DirSource (`--spec DIR`).
    """
    text = os.fspath(location)
    if _is_git_location(text):
        return GitSource(
            text,
            ref,
            path,
            state_dir=state_dir,
            verify=verify,
            allow_rollback=allow_rollback,
            floor_file=floor_file,
        )
    if verify is not None:
        raise SourceError(
            f"{text} is a plain directory: it has no commits whose signatures could be checked",
            hint="point OLLADIST_SOURCE at a git repository, or drop the verification settings",
        )
    return DirSource(Path(text) / path)


def _truthy(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def verify_from_env(env: Mapping[str, str], state_dir: Path) -> Verify | None:
    """Signature settings from OLLADIST_VERIFY_GPG_KEYS (+ OLLADIST_GNUPGHOME) or
    OLLADIST_VERIFY_SSH_ALLOWED_SIGNERS; None when neither is set."""
    gpg_keys = env.get("OLLADIST_VERIFY_GPG_KEYS", "").replace(",", " ").split()
    allowed = env.get("OLLADIST_VERIFY_SSH_ALLOWED_SIGNERS", "").strip()
    if gpg_keys and allowed:
        raise SourceError(
            "both OLLADIST_VERIFY_GPG_KEYS and OLLADIST_VERIFY_SSH_ALLOWED_SIGNERS are set",
            hint="sign the cluster repository one way and keep only that setting",
        )
    if gpg_keys:
        home = env.get("OLLADIST_GNUPGHOME", "").strip()
        return GpgVerify(tuple(gpg_keys), Path(home) if home else state_dir / "gnupg")
    if allowed:
        return SshVerify(Path(allowed))
    return None


def source_from_env(
    env: Mapping[str, str], state_dir: Path, floor_file: Path | None = None
) -> GitSource | DirSource:
    """The source a node's olladist.env describes (OLLADIST_SOURCE, _REF, _PATH, ...);
    ``floor_file``: where the accepted commit is also kept (outside state_dir)."""
    location = env.get("OLLADIST_SOURCE", "").strip()
    if not location:
        raise SourceError(
            "OLLADIST_SOURCE is not set",
            hint="set it in /etc/olladist/olladist.env to the cluster-spec git URL",
        )
    return open_source(
        location,
        state_dir=state_dir,
        ref=env.get("OLLADIST_REF", "").strip() or "main",
        path=env.get("OLLADIST_PATH", "").strip() or ".",
        verify=verify_from_env(env, state_dir),
        allow_rollback=_truthy(env.get("OLLADIST_ALLOW_ROLLBACK", "")),
        floor_file=floor_file,
    )
