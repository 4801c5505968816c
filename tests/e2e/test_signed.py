"""Signed commits end to end: nodes that verify refuse unsigned tips and apply signed ones."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.cluster import DEFAULT_MODELS, Cluster, start_cluster
from tests.source.signing import gen_key, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def refuse_then_accept(cluster: Cluster, sign: tuple[list[str], dict[str, str]]) -> None:
    applied = cluster.head()
    cluster.write_spec(DEFAULT_MODELS + "  - {name: mistral:7b, replicas: 1}\n")
    unsigned = cluster.commit("unsigned change")
    cluster.wait(
        lambda: all(n.status().get("attempted_commit") == unsigned for n in cluster.nodes),
        cluster.interval + 10,
        "every node to see the unsigned commit",
    )
    for n in cluster.nodes:
        s = n.status()
        assert s["applied_commit"] == applied
        assert "not signed" in s["attempted_error"] or "unsigned" in s["attempted_error"]
    (cluster.repo / "NOTES").write_text("signed\n")
    signed = cluster.commit("signed change", sign[1], *sign[0])
    cluster.wait_converged(signed, timeout=cluster.interval + 10)


def test_gpg(tmp_path: Path) -> None:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    try:
        fpr = gen_key(home, "Ops <ops@example.com>")
        sign = (["-c", f"user.signingkey={fpr}", "-c", "gpg.program=gpg"], {"GNUPGHOME": str(home)})
        env = {"OLLADIST_VERIFY_GPG_KEYS": fpr, "OLLADIST_GNUPGHOME": str(home)}
        cluster = start_cluster(
            tmp_path / "c",
            n_nodes=2,
            instances=1,
            node_env={"n1": env, "n2": env},
            commit_with=sign,
        )
        try:
            refuse_then_accept(cluster, sign)
        finally:
            cluster.close()
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)


def test_ssh(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops@example.com", "-f", str(key))
    allowed = tmp_path / "allowed_signers"
    allowed.write_text("ops@example.com " + key.with_suffix(".pub").read_text())
    sign = (["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}"], {})
    env = {"OLLADIST_VERIFY_SSH_ALLOWED_SIGNERS": str(allowed)}
    cluster = start_cluster(
        tmp_path / "c", n_nodes=2, instances=1, node_env={"n1": env, "n2": env}, commit_with=sign
    )
    try:
        refuse_then_accept(cluster, sign)
    finally:
        cluster.close()
