"""Real git repositories, made with the git CLI inside tmp_path, and a real HTTP git server."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.gitserver import HttpServer, serve_git_http
from tests.source.signing import gpg_keys, ssh_keys

__all__ = ["gpg_keys", "ssh_keys"]  # module-scoped key fixtures, shared by tests/source


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """git and gpg must never read or write the real ~ or /etc/gitconfig."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GNUPGHOME", str(home / "no-gnupg"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_SSH_COMMAND"):
        monkeypatch.delenv(var, raising=False)


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    full_env = dict(
        os.environ,
        GIT_AUTHOR_NAME="Test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="Test",
        GIT_COMMITTER_EMAIL="test@example.com",
        **(env or {}),
    )
    result = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        env=full_env,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout.strip()


@dataclass
class Upstream:
    """The cluster-spec repository: committing here is what a push does to the remote."""

    path: Path

    def commit(
        self,
        files: dict[str, str],
        message: str = "change",
        sign_with: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> str:
        """Commit FILES; with SIGN_WITH (git -c options naming the key) the commit is signed."""
        for rel, text in files.items():
            target = self.path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            git(self.path, "add", rel)
        signing = [*sign_with, "commit", "-S"] if sign_with is not None else ["commit"]
        git(self.path, *signing, "-q", "--allow-empty", "-m", message, env=env)
        return self.head()

    def head(self) -> str:
        return git(self.path, "rev-parse", "HEAD")

    def force(self, sha: str) -> None:
        """Move the branch to SHA, as `git push --force` would."""
        git(self.path, "reset", "-q", "--hard", sha)

    def orphan(self, files: dict[str, str]) -> str:
        """Replace the branch with an unrelated history."""
        git(self.path, "checkout", "-q", "--orphan", "tmp-orphan")
        git(self.path, "rm", "-rq", "--cached", ".")
        sha = self.commit(files, "other history")
        git(self.path, "branch", "-q", "-M", "main")
        return sha


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    path = tmp_path / "upstream"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    return Upstream(path)


@pytest.fixture
def http_server(upstream: Upstream, tmp_path: Path) -> Iterator[HttpServer]:
    """`python -m dulwich.web` serving the upstream on 127.0.0.1, stopped by PID."""
    with serve_git_http(upstream.path, tmp_path / "http.log") as server:
        yield server
