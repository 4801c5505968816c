"""The wave gate end to end: three nodes of two instances each, following one git repository
over HTTP, clients streaming through every gateway.

- A commit that restarts every instance rolls out wave by wave: every gateway's view of its
  instance is sampled every 100 ms, and at no sample are all replicas of a model restarting;
  no request to a model with two replicas fails; no node of a wave applies before every node
  of the earlier waves has applied and checked healthy.
- A node of a later wave whose reconciler is SIGKILLed while it waits at the gate resumes the
  wait on restart (the same wave, the same start, nothing applied) and applies after the
  earlier wave.
- A wave that does not report within ``wave_timeout`` stops the rollout: the later nodes say
  which wave and which nodes, stay on their commit, and the next commit rolls out everywhere.

A node is *restarting* while any of its instances is out of service in its gateway (a node
restarts its instances one at a time, so it keeps serving; what the waves prevent is every
holder of a model being in the middle of a restart at once).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from olladist.cli import main
from olladist.gateway import INSTANCES_BACKEND
from olladist.gateway.runtime import parse_stat
from olladist.placement import place
from olladist.rollout import RolloutPlan, plan_rollout
from olladist.specload import load_spec
from tests.e2e.cluster import Cluster, NodeProc, git, start_cluster
from tests.e2e.load import Clients

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODELS = """\
  - {name: llama3.2:1b, replicas: 2}
  - {name: nomic-embed-text, replicas: 2}
"""
REPLICATED = ["llama3.2:1b", "nomic-embed-text"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = start_cluster(
        tmp_path_factory.mktemp("waves"),
        models=MODELS,
        policy=", rollout: {check_timeout: 30s, wave_timeout: 5m}",
    )
    try:
        yield c
    finally:
        for n in c.nodes:  # a test that failed half way may leave a reconciler stopped
            if n.proc is not None and n.proc.poll() is None:
                os.kill(n.proc.pid, signal.SIGCONT)
        c.close()


class Sampler:
    """Every 100 ms, which nodes are restarting: an instance not in service in its gateway
    (DRAIN, MAINT, DOWN), or no answer from its stats page."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.samples: list[frozenset[str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _out_of_service(self, c: httpx.Client, node: NodeProc) -> bool:
        try:
            r = c.get(f"http://{node.addr}:8404/stats;csv")
            r.raise_for_status()
        except httpx.HTTPError:
            return True
        rows = [s for s in parse_stat(r.text) if s.backend == INSTANCES_BACKEND]
        return not rows or not all(s.status.startswith("UP") for s in rows)

    def _run(self) -> None:
        with httpx.Client(timeout=2.0, trust_env=False) as c:
            while not self.stop.is_set():
                out = frozenset(n.name for n in self.cluster.nodes if self._out_of_service(c, n))
                self.samples.append(out)
                self.stop.wait(0.1)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _keep_alive(cluster: Cluster, value: str) -> None:
    """Change the environment of every instance: every instance restarts."""
    path = cluster.repo / "cluster.yaml"
    text = path.read_text()
    old = next(line for line in text.splitlines() if "OLLAMA_KEEP_ALIVE" in line)
    path.write_text(text.replace(old, f"    OLLAMA_KEEP_ALIVE: {value}"))


def _set_policy(cluster: Cluster, rollout: str) -> None:
    path = cluster.repo / "cluster.yaml"
    lines = [
        f"policy: {{interval: 60s, restart_stagger: 1s, rollout: {{{rollout}}}}}"
        if line.startswith("policy:")
        else line
        for line in path.read_text().splitlines()
    ]
    path.write_text("\n".join(lines) + "\n")


def _commit_planned(cluster: Cluster, message: str) -> tuple[str, RolloutPlan]:
    """Commit the working tree; the commit and the waves every node computes for it."""
    parent = cluster.base / "parent-spec"  # outside the repository: not committed
    parent.mkdir(exist_ok=True)
    (parent / "cluster.yaml").write_text(git(cluster.repo, "show", "HEAD:cluster.yaml") + "\n")
    sha = cluster.commit(message)
    return sha, plan_rollout(load_spec(parent), load_spec(cluster.repo), sha)


def _by_name(cluster: Cluster, names: tuple[str, ...]) -> list[NodeProc]:
    return [n for n in cluster.nodes if n.name in names]


def _signal(nodes: list[NodeProc], sig: signal.Signals) -> None:
    for n in nodes:
        assert n.proc is not None
        os.kill(n.proc.pid, sig)


def _rollout(node: NodeProc) -> dict[str, Any]:
    return node.status().get("rollout") or {}


def test_a_commit_that_restarts_every_instance_rolls_out_wave_by_wave(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = load_spec(cluster.repo)
    holders = {m.key: place(spec).nodes_for(m.key) for m in spec.models}
    assert len(holders) == 2 and all(len(h) == 2 for h in holders.values()), holders
    _keep_alive(cluster, "11m")
    with Clients(cluster, REPLICATED) as clients, Sampler(cluster) as sampler:
        time.sleep(1.0)
        sha, plan = _commit_planned(cluster, "every instance: a new keep-alive")
        assert len(plan.waves) >= 2  # replicas apart: not every node at once
        took = cluster.wait_converged(sha, timeout=cluster.interval + 120)
        time.sleep(1.0)
    with capsys.disabled():  # a figure, not an assertion (bench/ holds the timed ones)
        print(f"\ncommit to converged, {len(plan.gate_waves)} waves: {took:.1f}s")

    # Every node restarted, and was seen to.
    seen = set().union(*sampler.samples)
    assert seen == {n.name for n in cluster.nodes}, seen
    for sample in sampler.samples:
        for model, nodes in holders.items():
            assert not set(nodes) <= sample, f"every replica of {model} restarting: {sample}"
    assert clients.done > 20
    assert clients.failures == {}, {m: f[:3] for m, f in clients.failures.items()}

    # Wave by wave: no node applied before every node of the earlier waves had.
    applied_at = {n.name: n.status()["applied_at"] for n in cluster.nodes}
    waves = _rollout(cluster.nodes[0])["waves"]
    assert waves == [list(w) for w in plan.gate_waves]
    for k in range(1, len(plan.waves)):
        before = max(applied_at[n] for w in plan.waves[:k] for n in w)
        assert all(applied_at[n] >= before for n in plan.waves[k]), (plan.waves, applied_at)
    for n in cluster.nodes:
        assert (_rollout(n)["commit"], _rollout(n)["state"]) == (sha, "healthy")


def test_a_node_killed_while_it_waits_at_the_gate_resumes_the_wait(cluster: Cluster) -> None:
    every = list(cluster.nodes)
    _signal(every, signal.SIGSTOP)  # nobody sees the commit before its waves are known
    _keep_alive(cluster, "12m")
    sha, plan = _commit_planned(cluster, "every instance: another keep-alive")
    first = _by_name(cluster, plan.waves[0])
    victim = _by_name(cluster, plan.waves[1])[0]
    # The first wave stays stopped: it cannot answer, so it is not healthy, and waits.
    _signal([n for n in every if n not in first], signal.SIGCONT)

    def waiting() -> bool:
        r = _rollout(victim)
        return r.get("commit") == sha and r.get("state") == "waiting"

    cluster.wait(waiting, cluster.interval + 30, f"{victim.name} to wait at the gate")
    gate = _rollout(victim)["gate"]
    assert gate["wave"] == 1 and gate["nodes"] == sorted(plan.waves[0])
    assert "unreachable" in gate["reason"]
    pids = victim.service_pids()
    assert victim.proc is not None
    victim.proc.kill()  # SIGKILL: no clean-up of any kind
    victim.proc.wait()
    killed_at = time.time()
    cluster.start_node(victim)
    cluster.wait(
        lambda: waiting() and _rollout(victim)["at"] > killed_at,
        cluster.interval + 30,
        f"{victim.name} to wait again after its restart",
    )
    s = victim.status()
    assert s["rollout"]["gate"]["since"] == gate["since"]  # the same wait, resumed
    assert s["rollout"]["gate"]["wave"] == 1
    assert s["applied_commit"] != sha and victim.service_pids() == pids  # nothing applied

    _signal(first, signal.SIGCONT)
    cluster.wait_converged(sha, timeout=cluster.interval + 120)
    assert victim.status()["applied_at"] >= max(n.status()["applied_at"] for n in first)
    assert victim.service_pids() != pids


def test_a_wave_that_does_not_report_in_time_stops_the_rollout(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    every = list(cluster.nodes)
    good = cluster.head()
    _signal(every, signal.SIGSTOP)
    _keep_alive(cluster, "13m")
    _set_policy(cluster, "check_timeout: 30s, wave_timeout: 4s")
    sha, plan = _commit_planned(cluster, "every instance, and a short wave timeout")
    first = _by_name(cluster, plan.waves[0])
    later = [n for n in every if n not in first]
    _signal(later, signal.SIGCONT)

    def stopped(n: NodeProc) -> bool:
        r = _rollout(n)
        return r.get("commit") == sha and r.get("state") == "stopped"

    cluster.wait(lambda: all(stopped(n) for n in later), cluster.interval + 30, "the stop")
    _signal(first, signal.SIGCONT)
    for n in later:
        s = n.status()
        r = s["rollout"]
        assert r["stopped"]["wave"] == 1 and r["stopped"]["nodes"] == sorted(plan.waves[0])
        assert f"wave 1 did not report healthy on {sha[:12]} within 4s" in r["reason"]
        assert s["applied_commit"] == good and "stopped before this node" in s["attempted_error"]
    capsys.readouterr()
    main(["diff", "--root", str(later[0].root)])
    assert f"rollout: {sha[:12]} stopped before this node: wave 1 did not report" in (
        capsys.readouterr().out
    )
    # The first wave goes on (it waits for nobody); the later ones stay where they are.
    cluster.wait(
        lambda: all(n.status().get("applied_commit") == sha for n in first),
        cluster.interval + 60,
        "the first wave to apply",
    )
    time.sleep(cluster.interval * 2)
    assert all(n.status()["applied_commit"] == good for n in later)

    # The next commit rolls out everywhere.
    _set_policy(cluster, "check_timeout: 30s, wave_timeout: 5m")
    fixed = cluster.commit("a wave timeout that fits")
    cluster.wait_converged(fixed, timeout=cluster.interval + 120)
