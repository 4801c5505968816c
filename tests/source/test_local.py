"""DirSource (content hash, watch) and choosing a source from a location or the environment."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from olladist.source import (
    DirSource,
    GitSource,
    GpgVerify,
    SourceError,
    SshVerify,
    open_source,
    redact_url,
    source_from_env,
    verify_from_env,
)
from tests.source.conftest import Upstream


@pytest.fixture
def spec_dir(tmp_path: Path) -> Path:
    spec = tmp_path / "spec"
    (spec / "models").mkdir(parents=True)
    (spec / "cluster.yaml").write_text("cluster: lab\n")
    (spec / "models" / "a.yaml").write_text("name: a\n")
    return spec


def test_content_hash_changes_on_edit_only(spec_dir: Path) -> None:
    src = DirSource(spec_dir)
    first = src.poll()
    assert first.commit.startswith("dir:") and len(first.commit) == 44
    assert first.changed and first.checkout == spec_dir
    assert src.poll(accepted=first.commit).changed is False

    (spec_dir / ".cluster.yaml.swp").write_text("editor noise")
    (spec_dir / "cluster.yaml~").write_text("backup")
    assert src.commit() == first.commit

    (spec_dir / "models" / "a.yaml").write_text("name: a\nreplicas: 2\n")
    edited = src.poll()
    assert edited.changed and edited.commit != first.commit

    (spec_dir / "models" / "a.yaml").rename(spec_dir / "models" / "b.yaml")
    assert src.commit() not in (first.commit, edited.commit)  # a rename is a change too


def test_checkout_only_the_current_content(spec_dir: Path, tmp_path: Path) -> None:
    src = DirSource(spec_dir)
    commit = src.commit()
    assert src.checkout(commit) == spec_dir
    (spec_dir / "cluster.yaml").write_text("cluster: other\n")
    with pytest.raises(SourceError, match="keeps no history"):
        src.checkout(commit)
    with pytest.raises(SourceError, match="does not exist"):
        DirSource(tmp_path / "missing").poll()


def test_watch_sees_an_edit_within_one_second(spec_dir: Path) -> None:
    src = DirSource(spec_dir)
    stop = threading.Event()
    seen: list[tuple[str, float]] = []

    def consume() -> None:
        for commit in src.watch(stop_event=stop):
            seen.append((commit, time.monotonic()))

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)  # let the watcher start
        assert not seen
        edited_at = time.monotonic()
        (spec_dir / "cluster.yaml").write_text("cluster: lab2\n")
        deadline = edited_at + 3
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen, "watch saw no edit"
        commit, when = seen[0]
        assert commit == src.commit()
        assert when - edited_at < 1.0
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_open_source_picks_the_kind(spec_dir: Path, upstream: Upstream, tmp_path: Path) -> None:
    upstream.commit({"cluster.yaml": "cluster: lab\n"})
    state = tmp_path / "state"
    assert isinstance(open_source(upstream.path, state_dir=state), GitSource)
    assert isinstance(open_source(f"file://{upstream.path}", state_dir=state), GitSource)
    assert isinstance(open_source("git@example.com:ops/spec.git", state_dir=state), GitSource)
    local = open_source(spec_dir.parent, state_dir=state, path="spec")
    assert isinstance(local, DirSource) and local.path == spec_dir
    with pytest.raises(SourceError, match="plain directory"):
        open_source(spec_dir, state_dir=state, verify=SshVerify(tmp_path / "allowed"))


def test_settings_from_env(upstream: Upstream, tmp_path: Path) -> None:
    state = tmp_path / "state"
    fpr = "AB" * 20
    verify = verify_from_env({"OLLADIST_VERIFY_GPG_KEYS": f"{fpr.lower()}, {'CD' * 20}"}, state)
    assert verify == GpgVerify((fpr, "CD" * 20), state / "gnupg")
    assert verify_from_env({"OLLADIST_VERIFY_SSH_ALLOWED_SIGNERS": "/etc/a"}, state) == SshVerify(
        Path("/etc/a")
    )
    assert verify_from_env({}, state) is None
    with pytest.raises(SourceError, match="both"):
        verify_from_env(
            {"OLLADIST_VERIFY_GPG_KEYS": fpr, "OLLADIST_VERIFY_SSH_ALLOWED_SIGNERS": "/a"}, state
        )

    src = source_from_env(
        {
            "OLLADIST_SOURCE": str(upstream.path),
            "OLLADIST_REF": "prod",
            "OLLADIST_PATH": "clusters/lab",
            "OLLADIST_ALLOW_ROLLBACK": "yes",
        },
        state,
    )
    assert isinstance(src, GitSource)
    assert (src.ref, src.path, src.allow_rollback, src.verify) == (
        "prod",
        "clusters/lab",
        True,
        None,
    )
    with pytest.raises(SourceError, match="OLLADIST_SOURCE is not set"):
        source_from_env({}, state)


def test_redact_url() -> None:
    assert redact_url("https://u:p@h.example/r.git") == "https://h.example/r.git"
    assert redact_url("x ssh://git@h:22/r y") == "x ssh://h:22/r y"
    assert redact_url("/srv/git/spec.git") == "/srv/git/spec.git"
