"""Health after apply and rollback by itself, end to end: three nodes following one git
repository over HTTP, olladist-sim instances, clients streaming through every gateway.

A commit whose instance environment makes the simulator exit at start reaches the one node it
changes, in the first wave; that node rolls back to its last applied commit by itself, serves
again, names the commit and the reason in its status and its diff, and does not try it again.
The other nodes read its failed report at the wave gate and never apply the commit; their
status names it and the reason. The next good commit goes through everywhere.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from olladist.cli import main
from olladist.render import instance_dropin_path
from tests.e2e.cluster import Cluster, start_cluster
from tests.e2e.load import Clients

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPLICATED = ["llama3.2:1b"]  # replicas: 2 in DEFAULT_MODELS
SINGLE = ["qwen2.5:0.5b", "gemma2:2b"]  # replicas: 1


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = start_cluster(tmp_path_factory.mktemp("rollout"), policy=", rollout: {check_timeout: 30s}")
    try:
        yield c
    finally:
        c.close()


def _set_instance_env(cluster: Cluster, node: int, env: str) -> None:
    """Give instance i0 of ``node`` an ``env`` mapping (YAML flow text) in cluster.yaml."""
    path = cluster.repo / "cluster.yaml"
    port = cluster.node_specs[node]["ports"][0]
    lines = []
    for line in path.read_text().splitlines():
        if f"{{name: i0, port: {port}," in line:
            line = f"      - {{name: i0, port: {port}, num_parallel: 4{env}}}"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")


def test_a_commit_whose_instance_exits_at_start_is_rolled_back_by_its_node(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    good = cluster.head()
    n1, others = cluster.nodes[0], cluster.nodes[1:]
    pids_before = n1.service_pids()
    with Clients(cluster, REPLICATED + SINGLE) as clients:
        time.sleep(1.0)
        _set_instance_env(cluster, 0, ", env: {OLLADIST_SIM_FAULTS: exit_at_start}")
        bad = cluster.commit("n1: an environment its instance cannot start with")

        def rolled_back() -> bool:
            s = n1.status()
            return (
                s.get("attempted_commit") == bad
                and bad in (s.get("rollout") or {}).get("failed", {})
                and s.get("applied_commit") == good
                and not s.get("drift")
            )

        took = cluster.wait(rolled_back, cluster.interval + 60, "n1 to roll back")
        with capsys.disabled():
            print(f"\ncommit to rolled back on n1: {took:.1f}s")
        # The other nodes come in later waves: they read n1's failed report at the gate and
        # stop there, on the commit they run.
        cluster.wait(
            lambda: all(
                (n.status().get("rollout") or {}).get("state") == "stopped" for n in others
            ),
            cluster.interval + 30,
            "the other nodes to stop the rollout",
        )
        time.sleep(1.0)
    status = n1.status()
    rollout = status["rollout"]
    assert rollout["commit"] == bad and rollout["state"] == "failed"
    assert rollout["waves"][0] == ["n1"] and rollout["changed_waves"] == 1
    assert rollout["wave"] == 1
    assert "olladist-ollama@i0" in rollout["reason"] and "exited" in rollout["reason"]
    assert bad in status["attempted_error"]
    assert "rolled back to " + good in status["attempted_error"]
    for n in others:
        s = n.status()
        assert s["applied_commit"] == good and s["attempted_commit"] == bad
        r = s["rollout"]
        assert (r["commit"], r["state"], r["stopped"]["nodes"]) == (bad, "stopped", ["n1"])
        assert f"commit {bad[:12]} failed on n1: " in r["reason"]
        assert "olladist-ollama@i0" in r["reason"] and "exited" in r["reason"]
        assert bad in s["attempted_error"] and "stopped before this node" in s["attempted_error"]

    # n1 serves again, from its old instance, which runs again.
    pids_after = n1.service_pids()
    assert pids_after["olladist-ollama@i0.service"] != pids_before["olladist-ollama@i0.service"]
    assert pids_after["olladist-ollama@i1.service"] == pids_before["olladist-ollama@i1.service"]
    dropin = n1.root / instance_dropin_path("i0").lstrip("/")
    assert "exit_at_start" not in dropin.read_text()
    with httpx.Client(timeout=30, trust_env=False) as c:
        r = c.post(
            f"{cluster.gateway(0)}/api/generate",
            json={"model": REPLICATED[0], "prompt": "hi", "stream": False},
        )
        assert r.status_code == 200 and r.json()["done"] is True

    with capsys.disabled():
        failed = {m: len(f) for m, f in clients.failures.items()}
        print(f"requests completed: {clients.done}, failed by model: {failed}")
    assert clients.done > 50
    for model in REPLICATED:
        assert clients.failures.get(model, []) == [], clients.failures[model][:3]
    # The node has two instances: its other one kept serving the models it holds alone.
    for model in SINGLE:
        assert clients.failures.get(model, []) == [], clients.failures[model][:3]

    # It does not try the commit again; status and diff say why.
    time.sleep(cluster.interval * 2)
    assert n1.status()["applied_commit"] == good
    assert n1.service_pids() == pids_after
    capsys.readouterr()
    assert main(["status", "--root", str(n1.root)]) == 1
    out = capsys.readouterr().out
    assert f"rollout:    {bad[:12]} from {good[:12]}: wave 1 of " in out and ", failed" in out
    assert "exited after its restart" in out
    # diff compares with the tip, the failed commit: its change is pending, and why it is.
    assert main(["diff", "--root", str(n1.root), "--json"]) == 1
    diff = json.loads(capsys.readouterr().out)
    assert [a["target"] for a in diff["actions"] if a["kind"] == "restart"] == [
        "olladist-ollama@i0.service"
    ]
    assert diff["rollout"]["plan"]["waves"] == [["n1"]]  # the changed nodes
    assert bad in diff["rollout"]["state"]["failed"]
    main(["diff", "--root", str(n1.root)])
    assert f"rollout: this node rolled back from {bad[:12]}" in capsys.readouterr().out


def test_a_model_its_registry_lacks_fails_the_check_and_is_rolled_back(cluster: Cluster) -> None:
    good = cluster.nodes[0].status()["applied_commit"]
    _set_instance_env(cluster, 0, "")  # the environment of the commit n1 runs
    path = cluster.repo / "cluster.yaml"
    path.write_text(path.read_text() + "  - {name: no-such-model:1b, nodes: [n1]}\n")
    bad = cluster.commit("n1: a model the registry does not have")
    n1 = cluster.nodes[0]
    cluster.wait(
        lambda: bad in (n1.status().get("rollout") or {}).get("failed", {}),
        cluster.interval + 60,
        "n1 to fail the commit",
    )
    s = n1.status()
    assert s["applied_commit"] == good
    assert "model no-such-model:1b" in s["rollout"]["reason"]
    assert "no-such-model:1b" not in s["models"]
    # The gateway no longer routes the model to n1: its config is back to the good commit.
    cluster.wait(lambda: not n1.status().get("drift"), 10, "n1 to settle")
    rendered = [
        n1.root / "etc/olladist/haproxy.cfg",
        *(n1.root / "etc/olladist/gateway").rglob("*"),
    ]
    assert not [f for f in rendered if f.is_file() and "no-such-model" in f.read_text()]
    with httpx.Client(timeout=30, trust_env=False) as c:
        r = c.post(
            f"{cluster.gateway(0)}/api/generate",
            json={"model": REPLICATED[0], "prompt": "hi", "stream": False},
        )
        assert r.status_code == 200


def test_the_next_good_commit_applies_and_checks_healthy(cluster: Cluster) -> None:
    path = cluster.repo / "cluster.yaml"
    path.write_text(path.read_text().replace("  - {name: no-such-model:1b, nodes: [n1]}\n", ""))
    _set_instance_env(cluster, 0, ", env: {OLLAMA_FLASH_ATTENTION: '1'}")
    fixed = cluster.commit("n1: a good environment")
    cluster.wait_converged(fixed, timeout=cluster.interval + 60)
    s = cluster.nodes[0].status()
    assert s["rollout"]["commit"] == fixed and s["rollout"]["state"] == "healthy"
    assert s["attempted_error"] is None
    dropin = Path(cluster.nodes[0].root, instance_dropin_path("i0").lstrip("/"))
    assert "OLLAMA_FLASH_ATTENTION" in dropin.read_text()
