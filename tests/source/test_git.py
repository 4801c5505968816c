"""GitSource against real repositories: paths, file://, HTTP, refs, subdirs, fast-forward rule."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from pathlib import Path

import pytest

from olladist.source import FetchError, GitSource, RollbackRefused, SourceError
from tests.harness.gitserver import HttpServer, wait_listening
from tests.harness.ports import free_port
from tests.source.conftest import Upstream, git

CLUSTER = "cluster: lab\n"


def test_plain_path_poll_checks_out_and_second_poll_fetches_nothing(
    upstream: Upstream, tmp_path: Path
) -> None:
    sha = upstream.commit({"cluster.yaml": CLUSTER, "models/a.yaml": "name: a\n"})
    src = GitSource(upstream.path, state_dir=tmp_path / "state")

    first = src.poll()
    assert first.commit == sha
    assert first.changed and first.fetched
    assert first.ref == "refs/heads/main"
    assert first.checkout == tmp_path / "state" / "checkouts" / sha
    assert (first.checkout / "cluster.yaml").read_text() == CLUSTER
    assert (first.checkout / "models" / "a.yaml").read_text() == "name: a\n"
    assert (tmp_path / "state" / "git" / "HEAD").is_file()  # the bare mirror

    second = src.poll(accepted=sha)
    assert (second.commit, second.changed, second.fetched) == (sha, False, False)
    assert second.checkout == first.checkout


def test_file_url_and_new_commit(upstream: Upstream, tmp_path: Path) -> None:
    first_sha = upstream.commit({"cluster.yaml": CLUSTER})
    src = GitSource(f"file://{upstream.path}", state_dir=tmp_path / "state")
    assert src.poll().commit == first_sha

    second_sha = upstream.commit({"cluster.yaml": "cluster: lab2\n"})
    result = src.poll(accepted=first_sha)
    assert (result.commit, result.changed, result.fetched) == (second_sha, True, True)
    assert (result.checkout / "cluster.yaml").read_text() == "cluster: lab2\n"
    # The old checkout is still there (kept for last-known-good).
    assert (tmp_path / "state" / "checkouts" / first_sha / "cluster.yaml").is_file()


def test_first_parent_is_what_every_node_agrees_on(upstream: Upstream, tmp_path: Path) -> None:
    """The rollout waves are planned against it (olladist.rollout), not the applied commit."""
    first = upstream.commit({"cluster.yaml": CLUSTER})
    second = upstream.commit({"cluster.yaml": "cluster: lab2\n"})
    src = GitSource(f"file://{upstream.path}", state_dir=tmp_path / "state")
    assert src.poll().commit == second  # a node that never saw `first` still knows it
    assert (src.first_parent(second), src.first_parent(first)) == (first, None)
    with pytest.raises(SourceError, match="not in the local mirror"):
        src.first_parent("0" * 40)


@pytest.mark.integration
def test_http_fetches_only_when_the_ref_moved(
    upstream: Upstream, http_server: HttpServer, tmp_path: Path
) -> None:
    sha = upstream.commit({"cluster.yaml": CLUSTER})
    src = GitSource(http_server.url, state_dir=tmp_path / "state")

    assert src.poll().commit == sha
    assert http_server.upload_pack_posts() == 1
    for _ in range(3):
        result = src.poll(accepted=sha)
        assert not result.fetched and not result.changed
    assert http_server.upload_pack_posts() == 1  # only ls-remote (GET info/refs) since

    new = upstream.commit({"nodes/a.yaml": "name: a\n"})
    result = src.poll(accepted=sha)
    assert (result.commit, result.fetched) == (new, True)
    assert (result.checkout / "nodes" / "a.yaml").is_file()
    assert http_server.upload_pack_posts() == 2


def test_subdirectory(upstream: Upstream, tmp_path: Path) -> None:
    upstream.commit({"README": "x\n", "clusters/lab/cluster.yaml": CLUSTER, "run.sh": "exit\n"})
    src = GitSource(upstream.path, path="clusters/lab", state_dir=tmp_path / "state")
    result = src.poll()
    assert sorted(p.name for p in result.checkout.iterdir()) == ["cluster.yaml"]

    missing = GitSource(upstream.path, path="clusters/prod", state_dir=tmp_path / "s2")
    with pytest.raises(SourceError, match=r"path 'clusters/prod' does not exist in commit"):
        missing.poll()
    with pytest.raises(SourceError, match="stay inside"):
        GitSource(upstream.path, path="../etc", state_dir=tmp_path / "s3")


def test_executable_bit_kept_and_symlink_left_out(
    upstream: Upstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.commit({"cluster.yaml": CLUSTER, "hook.sh": "#!/bin/sh\n"})
    (upstream.path / "hook.sh").chmod(0o755)
    (upstream.path / "link.yaml").symlink_to("/etc/passwd")
    git(upstream.path, "add", "hook.sh", "link.yaml")
    git(upstream.path, "commit", "-qm", "mode and link")
    with caplog.at_level(logging.WARNING, logger="olladist.source"):
        result = GitSource(upstream.path, state_dir=tmp_path / "state").poll()
    assert (result.checkout / "hook.sh").stat().st_mode & 0o777 == 0o755
    assert (result.checkout / "cluster.yaml").stat().st_mode & 0o777 == 0o644
    assert not (result.checkout / "link.yaml").exists()
    assert "kind=symlink" in caplog.text


def test_tag_refs_annotated_and_lightweight(upstream: Upstream, tmp_path: Path) -> None:
    v1 = upstream.commit({"cluster.yaml": "cluster: v1\n"})
    git(upstream.path, "tag", "-a", "v1", "-m", "release 1")
    v2 = upstream.commit({"cluster.yaml": "cluster: v2\n"})
    git(upstream.path, "tag", "v2-light")
    upstream.commit({"cluster.yaml": "cluster: head\n"})

    annotated = GitSource(upstream.path, ref="v1", state_dir=tmp_path / "a").poll()
    assert annotated.commit == v1  # the tag object is peeled to its commit
    assert annotated.ref == "refs/tags/v1"
    assert (annotated.checkout / "cluster.yaml").read_text() == "cluster: v1\n"
    light = GitSource(upstream.path, ref="refs/tags/v2-light", state_dir=tmp_path / "b").poll()
    assert light.commit == v2


def test_ambiguous_ref_is_an_error(upstream: Upstream, tmp_path: Path) -> None:
    upstream.commit({"cluster.yaml": CLUSTER})
    git(upstream.path, "tag", "main")
    with pytest.raises(FetchError, match="both a branch and a tag"):
        GitSource(upstream.path, ref="main", state_dir=tmp_path / "s").poll()
    ok = GitSource(upstream.path, ref="refs/heads/main", state_dir=tmp_path / "s").poll()
    assert ok.ref == "refs/heads/main"


def test_fast_forward_accepted(upstream: Upstream, tmp_path: Path) -> None:
    a = upstream.commit({"cluster.yaml": "cluster: a\n"})
    src = GitSource(upstream.path, state_dir=tmp_path / "state")
    src.poll()
    upstream.commit({"cluster.yaml": "cluster: b\n"})
    c = upstream.commit({"cluster.yaml": "cluster: c\n"})
    result = src.poll(accepted=a)  # two commits ahead is still a fast-forward
    assert result.commit == c and result.changed


def test_force_push_to_older_commit_refused(upstream: Upstream, tmp_path: Path) -> None:
    a = upstream.commit({"cluster.yaml": "cluster: a\n"})
    b = upstream.commit({"cluster.yaml": "cluster: b\n"})
    src = GitSource(upstream.path, state_dir=tmp_path / "state")
    assert src.poll().commit == b

    upstream.force(a)
    with pytest.raises(RollbackRefused) as info:
        src.poll(accepted=b)
    message = info.value.message
    assert a in message and b in message and "older" in message
    assert (info.value.accepted, info.value.tip) == (b, a)
    assert info.value.hint and "OLLADIST_ALLOW_ROLLBACK" in info.value.hint

    # Without an explicit accepted commit, the last polled tip is the baseline.
    with pytest.raises(RollbackRefused):
        src.poll()

    # A later fast-forward from the accepted commit goes through.
    upstream.force(b)
    c = upstream.commit({"cluster.yaml": "cluster: c\n"})
    assert src.poll(accepted=b).commit == c


def test_other_history_refused(upstream: Upstream, tmp_path: Path) -> None:
    a = upstream.commit({"cluster.yaml": "cluster: a\n"})
    src = GitSource(upstream.path, state_dir=tmp_path / "state")
    src.poll()
    other = upstream.orphan({"cluster.yaml": "cluster: evil\n"})
    with pytest.raises(RollbackRefused, match="does not descend from") as info:
        src.poll(accepted=a)
    assert other in info.value.message and a in info.value.message
    # A fresh mirror that never saw the accepted commit refuses too.
    fresh = GitSource(upstream.path, state_dir=tmp_path / "fresh")
    with pytest.raises(RollbackRefused):
        fresh.poll(accepted=a)


def test_allow_rollback_accepts(upstream: Upstream, tmp_path: Path) -> None:
    a = upstream.commit({"cluster.yaml": "cluster: a\n"})
    b = upstream.commit({"cluster.yaml": "cluster: b\n"})
    src = GitSource(upstream.path, state_dir=tmp_path / "state", allow_rollback=True)
    src.poll()
    upstream.force(a)
    result = src.poll(accepted=b)
    assert result.commit == a and result.changed
    assert (result.checkout / "cluster.yaml").read_text() == "cluster: a\n"


def test_old_checkouts_pruned_but_accepted_kept_and_checkout_rebuilds(
    upstream: Upstream, tmp_path: Path
) -> None:
    src = GitSource(upstream.path, state_dir=tmp_path / "state", keep=2)
    shas = []
    for i in range(5):
        shas.append(upstream.commit({"cluster.yaml": f"cluster: c{i}\n"}))
        src.poll(accepted=shas[0])
    kept = {p.name for p in (tmp_path / "state" / "checkouts").iterdir()}
    assert kept == {shas[0], shas[3], shas[4]}

    again = src.checkout(shas[1])  # known commit, no network: rebuilt from the mirror
    assert (again / "cluster.yaml").read_text() == "cluster: c1\n"
    with pytest.raises(SourceError, match="not in the local mirror"):
        src.checkout("0" * 40)
    with pytest.raises(SourceError, match="not a full commit sha"):
        src.checkout("HEAD")


def test_missing_repo_names_url_and_ref(tmp_path: Path) -> None:
    src = GitSource(tmp_path / "nope", ref="prod", state_dir=tmp_path / "state")
    with pytest.raises(FetchError) as info:
        src.poll()
    assert str(tmp_path / "nope") in info.value.message and "prod" in info.value.message


def test_missing_ref_lists_what_exists(upstream: Upstream, tmp_path: Path) -> None:
    upstream.commit({"cluster.yaml": CLUSTER})
    git(upstream.path, "tag", "v1")
    with pytest.raises(FetchError, match="ref 'prod' not found") as info:
        GitSource(upstream.path, ref="prod", state_dir=tmp_path / "s").poll()
    assert info.value.hint == "branches and tags there: main, v1"


def test_unreachable_http_error_has_no_credentials(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there
    url = f"http://deploy:s3cr3t-t0ken@127.0.0.1:{port}/cluster.git"
    src = GitSource(url, state_dir=tmp_path / "state")
    with caplog.at_level(logging.DEBUG), pytest.raises(FetchError) as info:
        src.poll()
    text = f"{info.value.message} {info.value.hint} {src.describe()} {caplog.text}"
    assert f"http://127.0.0.1:{port}/cluster.git" in info.value.message
    assert "main" in info.value.message
    assert "s3cr3t" not in text and "deploy" not in text


def test_state_dir_shared_by_two_sources_objects(upstream: Upstream, tmp_path: Path) -> None:
    """A second GitSource object on the same state dir (CLI next to the daemon) agrees."""
    sha = upstream.commit({"cluster.yaml": CLUSTER})
    GitSource(upstream.path, state_dir=tmp_path / "state").poll()
    other = GitSource(upstream.path, state_dir=tmp_path / "state").poll()
    assert (other.commit, other.fetched, other.changed) == (sha, False, False)


@pytest.mark.integration
def test_git_protocol(upstream: Upstream, tmp_path: Path) -> None:
    sha = upstream.commit({"cluster.yaml": CLUSTER})
    port = free_port()
    proc = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--listen=127.0.0.1",
            f"--port={port}",
            "--export-all",
            f"--base-path={tmp_path}",
            str(upstream.path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, proc, lambda: "git daemon did not start")
        src = GitSource(f"git://127.0.0.1:{port}/upstream", state_dir=tmp_path / "state")
        result = src.poll()
        assert (result.commit, result.fetched) == (sha, True)
        assert (result.checkout / "cluster.yaml").read_text() == CLUSTER
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_silent_http_server_times_out(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        src = GitSource(f"http://127.0.0.1:{port}/x.git", state_dir=tmp_path / "s", timeout_s=0.3)
        started = time.monotonic()
        with pytest.raises(FetchError, match="timed out"):
            src.poll()
        assert time.monotonic() - started < 5


def test_two_paths_on_one_state_dir_do_not_mix(upstream: Upstream, tmp_path: Path) -> None:
    sha = upstream.commit({"lab/cluster.yaml": "cluster: lab\n", "prod/cluster.yaml": "p\n"})
    lab = GitSource(upstream.path, path="lab", state_dir=tmp_path / "state").poll()
    prod = GitSource(upstream.path, path="prod", state_dir=tmp_path / "state").poll()
    assert lab.commit == prod.commit == sha
    assert lab.checkout != prod.checkout
    assert (lab.checkout / "cluster.yaml").read_text() == "cluster: lab\n"
    assert (prod.checkout / "cluster.yaml").read_text() == "p\n"
    # Each source has its own baseline: prod's first poll is a change of its own.
    assert prod.changed
