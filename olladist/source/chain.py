"""Signatures over the whole way, and floors that survive a deleted state directory.

A signed tip alone vouches for the tip's tree, not for how it got there: an unsigned commit
pushed by someone without a key, with a signed commit later made on top of it, would go
through a tip-only check. So, when verification is on, every commit the tip brings that the
node has not accepted before must verify: the commits reachable from the tip and not from any
*bound*, merge parents included (a merge brings every commit of the merged branch, and each of
them changed the tree the node applies).

The bounds are the commits the tip must descend from:
- the commit the node accepted last (its status, under the state directory);
- the node's floor record, a copy of that commit kept outside the state directory
  (``/etc/olladist/accepted-commit``), so deleting ``/var/lib/olladist`` does not make the node
  forget where it was and accept an older signed commit;
- ``policy.min_commit`` in the tip's own spec: the committers' floor, which bounds the walk on
  a node that has neither (a fresh node) and must be an ancestor of the tip.
With no bound at all, only the tip is checked (a fresh node trusts its first signed tip).

This module reads one key of the spec (``policy.min_commit`` of ``cluster.yaml``) straight from
the commit's tree: the floor decides which commits are verified, before anything else of the
commit is used. The spec loader validates the same key with the rest of the spec.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import yaml
from dulwich.graph import can_fast_forward
from dulwich.objects import Blob, Commit, ObjectID, Tree
from dulwich.repo import Repo

from olladist.files import write_atomic
from olladist.source.errors import RollbackRefused, SignatureError, SourceError
from olladist.source.tree import SHA_RE
from olladist.source.verify import Verify, verify_commit

log = logging.getLogger("olladist.source")

# A range longer than this is refused rather than verified one gpg run at a time for minutes;
# it means a bound was lost (and there is no floor), or an unrelated history.
MAX_CHAIN = 5000
_MAX_SPEC_BYTES = 4 * 1024 * 1024  # as olladist.specload


def spec_floor(repo: Repo, commit: Commit, subpath: str) -> str | None:
    """``policy.min_commit`` of the spec in COMMIT (None: not set, or not readable here;
    the spec loader reports a malformed file)."""
    tree = repo.object_store[commit.tree]
    parts = [p for p in subpath.split("/") if p] + ["cluster.yaml"]
    obj: Any = tree
    for part in parts:
        if not isinstance(obj, Tree):
            return None
        try:
            _mode, sha = obj[part.encode()]
        except KeyError:
            return None
        obj = repo.object_store[sha]
    # The spec loader refuses larger files; do not parse one here either.
    if not isinstance(obj, Blob) or obj.raw_length() > _MAX_SPEC_BYTES:
        return None
    try:
        data = yaml.safe_load(obj.as_raw_string())
    except yaml.YAMLError:
        return None
    policy = data.get("policy") if isinstance(data, dict) else None
    floor = policy.get("min_commit") if isinstance(policy, dict) else None
    return floor if isinstance(floor, str) and SHA_RE.fullmatch(floor) else None


def descends(repo: Repo, ancestor: str, tip: str) -> bool:
    """TIP is ANCESTOR or has it in its history (False when ANCESTOR is not in the mirror:
    the mirror holds the tip's whole history)."""
    base = ObjectID(ancestor.encode())
    return base in repo.object_store and can_fast_forward(repo, base, ObjectID(tip.encode()))


def check_spec_floor(repo: Repo, floor: str | None, tip: str, where: str) -> None:
    """The tip must descend from its own spec's ``policy.min_commit``; no setting lifts this."""
    if floor is None or descends(repo, floor, tip):
        return
    raise RollbackRefused(
        f"refusing commit {tip} of {where}: its policy.min_commit {floor} is not in its "
        "history (the committers declared that no node may run a commit older than that)",
        accepted=floor,
        tip=tip,
        hint="set policy.min_commit to an ancestor of the new commit (git merge-base), "
        "or push the commit on top of the floor",
    )


def verify_range(
    repo: Repo,
    tip: Commit,
    bounds: list[str],
    verify: Verify,
    scratch: Path,
) -> int:
    """Verify every commit reachable from TIP and not from BOUNDS (those that are ancestors
    of TIP), the tip aside (the caller checked it first); return how many commits were
    checked with the tip, else raise SignatureError naming the first commit that fails."""
    tip_sha = tip.id.decode("ascii")
    known = [b for b in dict.fromkeys(bounds) if b != tip_sha and descends(repo, b, tip_sha)]
    if not known:
        # Nothing to walk from: a fresh node with no floor takes the tip on its signature
        # (or no bound is an ancestor: the descent checks refuse such a tip unless rollback
        # is allowed, and then only the tip can be checked).
        log.info("signature chain commit=%s checked=1 bound=none", tip_sha)
        return 1
    walker = repo.get_walker(
        include=[tip.id], exclude=[ObjectID(b.encode()) for b in known], max_entries=MAX_CHAIN + 1
    )
    checked = 1
    for entry in walker:
        commit = entry.commit
        if commit.id == tip.id:
            continue
        checked += 1
        if checked > MAX_CHAIN:
            raise SignatureError(
                f"commit {tip_sha} brings more than {MAX_CHAIN} commits since "
                f"{', '.join(known)}; refusing to verify them one by one",
                commit=tip_sha,
                hint="set policy.min_commit to a recent signed ancestor of the tip",
            )
        try:
            verify_commit(commit, verify, scratch)
        except SignatureError as exc:
            sha = commit.id.decode("ascii")
            raise SignatureError(
                f"refusing commit {tip_sha}: commit {sha} in its history since "
                f"{known[0][:12]} fails verification: {exc.message}",
                commit=sha,
                signer=exc.signer,
                tip=tip_sha,
                hint="every commit since the accepted one must be signed: re-sign them "
                "(git rebase --force-rebase --gpg-sign ACCEPTED) and push, or revert "
                "the change in a signed commit on top of a clean history",
            ) from exc
    log.info("signature chain commit=%s checked=%d bound=%s", tip_sha, checked, ",".join(known))
    return checked


class FloorRecord:
    """The last accepted commit, kept outside the state directory (one sha, one line)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def read(self) -> str | None:
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(
                f"cannot read the floor record {self.path}: {exc}",
                hint="it holds the last commit this node accepted; restore it, or remove "
                "it to trust the next signed tip on its own",
            ) from exc
        if not SHA_RE.fullmatch(text):
            raise SourceError(
                f"the floor record {self.path} does not hold a commit sha: {text[:80]!r}",
                hint="write the node's last applied commit (40 hex digits) into it, or "
                "remove it to trust the next signed tip on its own",
            )
        return text

    def write(self, commit: str) -> None:
        if self.read() == commit:
            return
        write_atomic(self.path, (commit + "\n").encode("ascii"), 0o644)
        log.info("floor record commit=%s file=%s", commit, self.path)
