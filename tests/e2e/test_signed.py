"""Signed commits end to end: nodes that verify refuse unsigned tips, and signed tips that
bring an unsigned commit, apply signed ones, and keep refusing older commits after their
state directory is deleted."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.cluster import DEFAULT_MODELS, Cluster, git, start_cluster
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
    # A signed commit on top does not carry the unsigned one in: the whole way is checked.
    (cluster.repo / "NOTES").write_text("signed\n")
    on_top = cluster.commit("signed change on top", sign[1], *sign[0])
    cluster.wait(
        lambda: all(n.status().get("attempted_commit") == on_top for n in cluster.nodes),
        cluster.interval + 10,
        "every node to see the signed commit on top",
    )
    for n in cluster.nodes:
        s = n.status()
        assert s["applied_commit"] == applied
        assert f"commit {unsigned} in its history" in s["attempted_error"]
    # Dropping the unsigned commit and signing the change goes through.
    git(cluster.repo, "reset", "-q", "--hard", applied)
    cluster.write_spec(DEFAULT_MODELS + "  - {name: mistral:7b, replicas: 1}\n")
    signed = cluster.commit("signed change", sign[1], *sign[0])
    cluster.wait_converged(signed, timeout=cluster.interval + 10)


def deleting_state_keeps_the_floor(cluster: Cluster) -> None:
    """A node whose /var/lib/olladist is deleted still refuses an older signed commit."""
    node = cluster.nodes[1]
    applied = cluster.head()
    older = git(cluster.repo, "rev-parse", "HEAD~1")
    record = node.root / "etc/olladist/accepted-commit"
    cluster.wait(
        lambda: record.is_file() and record.read_text().strip() == applied,
        cluster.interval + 10,
        "the floor record of the applied commit",
    )
    cluster.stop_node(node)
    shutil.rmtree(node.root / "var/lib/olladist")
    git(cluster.repo, "reset", "-q", "--hard", older)  # the server offers an older signed commit
    cluster.start_node(node)
    cluster.wait(
        lambda: node.status().get("attempted_commit") == older,
        cluster.interval + 20,
        "the node to see the older commit",
    )
    s = node.status()
    assert s["applied_commit"] == "" and "the floor record of " + applied in s["attempted_error"]
    git(cluster.repo, "reset", "-q", "--hard", applied)
    cluster.wait_converged(applied, timeout=cluster.interval + 60)


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
        deleting_state_keeps_the_floor(cluster)
    finally:
        cluster.close()
