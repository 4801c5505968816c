"""Real signing keys for tests: gpg and ssh-keygen keys made in temporary directories.

The fixtures are registered for tests/source by its conftest.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def run(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {result.stderr}")
    return result.stdout


@dataclass(frozen=True)
class GpgKeys:
    signing_home: Path  # secret keys of the committers
    trusted: str  # fingerprint of the key the node trusts
    other: str  # a real key the node does not trust
    verify_home: Path  # the node's keyring: public keys only

    def sign_args(self, fingerprint: str) -> list[str]:
        return ["-c", f"user.signingkey={fingerprint}", "-c", "gpg.program=gpg"]

    def env(self) -> dict[str, str]:
        return {"GNUPGHOME": str(self.signing_home)}


def gen_key(home: Path, uid: str) -> str:
    run(
        "gpg", "--homedir", str(home), "--batch", "--passphrase", "",
        "--quick-gen-key", uid, "ed25519", "sign", "never",
    )  # fmt: skip
    out = run("gpg", "--homedir", str(home), "--with-colons", "--fingerprint", uid)
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


@pytest.fixture(scope="module")
def gpg_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpgKeys]:
    base = tmp_path_factory.mktemp("gpg")
    signing, verify = base / "signing", base / "verify"
    for home in (signing, verify):
        home.mkdir(mode=0o700)
    try:
        trusted = gen_key(signing, "Trusted Ops <ops@example.com>")
        other = gen_key(signing, "Someone Else <else@example.com>")
        exported = run("gpg", "--homedir", str(signing), "--armor", "--export", trusted, other)
        (base / "pub.asc").write_text(exported)
        run("gpg", "--homedir", str(verify), "--batch", "--import", str(base / "pub.asc"))
        yield GpgKeys(signing, trusted, other, verify)
    finally:
        # The agents gpg started for these homedirs (and only those) are stopped here.
        for home in (signing, verify):
            subprocess.run(
                ["gpgconf", "--homedir", str(home), "--kill", "all"],
                capture_output=True,
                check=False,
            )


@dataclass(frozen=True)
class SshKeys:
    trusted: Path  # private key files
    other: Path
    allowed_signers: Path


@pytest.fixture(scope="module")
def ssh_keys(tmp_path_factory: pytest.TempPathFactory) -> SshKeys:
    base = tmp_path_factory.mktemp("ssh")
    keys = {}
    for name in ("trusted", "other"):
        key = base / name
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key))
        keys[name] = key
    public = (base / "trusted.pub").read_text().split()
    allowed = base / "allowed_signers"
    allowed.write_text(f'ops@example.com namespaces="git" {public[0]} {public[1]}\n')
    return SshKeys(keys["trusted"], keys["other"], allowed)


def ssh_sign(key: Path) -> list[str]:
    return ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}"]
