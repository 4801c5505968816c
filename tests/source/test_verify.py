"""Signed tips: real gpg and ssh-keygen keys made in tmp_path, commits signed by git."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from olladist.source import GitSource, GpgVerify, SignatureError, SshVerify
from tests.source.conftest import Upstream
from tests.source.signing import GpgKeys, SshKeys, run, ssh_sign


def test_gpg_signed_by_trusted_key_accepted(
    gpg_keys: GpgKeys, upstream: Upstream, tmp_path: Path
) -> None:
    sha = upstream.commit(
        {"cluster.yaml": "cluster: lab\n"},
        sign_with=gpg_keys.sign_args(gpg_keys.trusted),
        env=gpg_keys.env(),
    )
    verify = GpgVerify((gpg_keys.trusted,), gpg_keys.verify_home)
    result = GitSource(upstream.path, state_dir=tmp_path / "s", verify=verify).poll()
    assert result.commit == sha
    assert result.signer == f"gpg:{gpg_keys.trusted}"


def test_gpg_unsigned_refused_then_signed_accepted(
    gpg_keys: GpgKeys, upstream: Upstream, tmp_path: Path
) -> None:
    unsigned = upstream.commit({"cluster.yaml": "cluster: lab\n"})
    verify = GpgVerify((gpg_keys.trusted,), gpg_keys.verify_home)
    src = GitSource(upstream.path, state_dir=tmp_path / "s", verify=verify)
    with pytest.raises(SignatureError, match="is not signed") as info:
        src.poll()
    assert info.value.commit == unsigned
    assert gpg_keys.trusted in info.value.message
    # A bad commit does not block the next good one.
    good = upstream.commit(
        {"cluster.yaml": "cluster: lab2\n"},
        sign_with=gpg_keys.sign_args(gpg_keys.trusted),
        env=gpg_keys.env(),
    )
    assert src.poll().commit == good


def test_gpg_signed_by_other_key_refused(
    gpg_keys: GpgKeys, upstream: Upstream, tmp_path: Path
) -> None:
    sha = upstream.commit(
        {"cluster.yaml": "cluster: lab\n"},
        sign_with=gpg_keys.sign_args(gpg_keys.other),
        env=gpg_keys.env(),
    )
    verify = GpgVerify((gpg_keys.trusted,), gpg_keys.verify_home)
    with pytest.raises(SignatureError, match="not trusted") as info:
        GitSource(upstream.path, state_dir=tmp_path / "s", verify=verify).poll()
    assert (info.value.commit, info.value.signer) == (sha, gpg_keys.other)


def test_gpg_key_missing_from_keyring_refused(
    gpg_keys: GpgKeys, upstream: Upstream, tmp_path: Path
) -> None:
    upstream.commit(
        {"cluster.yaml": "cluster: lab\n"},
        sign_with=gpg_keys.sign_args(gpg_keys.trusted),
        env=gpg_keys.env(),
    )
    empty_home = tmp_path / "empty-gnupg"
    empty_home.mkdir(mode=0o700)
    verify = GpgVerify((gpg_keys.trusted,), empty_home)
    try:
        with pytest.raises(SignatureError, match="not in the keyring") as info:
            GitSource(upstream.path, state_dir=tmp_path / "s", verify=verify).poll()
    finally:
        subprocess.run(["gpgconf", "--homedir", str(empty_home), "--kill", "all"], check=False)
    assert info.value.signer is not None and gpg_keys.trusted.endswith(info.value.signer)


def test_gpg_short_key_id_rejected(tmp_path: Path) -> None:
    with pytest.raises(SignatureError, match="not a full GPG fingerprint"):
        GpgVerify(("DEADBEEF",), tmp_path)


# -- SSH ---------------------------------------------------------------------------------------


def test_ssh_signed_by_allowed_key_accepted(
    ssh_keys: SshKeys, upstream: Upstream, tmp_path: Path
) -> None:
    sha = upstream.commit({"cluster.yaml": "cluster: lab\n"}, sign_with=ssh_sign(ssh_keys.trusted))
    verify = SshVerify(ssh_keys.allowed_signers)
    result = GitSource(upstream.path, state_dir=tmp_path / "s", verify=verify).poll()
    assert result.commit == sha
    assert result.signer is not None and result.signer.startswith("ssh:ops@example.com (SHA256:")


def test_ssh_unsigned_refused(ssh_keys: SshKeys, upstream: Upstream, tmp_path: Path) -> None:
    sha = upstream.commit({"cluster.yaml": "cluster: lab\n"})
    verify = SshVerify(ssh_keys.allowed_signers)
    with pytest.raises(SignatureError, match="is not signed") as info:
        GitSource(upstream.path, state_dir=tmp_path / "s", verify=verify).poll()
    assert info.value.commit == sha


def test_ssh_signed_by_other_key_refused(
    ssh_keys: SshKeys, upstream: Upstream, tmp_path: Path
) -> None:
    sha = upstream.commit({"cluster.yaml": "cluster: lab\n"}, sign_with=ssh_sign(ssh_keys.other))
    other_fp = run("ssh-keygen", "-l", "-f", f"{ssh_keys.other}.pub").split()[1]
    verify = SshVerify(ssh_keys.allowed_signers)
    with pytest.raises(SignatureError, match="not listed in") as info:
        GitSource(upstream.path, state_dir=tmp_path / "s", verify=verify).poll()
    assert (info.value.commit, info.value.signer) == (sha, other_fp)
    assert other_fp in info.value.message


def test_gpg_signature_where_ssh_expected_refused(
    gpg_keys: GpgKeys, ssh_keys: SshKeys, upstream: Upstream, tmp_path: Path
) -> None:
    upstream.commit(
        {"cluster.yaml": "cluster: lab\n"},
        sign_with=gpg_keys.sign_args(gpg_keys.trusted),
        env=gpg_keys.env(),
    )
    verify = SshVerify(ssh_keys.allowed_signers)
    with pytest.raises(SignatureError, match="no SSH signature"):
        GitSource(upstream.path, state_dir=tmp_path / "s", verify=verify).poll()
