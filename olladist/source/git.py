"""GitSource: the spec of one commit of a git repository, pulled with dulwich.

Layout under state_dir:
    git/                   bare mirror; per source (url, ref, path) refs/olladist/<key>/remote
                           = the remote ref's raw value, refs/olladist/<key>/tip = the last
                           commit poll() returned
    checkouts/<sha>/       the spec directory of that commit (the last few are kept);
                           <sha>.<8 hex>/ when the spec is a subdirectory of the repository
    tmp/                   scratch for signature checks
    source.lock            held during poll/checkout, so a CLI run and the daemon can share it
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import urllib3.exceptions
from dulwich.client import (
    GitClient,
    HTTPProxyUnauthorized,
    HTTPUnauthorized,
    InvalidWants,
    get_transport_and_path,
)
from dulwich.config import ConfigFile, StackedConfig
from dulwich.errors import GitProtocolError, NotGitRepository
from dulwich.graph import can_fast_forward
from dulwich.objects import Commit, ObjectID, ShaFile
from dulwich.refs import Ref
from dulwich.repo import Repo

from olladist.source.chain import FloorRecord, check_spec_floor, spec_floor, verify_range
from olladist.source.errors import FetchError, RollbackRefused, SourceError, redact_url
from olladist.source.result import FetchResult
from olladist.source.tree import SHA_RE, materialise, normalise_subpath, prune
from olladist.source.verify import Verify, verify_commit

log = logging.getLogger("olladist.source")

_PEELED_SUFFIX = b"^{}"

# What dulwich's transports raise when the remote cannot be read; translated into FetchError.
_TRANSPORT_ERRORS = (
    GitProtocolError,
    NotGitRepository,
    HTTPUnauthorized,
    HTTPProxyUnauthorized,
    InvalidWants,
    urllib3.exceptions.HTTPError,
    OSError,
    ValueError,
    KeyError,
)


def _location(url: str | os.PathLike[str]) -> str:
    """A URL stays as it is; a local path becomes absolute (dulwich resolves it per call)."""
    text = os.fspath(url)
    if "://" in text:
        return text
    head = text.split("/", 1)[0]
    if ":" in head and not Path(text).exists():
        return text  # scp-like user@host:repo.git
    return str(Path(text).expanduser().absolute())


class GitSource:
    """A branch or tag of a git repository, mirrored under state_dir."""

    def __init__(
        self,
        url: str | os.PathLike[str],
        ref: str = "main",
        path: str = ".",
        *,
        state_dir: str | os.PathLike[str],
        verify: Verify | None = None,
        allow_rollback: bool = False,
        keep: int = 3,
        timeout_s: float = 20.0,
        floor_file: str | os.PathLike[str] | None = None,
    ) -> None:
        """``floor_file``: where the last accepted commit is also kept, outside state_dir
        (see olladist.source.chain); None keeps no such record."""
        if not ref or ref.endswith("/") or ".." in ref or _PEELED_SUFFIX.decode() in ref:
            raise SourceError(f"bad ref {ref!r}", hint="give a branch or tag name, e.g. main")
        self.url = _location(url)
        self.ref = ref
        self.path = normalise_subpath(path)
        self.state_dir = Path(state_dir)
        self.verify = verify
        self.allow_rollback = allow_rollback
        self.keep = max(1, keep)
        self.timeout_s = timeout_s
        self.floor = FloorRecord(floor_file) if floor_file is not None else None
        self._mirror = self.state_dir / "git"
        self._checkouts = self.state_dir / "checkouts"
        # Refs of this (url, ref, path) in the mirror, so a CLI run with other settings on the
        # same state dir does not move this source's baseline.
        key = hashlib.sha256(f"{self.url}\0{self.ref}\0{self.path}".encode()).hexdigest()[:12]
        self._tip_ref_name = Ref(f"refs/olladist/{key}/tip".encode())
        self._remote_ref_name = Ref(f"refs/olladist/{key}/remote".encode())

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    def describe(self) -> str:
        return f"git {self.display_url} ref {self.ref} path {self.path or '.'}"

    # -- public API ------------------------------------------------------------------------

    def poll(self, accepted: str | None = None) -> FetchResult:
        """Look at the remote ref, fetch only if it moved, check the tip, check it out.

        ACCEPTED is the commit this node last accepted (applied); the tip must descend from it
        unless allow_rollback. Without it, the commit the previous poll returned is the
        baseline. Raises FetchError, SignatureError, RollbackRefused or SourceError.
        """
        with self._locked(), self._open_mirror() as repo:
            client, remote_path = self._client(repo)
            refname, remote_sha = self._remote_ref(client, remote_path)
            fetched = False
            if remote_sha not in repo.object_store:
                remote_sha = self._fetch(client, remote_path, repo, refname)
                fetched = True
            repo.refs[self._remote_ref_name] = remote_sha
            commit = self._peel(repo, remote_sha, refname)
            tip = commit.id.decode("ascii")
            signer = None
            if self.verify is not None:
                signer = verify_commit(commit, self.verify, self.state_dir / "tmp")
            tip_ref = self._tip_ref_name
            previous = repo.refs[tip_ref].decode("ascii") if tip_ref in repo.refs else None
            baseline = self._baseline(accepted, previous)
            record = self.floor.read() if self.floor is not None else None
            floor = spec_floor(repo, commit, self.path)
            self._check_descent(repo, baseline, tip)
            if record not in (None, baseline):
                self._check_descent(repo, record, tip, what="the floor record of")
            check_spec_floor(repo, floor, tip, f"{self.display_url} ref {self.ref}")
            checked = 1
            if self.verify is not None:
                bounds = [b for b in (baseline, record, floor) if b is not None]
                checked = verify_range(repo, commit, bounds, self.verify, self.state_dir / "tmp")
            if self.floor is not None and baseline is not None and baseline == accepted:
                # The caller's accepted commit, kept where deleting the state dir (and the
                # status with it) leaves it: the next tip must still descend from it.
                self.floor.write(baseline)
            checkout = materialise(repo, commit, self.path, self._checkouts)
            repo.refs[tip_ref] = commit.id
            protect = {tip} | ({accepted} if accepted else set())
            prune(self._checkouts, self.keep, protect)
        changed = tip != baseline
        # A quiet remote polled every minute must not flood the journal.
        log.log(
            logging.INFO if changed or fetched else logging.DEBUG,
            "poll url=%s ref=%s commit=%s changed=%s fetched=%s",
            self.display_url,
            refname.decode(),
            tip,
            changed,
            fetched,
        )
        return FetchResult(
            commit=tip,
            changed=changed,
            checkout=checkout,
            fetched=fetched,
            ref=refname.decode(),
            signer=signer,
            verified=checked if self.verify is not None else 0,
            floor=floor,
        )

    def _commit(self, repo: Repo, commit: str) -> ShaFile:
        """The object of COMMIT, a full sha already in the mirror (no network)."""
        if not SHA_RE.fullmatch(commit):
            raise SourceError(f"not a full commit sha: {commit!r}")
        try:
            return repo.object_store[ObjectID(commit.encode("ascii"))]
        except KeyError:
            raise SourceError(
                f"commit {commit} is not in the local mirror of {self.display_url}",
                hint="poll the source first, or check the commit id",
            ) from None

    def checkout(self, commit: str) -> Path:
        """The spec directory of COMMIT, a full sha already in the mirror (no network)."""
        with self._locked(), self._open_mirror() as repo:
            obj = self._commit(repo, commit)
            if not isinstance(obj, Commit):
                raise SourceError(f"object {commit} is a {obj.type_name.decode()}, not a commit")
            return materialise(repo, obj, self.path, self._checkouts)

    def first_parent(self, commit: str) -> str | None:
        """The first parent of COMMIT (in the mirror), None for a root commit. Every node
        agrees on it, unlike on the commit each one applied (olladist.rollout)."""
        with self._locked(), self._open_mirror() as repo:
            obj = self._commit(repo, commit)
            if not isinstance(obj, Commit) or not obj.parents:
                return None
            return obj.parents[0].decode("ascii")

    # -- steps -----------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "source.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _open_mirror(self) -> Repo:
        if (self._mirror / "HEAD").is_file():
            try:
                return Repo(str(self._mirror))
            except NotGitRepository as exc:
                raise SourceError(
                    f"{self._mirror} is not a usable git mirror: {exc}",
                    hint=f"remove {self._mirror}; it is rebuilt on the next poll",
                ) from exc
        self._mirror.mkdir(parents=True, exist_ok=True)
        if any(self._mirror.iterdir()):
            raise SourceError(
                f"{self._mirror} exists but is not a git mirror",
                hint=f"remove {self._mirror}; it is rebuilt on the next poll",
            )
        log.info("mirror init dir=%s", self._mirror)
        return Repo.init_bare(str(self._mirror))

    def _fail(self, what: str, exc: BaseException) -> FetchError:
        # One line, whatever the transport put in its message (ssh stderr, HTTP bodies).
        detail = " ".join(redact_url(str(exc) or type(exc).__name__).split())
        password = urlsplit(self.url).password if "://" in self.url else None
        if password:
            detail = detail.replace(password, "***")
        return FetchError(
            f"{what} {self.display_url} (ref {self.ref}): {detail}",
            hint="check the URL, the network path to it, and the credentials of this node",
        )

    def _client(self, repo: Repo) -> tuple[GitClient, str]:
        # dulwich's HTTP client waits forever by default; a stuck server must not stall the
        # reconcile loop. Besides that, only the mirror's own config counts (http.sslCAInfo,
        # http.proxy...), never ~/.gitconfig of whoever runs the CLI.
        override = ConfigFile()
        override.set((b"http",), b"timeout", str(self.timeout_s).encode())
        config = StackedConfig([override, repo.get_config()])
        try:
            return get_transport_and_path(self.url, config=config)
        except _TRANSPORT_ERRORS as exc:
            raise self._fail("cannot use source", exc) from exc

    def _remote_ref(self, client: GitClient, remote_path: str) -> tuple[Ref, ObjectID]:
        try:
            listing = client.get_refs(remote_path.encode())
        except _TRANSPORT_ERRORS as exc:
            raise self._fail("cannot list refs of", exc) from exc
        refs = {
            name: sha
            for name, sha in listing.refs.items()
            if sha is not None and not name.endswith(_PEELED_SUFFIX)
        }
        refname = self._resolve(refs)
        return refname, refs[refname]

    def _resolve(self, refs: Mapping[Ref, ObjectID]) -> Ref:
        if self.ref == "HEAD" or self.ref.startswith("refs/"):
            candidates = [self.ref]
        else:
            candidates = [f"refs/heads/{self.ref}", f"refs/tags/{self.ref}"]
        found = [Ref(c.encode()) for c in candidates if Ref(c.encode()) in refs]
        if len(found) == 1:
            return found[0]
        if found:
            raise FetchError(
                f"ref {self.ref!r} is both a branch and a tag at {self.display_url}",
                hint=f"say which: refs/heads/{self.ref} or refs/tags/{self.ref}",
            )
        names = sorted(
            n.decode(errors="replace").removeprefix("refs/heads/").removeprefix("refs/tags/")
            for n in refs
            if n.startswith((b"refs/heads/", b"refs/tags/"))
        )
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise FetchError(
            f"ref {self.ref!r} not found at {self.display_url}",
            hint=f"branches and tags there: {shown}" if names else "the repository is empty",
        )

    def _fetch(self, client: GitClient, remote_path: str, repo: Repo, refname: Ref) -> ObjectID:
        # Want the ref's value as the fetch itself sees it: the ref may have moved since the
        # listing, and servers need not serve a commit no ref points to any more.
        seen: dict[str, ObjectID] = {}

        def determine_wants(
            refs: Mapping[Ref, ObjectID], depth: int | None = None
        ) -> list[ObjectID]:
            sha = refs.get(refname)
            if sha is None:
                return []
            seen["sha"] = sha
            return [] if sha in repo.object_store else [sha]

        try:
            client.fetch(remote_path.encode(), repo, determine_wants=determine_wants)
        except _TRANSPORT_ERRORS as exc:
            raise self._fail("cannot fetch from", exc) from exc
        if "sha" not in seen:
            raise FetchError(f"ref {self.ref!r} vanished from {self.display_url} during fetch")
        log.info(
            "fetch url=%s ref=%s object=%s",
            self.display_url,
            refname.decode(),
            seen["sha"].decode(),
        )
        return seen["sha"]

    def _peel(self, repo: Repo, sha: ObjectID, refname: Ref) -> Commit:
        _tag, obj = repo.object_store.peel(sha)
        if not isinstance(obj, Commit):
            raise SourceError(
                f"ref {refname.decode()} at {self.display_url} points to a "
                f"{obj.type_name.decode()}, not a commit"
            )
        return obj

    def _baseline(self, accepted: str | None, previous: str | None) -> str | None:
        if accepted is None:
            return previous
        if SHA_RE.fullmatch(accepted):
            return accepted
        # e.g. "dir:..." after the node switched from a local directory to git.
        log.warning("accepted commit ignored commit=%s reason=not-a-git-sha", accepted)
        return previous

    def _check_descent(
        self, repo: Repo, baseline: str | None, tip: str, what: str = "the accepted commit"
    ) -> None:
        if baseline is None or baseline == tip:
            return
        base_id, tip_id = ObjectID(baseline.encode()), ObjectID(tip.encode())
        # The mirror holds the tip's whole history, so a baseline it lacks is not in it.
        known = base_id in repo.object_store
        if known and can_fast_forward(repo, base_id, tip_id):
            return
        older = known and can_fast_forward(repo, tip_id, base_id)
        if self.allow_rollback:
            log.warning(
                "rollback allowed url=%s ref=%s from=%s to=%s",
                self.display_url,
                self.ref,
                baseline,
                tip,
            )
            return
        how = "is an older commit than" if older else "does not descend from"
        raise RollbackRefused(
            f"refusing commit {tip} of {self.display_url} ref {self.ref}: it {how} "
            f"{what} {baseline} (only fast-forwards are accepted)",
            accepted=baseline,
            tip=tip,
            hint="push a new commit on top of the accepted one (git revert), or allow "
            "rollback on this node (OLLADIST_ALLOW_ROLLBACK=1) to take it once",
        )
