"""Signatures over the whole way and floors: every commit since the accepted one must verify,
and deleting the state directory does not let an older signed commit back in.

Real repositories made with the git CLI, signed by real gpg and ssh-keygen keys, read over
file:// and over HTTP (dulwich.web).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from olladist.source import (
    GitSource,
    GpgVerify,
    RollbackRefused,
    SignatureError,
    SourceError,
    SshVerify,
)
from olladist.source.chain import FloorRecord
from olladist.source.verify import Verify
from tests.harness.gitserver import serve_git_http
from tests.source.conftest import Upstream, git
from tests.source.signing import GpgKeys, SshKeys, ssh_sign


@pytest.fixture(params=["file", pytest.param("http", marks=pytest.mark.integration)])
def url(request: pytest.FixtureRequest, upstream: Upstream, tmp_path: Path) -> Iterator[str]:
    """The upstream as a node reaches it: file:// or HTTP."""
    if request.param == "file":
        yield f"file://{upstream.path}"
        return
    with serve_git_http(upstream.path, tmp_path / "http.log") as server:
        yield server.url


class Signer:
    """Commits to the upstream, signed with the trusted key or not at all."""

    def __init__(self, upstream: Upstream, args: list[str], env: dict[str, str]) -> None:
        self.upstream, self.args, self.env = upstream, args, env

    def signed(self, text: str) -> str:
        return self.upstream.commit({"cluster.yaml": text}, sign_with=self.args, env=self.env)

    def unsigned(self, text: str) -> str:
        return self.upstream.commit({"cluster.yaml": text})


@pytest.fixture(params=["gpg", "ssh"])
def signer(
    request: pytest.FixtureRequest,
    upstream: Upstream,
    gpg_keys: GpgKeys,
    ssh_keys: SshKeys,
) -> tuple[Signer, Verify]:
    if request.param == "gpg":
        return (
            Signer(upstream, gpg_keys.sign_args(gpg_keys.trusted), gpg_keys.env()),
            GpgVerify((gpg_keys.trusted,), gpg_keys.verify_home),
        )
    return Signer(upstream, ssh_sign(ssh_keys.trusted), {}), SshVerify(ssh_keys.allowed_signers)


def test_unsigned_commit_in_the_middle_refused_though_the_tip_is_signed(
    signer: tuple[Signer, Verify], url: str, tmp_path: Path
) -> None:
    sign, verify = signer
    accepted = sign.signed("cluster: a\n")
    src = GitSource(url, state_dir=tmp_path / "s", verify=verify)
    assert src.poll().commit == accepted
    middle = sign.unsigned("cluster: sneaked-in\n")
    tip = sign.signed("cluster: b\n")
    with pytest.raises(SignatureError, match="is not signed") as info:
        src.poll(accepted=accepted)
    assert (info.value.commit, info.value.tip) == (middle, tip)
    assert f"refusing commit {tip}: commit {middle} in its history" in info.value.message
    assert info.value.hint and "rebase" in info.value.hint


def test_every_commit_signed_goes_through_and_all_are_counted(
    signer: tuple[Signer, Verify], url: str, tmp_path: Path
) -> None:
    sign, verify = signer
    accepted = sign.signed("cluster: a\n")
    src = GitSource(url, state_dir=tmp_path / "s", verify=verify)
    first = src.poll()
    assert (first.commit, first.verified) == (accepted, 1)  # no bound: the tip alone
    sign.signed("cluster: b\n")
    sign.signed("cluster: c\n")
    tip = sign.signed("cluster: d\n")
    result = src.poll(accepted=accepted)
    assert (result.commit, result.verified) == (tip, 3)
    # Once accepted, the next poll starts from there: one commit to check.
    newer = sign.signed("cluster: e\n")
    assert src.poll(accepted=tip).verified == 1
    assert src.poll(accepted=tip).commit == newer


def test_unsigned_commit_on_a_merged_branch_refused(
    signer: tuple[Signer, Verify], upstream: Upstream, tmp_path: Path
) -> None:
    """Merge parents count: a signed merge of an unsigned branch is refused."""
    sign, verify = signer
    accepted = sign.signed("cluster: a\n")
    src = GitSource(upstream.path, state_dir=tmp_path / "s", verify=verify)
    src.poll()
    git(upstream.path, "checkout", "-q", "-b", "feature")
    side = upstream.commit({"models/x.yaml": "name: x\n"}, "unsigned branch work")
    git(upstream.path, "checkout", "-q", "main")
    sign.signed("cluster: a2\n")
    git(upstream.path, *sign.args, "merge", "-q", "-S", "--no-ff", "-m", "merge", "feature",
        env=sign.env)  # fmt: skip
    with pytest.raises(SignatureError) as info:
        src.poll(accepted=accepted)
    assert info.value.commit == side


def test_signed_merge_of_a_signed_branch_accepted(
    signer: tuple[Signer, Verify], upstream: Upstream, tmp_path: Path
) -> None:
    sign, verify = signer
    accepted = sign.signed("cluster: a\n")
    src = GitSource(upstream.path, state_dir=tmp_path / "s", verify=verify)
    src.poll()
    git(upstream.path, "checkout", "-q", "-b", "feature")
    upstream.commit({"models/x.yaml": "name: x\n"}, "signed branch work", sign.args, sign.env)
    git(upstream.path, "checkout", "-q", "main")
    sign.signed("cluster: a2\n")
    git(upstream.path, *sign.args, "merge", "-q", "-S", "--no-ff", "-m", "merge", "feature",
        env=sign.env)  # fmt: skip
    result = src.poll(accepted=accepted)
    assert result.commit == upstream.head()
    assert result.verified == 3  # the merge, the main-line commit and the branch commit


def test_deleting_the_state_dir_does_not_let_an_older_signed_commit_back(
    signer: tuple[Signer, Verify], url: str, upstream: Upstream, tmp_path: Path
) -> None:
    sign, verify = signer
    old = sign.signed("cluster: old\n")
    accepted = sign.signed("cluster: new\n")
    record = tmp_path / "etc" / "accepted-commit"
    state = tmp_path / "var-lib"
    src = GitSource(url, state_dir=state, verify=verify, floor_file=record)
    src.poll()
    src.poll(accepted=accepted)  # the node applied it and polls again
    assert record.read_text() == accepted + "\n"

    shutil.rmtree(state)
    upstream.force(old)  # the server offers an older, properly signed commit
    fresh = GitSource(url, state_dir=state, verify=verify, floor_file=record)
    with pytest.raises(RollbackRefused, match="the floor record of") as info:
        fresh.poll()
    assert info.value.tip == old and accepted in info.value.message
    # Without the record (the first poll of a fresh node) the old commit would be taken:
    shutil.rmtree(state)
    assert GitSource(url, state_dir=state, verify=verify).poll().commit == old

    upstream.force(accepted)
    tip = sign.signed("cluster: newer\n")
    shutil.rmtree(state)
    result = GitSource(url, state_dir=state, verify=verify, floor_file=record).poll()
    assert (result.commit, result.verified) == (tip, 1)  # walked from the record


def test_spec_floor_bounds_the_walk_of_a_fresh_node(
    signer: tuple[Signer, Verify], url: str, tmp_path: Path
) -> None:
    sign, verify = signer
    sign.unsigned("cluster: before-signing\n")  # history from before signing was on
    floor = sign.signed("cluster: first-signed\n")
    sign.unsigned("cluster: sneaked-in\n")
    sign.signed(f"cluster: x\npolicy: {{min_commit: {floor}}}\n")
    with pytest.raises(SignatureError, match="is not signed") as info:
        GitSource(url, state_dir=tmp_path / "a", verify=verify).poll()
    assert floor[:12] in info.value.message

    # Above a clean stretch, the commits since the floor are checked, not those before it.
    clean_floor = sign.signed("cluster: y\n")
    sign.signed("cluster: z\n")
    tip = sign.signed(f"cluster: w\npolicy: {{min_commit: {clean_floor}}}\n")
    result = GitSource(url, state_dir=tmp_path / "b", verify=verify).poll()
    assert (result.commit, result.floor, result.verified) == (tip, clean_floor, 2)


def test_tip_outside_its_own_floor_refused_even_with_rollback_allowed(
    upstream: Upstream, tmp_path: Path
) -> None:
    floor = upstream.commit({"cluster.yaml": "cluster: a\n"})
    other = upstream.orphan({"cluster.yaml": f"cluster: b\npolicy: {{min_commit: {floor}}}\n"})
    src = GitSource(upstream.path, state_dir=tmp_path / "s", allow_rollback=True)
    with pytest.raises(RollbackRefused, match=r"policy\.min_commit") as info:
        src.poll()
    assert info.value.tip == other and floor in info.value.message


def test_floor_record_rejects_garbage(tmp_path: Path) -> None:
    path = tmp_path / "accepted-commit"
    path.write_text("HEAD\n")
    with pytest.raises(SourceError, match="does not hold a commit sha") as info:
        FloorRecord(path).read()
    assert str(path) in str(info.value)
    assert FloorRecord(tmp_path / "missing").read() is None
