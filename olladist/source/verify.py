"""Signature checks of the tip commit: GPG (trusted fingerprints) or SSH (allowed signers).

We drive `gpg` and `ssh-keygen` ourselves instead of dulwich's verify_commit because:
- it passes an unsigned commit when no key ids are given (we must refuse it);
- it cannot point gpg at a GNUPGHOME of ours without changing os.environ (not thread-safe);
- for SSH it verifies the fixed principal `git`, while allowed-signers files written for
  `git verify-commit` name people (`alice@example.com ssh-ed25519 ...`). We do what git does:
  find the principals of the signing key, then verify against one of them.
The commit's payload and signature come from dulwich's `Commit.extract_signature()`.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dulwich.objects import Commit

from olladist.source.errors import SignatureError

log = logging.getLogger("olladist.source")

_FINGERPRINT = re.compile(r"[0-9A-F]{40}|[0-9A-F]{64}")
_SSH_KEY_FP = re.compile(r"\b(SHA256:[A-Za-z0-9+/=]+)")
_GPG_SIG_MARK = b"-----BEGIN PGP SIGNATURE-----"
_SSH_SIG_MARK = b"-----BEGIN SSH SIGNATURE-----"
_TOOL_TIMEOUT_S = 30


@dataclass(frozen=True)
class GpgVerify:
    """Trust a tip signed with GPG by one of `fingerprints` (public keys in `gnupghome`)."""

    fingerprints: tuple[str, ...]
    gnupghome: Path

    def __post_init__(self) -> None:
        clean = tuple(fp.replace(" ", "").upper() for fp in self.fingerprints)
        if not clean:
            raise SignatureError("GPG verification needs at least one key fingerprint", commit="-")
        for fp in clean:
            # Short key ids can be forged cheaply; only full fingerprints name a key.
            if not _FINGERPRINT.fullmatch(fp):
                raise SignatureError(
                    f"not a full GPG fingerprint: {fp!r}",
                    commit="-",
                    hint="use the 40-hex fingerprint shown by `gpg --fingerprint KEY`",
                )
        object.__setattr__(self, "fingerprints", clean)

    def describe(self) -> str:
        return f"gpg keys {', '.join(self.fingerprints)}"


@dataclass(frozen=True)
class SshVerify:
    """Trust a tip signed with an SSH key listed in `allowed_signers` (ssh-keygen(1) format)."""

    allowed_signers: Path

    def describe(self) -> str:
        return f"ssh allowed signers {self.allowed_signers}"


Verify = GpgVerify | SshVerify


def verify_commit(commit: Commit, verify: Verify, scratch: Path) -> str:
    """Check the signature of COMMIT; return who signed it, else raise SignatureError.

    SCRATCH is a directory for the temporary payload and signature files.
    """
    sha = commit.id.decode("ascii")
    payload, signature, _kind = commit.extract_signature()
    if signature is None:
        raise SignatureError(
            f"commit {sha} is not signed; this node only accepts commits signed by "
            f"{verify.describe()}",
            commit=sha,
            hint="sign the tip commit (git commit -S) and push again",
        )
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="verify-") as tmp:
        data_file = Path(tmp, "payload")
        sig_file = Path(tmp, "payload.sig")
        data_file.write_bytes(payload)
        sig_file.write_bytes(signature)
        if isinstance(verify, GpgVerify):
            if not signature.startswith(_GPG_SIG_MARK):
                raise SignatureError(
                    f"commit {sha} carries no GPG signature (another kind); "
                    f"expected one from {verify.describe()}",
                    commit=sha,
                )
            signer = _verify_gpg(sha, data_file, sig_file, verify)
        else:
            if not signature.startswith(_SSH_SIG_MARK):
                raise SignatureError(
                    f"commit {sha} carries no SSH signature (another kind); "
                    f"expected one from {verify.describe()}",
                    commit=sha,
                )
            signer = _verify_ssh(sha, data_file, sig_file, verify)
    log.info("signature ok commit=%s signer=%s", sha, signer)
    return signer


def _run(args: list[str], *, stdin_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    log.debug("run %s", " ".join(args))
    env = dict(os.environ, LC_ALL="C")
    try:
        if stdin_file is None:
            return subprocess.run(
                args,
                capture_output=True,
                text=True,
                env=env,
                stdin=subprocess.DEVNULL,
                timeout=_TOOL_TIMEOUT_S,
                check=False,
            )
        with stdin_file.open("rb") as stdin:
            return subprocess.run(
                args,
                capture_output=True,
                text=True,
                env=env,
                stdin=stdin,
                timeout=_TOOL_TIMEOUT_S,
                check=False,
            )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SignatureError(
            f"cannot run {args[0]} to check a signature: {exc}", commit="-"
        ) from exc


def _gpg_status(stdout: str) -> dict[str, list[str]]:
    """Parse gpg --status-fd output: keyword -> arguments (the last line of each kind wins)."""
    status: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        if line.startswith("[GNUPG:] "):
            keyword, *args = line[len("[GNUPG:] ") :].split()
            status[keyword] = args
    return status


def _verify_gpg(sha: str, data_file: Path, sig_file: Path, verify: GpgVerify) -> str:
    if not verify.gnupghome.is_dir():
        raise SignatureError(
            f"GNUPGHOME {verify.gnupghome} does not exist; cannot check commit {sha}",
            commit=sha,
            hint="import the trusted public keys: gpg --homedir DIR --import KEYS.asc",
        )
    result = _run(
        [
            "gpg",
            "--homedir",
            str(verify.gnupghome),
            "--batch",
            "--no-tty",
            "--no-auto-key-retrieve",
            # Trust is the fingerprint list below, not gpg's web of trust; this also keeps
            # gpg from writing a trustdb, so a read-only GNUPGHOME works.
            "--trust-model",
            "always",
            "--status-fd",
            "1",
            "--verify",
            str(sig_file),
            str(data_file),
        ]
    )
    status = _gpg_status(result.stdout)
    # VALIDSIG's first argument is the signing (sub)key, its last the primary key; both come
    # from gpg, unlike the user id text on stderr, which the signer chooses.
    validsig = status.get("VALIDSIG")
    if result.returncode == 0 and "GOODSIG" in status and validsig:
        keys = {validsig[0].upper(), validsig[-1].upper()}
        primary = validsig[-1].upper()
        if keys & set(verify.fingerprints):
            return f"gpg:{primary}"
        raise SignatureError(
            f"commit {sha} is signed by GPG key {primary}, which is not trusted "
            f"(trusted: {', '.join(verify.fingerprints)})",
            commit=sha,
            signer=primary,
        )
    signer = None
    for keyword in ("NO_PUBKEY", "ERRSIG", "BADSIG", "EXPKEYSIG", "REVKEYSIG", "EXPSIG"):
        if status.get(keyword):
            signer = status[keyword][0].upper()
            break
    if "NO_PUBKEY" in status:
        reason = "is signed by a GPG key that is not in the keyring"
    elif "BADSIG" in status:
        reason = "has a BAD GPG signature (the commit or signature was altered)"
    elif "EXPKEYSIG" in status:
        reason = "is signed by an expired GPG key"
    elif "REVKEYSIG" in status:
        reason = "is signed by a revoked GPG key"
    elif "EXPSIG" in status:
        reason = "has an expired GPG signature"
    else:
        last = result.stderr.strip().splitlines()[-1:] or ["no detail"]
        reason = f"failed GPG verification ({last[0]})"
    raise SignatureError(
        f"commit {sha} {reason}; signer {signer or 'unknown'}; "
        f"trusted: {', '.join(verify.fingerprints)}",
        commit=sha,
        signer=signer,
    )


def _verify_ssh(sha: str, data_file: Path, sig_file: Path, verify: SshVerify) -> str:
    allowed = str(verify.allowed_signers)
    if not verify.allowed_signers.is_file():
        raise SignatureError(
            f"allowed signers file {allowed} does not exist; cannot check commit {sha}",
            commit=sha,
        )
    found = _run(["ssh-keygen", "-Y", "find-principals", "-f", allowed, "-s", str(sig_file)])
    principals = [p for p in found.stdout.split() if p] if found.returncode == 0 else []
    for principal in principals:
        checked = _run(
            [
                "ssh-keygen",
                "-Y",
                "verify",
                "-f",
                allowed,
                "-I",
                principal,
                "-n",
                "git",
                "-s",
                str(sig_file),
            ],
            stdin_file=data_file,
        )
        if checked.returncode == 0:
            key = _SSH_KEY_FP.search(checked.stdout + checked.stderr)
            return f"ssh:{principal}" + (f" ({key.group(1)})" if key else "")
    # Name the key even though nobody trusts it: check-novalidate only proves the signature
    # matches the key embedded in it.
    probe = _run(
        ["ssh-keygen", "-Y", "check-novalidate", "-n", "git", "-s", str(sig_file)],
        stdin_file=data_file,
    )
    key = _SSH_KEY_FP.search(probe.stdout + probe.stderr)
    signer = key.group(1) if key else None
    if probe.returncode != 0:
        reason = "has an invalid SSH signature"
    elif principals:
        reason = f"has an SSH signature that {allowed} does not allow for git commits"
    else:
        reason = f"is signed by an SSH key not listed in {allowed}"
    raise SignatureError(
        f"commit {sha} {reason}; signer {signer or 'unknown'}", commit=sha, signer=signer
    )
