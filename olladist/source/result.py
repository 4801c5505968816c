"""What a poll of a source gives back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FetchResult:
    """One poll: the commit at the tip and the directory holding its spec files.

    commit: full 40-hex sha for git, `dir:<hash>` for a local directory.
    changed: the commit differs from the accepted one (or, when the caller gave none, from the
        commit the previous poll returned; the first poll is always a change).
    checkout: directory with the spec files of `commit` (read-only by convention).
    fetched: objects were transferred from the remote during this poll.
    signer: who signed the tip, when signatures are verified.
    verified: how many commits had their signature checked (the tip and those it brings
        since the accepted commit or floor); 0 when verification is off.
    floor: the tip's own ``policy.min_commit``, which it was checked to descend from.
    """

    commit: str
    changed: bool
    checkout: Path
    fetched: bool = False
    ref: str | None = None
    signer: str | None = None
    verified: int = 0
    floor: str | None = None
