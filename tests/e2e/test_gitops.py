"""The GitOps loop end to end: three nodes, a git repo over HTTP, olladist-sim instances."""

from __future__ import annotations

import concurrent.futures
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from olladist.cli import main
from olladist.placement import place
from olladist.specload import load_spec
from tests.e2e.cluster import DEFAULT_MODELS, Cluster, git, start_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = start_cluster(tmp_path_factory.mktemp("gitops"))
    try:
        yield c
    finally:
        c.close()


def generate(client: httpx.Client, base: str, model: str) -> dict[str, object]:
    r = client.post(f"{base}/api/generate", json={"model": model, "prompt": "hi", "stream": False})
    r.raise_for_status()
    body: dict[str, object] = r.json()
    return body


def test_commit_adding_a_model_converges_every_node_within_interval_plus_5s(
    cluster: Cluster,
) -> None:
    cluster.write_spec(DEFAULT_MODELS + "  - {name: mistral:7b, replicas: 1}\n")
    head = cluster.commit("add mistral")
    took = cluster.wait_converged(head, timeout=cluster.interval + 5)
    print(f"commit-to-converged (git over HTTP, 3 nodes): {took:.2f}s")
    cluster.wait(lambda: _answers(cluster, "mistral:7b"), 10, "mistral through every gateway")


def _answers(cluster: Cluster, model: str) -> bool:
    with httpx.Client(timeout=10, trust_env=False) as client:
        for k in range(len(cluster.nodes)):
            try:
                generate(client, cluster.gateway(k), model)
            except httpx.HTTPError:
                return False
    return True


def test_env_change_restarts_instances_with_no_failed_request(cluster: Cluster) -> None:
    before = {n.name: n.service_pids() for n in cluster.nodes}
    stop = threading.Event()
    failures: list[str] = []
    done = [0]
    lock = threading.Lock()

    def client_loop(k: int) -> None:
        base = cluster.gateway(k % len(cluster.nodes))
        model = ["llama3.2:1b", "qwen2.5:0.5b", "gemma2:2b"][k % 3]
        with httpx.Client(timeout=60, trust_env=False) as c:
            while not stop.is_set():
                try:
                    with c.stream(
                        "POST", f"{base}/api/generate", json={"model": model, "prompt": "x"}
                    ) as r:
                        if r.status_code != 200:
                            r.read()
                            raise AssertionError(f"{r.status_code} {r.text[:200]}")
                        lines = [line for line in r.iter_lines() if line]
                        if '"done":true' not in lines[-1]:
                            raise AssertionError(f"stream ended early: {lines[-1][:200]}")
                    with lock:
                        done[0] += 1
                except Exception as exc:  # every failure counts, whatever its kind
                    with lock:
                        failures.append(f"{base} {model}: {exc!r}")

    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        futures = [pool.submit(client_loop, k) for k in range(100)]
        try:
            time.sleep(1.0)
            spec = (cluster.repo / "cluster.yaml").read_text()
            (cluster.repo / "cluster.yaml").write_text(
                spec.replace("OLLAMA_KEEP_ALIVE: 10m", "OLLAMA_KEEP_ALIVE: 11m")
            )
            head = cluster.commit("keep models loaded a minute longer")
            cluster.wait_converged(head, timeout=90)
            time.sleep(1.0)
        finally:
            # Also when the wait fails: the clients loop until told, and the pool's exit
            # waits for them (a failed wait left 100 threads spinning and the run hung).
            stop.set()
        for f in futures:
            f.result()
    after = {n.name: n.service_pids() for n in cluster.nodes}
    for name, pids in before.items():
        for unit, pid in pids.items():
            if unit.startswith("olladist-ollama@"):
                assert after[name][unit] != pid, f"{name} {unit} was not restarted"
    print(f"requests completed during the rolling restart: {done[0]}, failed: {len(failures)}")
    assert done[0] > 100
    assert failures == []


def test_bad_commit_is_refused_everywhere_and_a_fix_goes_through(cluster: Cluster) -> None:
    good = cluster.head()
    spec_path = cluster.repo / "cluster.yaml"
    original = spec_path.read_text()
    spec_path.write_text(original.replace("replicas: 2}", "replicas: two}", 1))
    bad = cluster.commit("typo")
    cluster.wait(
        lambda: all(n.status().get("attempted_commit") == bad for n in cluster.nodes),
        cluster.interval + 10,
        "every node to try the bad commit",
    )
    for n in cluster.nodes:
        s = n.status()
        assert s["applied_commit"] == good
        assert "cluster.yaml:" in s["attempted_error"]
        assert "replicas" in s["attempted_error"]
    # The cluster keeps serving from the last good commit.
    with httpx.Client(timeout=30, trust_env=False) as c:
        assert generate(c, cluster.gateway(1), "llama3.2:1b")["done"] is True
    spec_path.write_text(original)
    fixed = cluster.commit("fix typo")
    cluster.wait_converged(fixed, timeout=cluster.interval + 10)
    assert all(n.status().get("attempted_error") is None for n in cluster.nodes)


def test_force_push_to_an_older_commit_is_refused(cluster: Cluster) -> None:
    applied = cluster.head()
    (cluster.repo / "NOTES").write_text("x\n")
    newer = cluster.commit("notes")
    cluster.wait_converged(newer, timeout=cluster.interval + 10)
    git(cluster.repo, "reset", "-q", "--hard", applied)
    cluster.wait(
        lambda: all(n.status().get("attempted_error") for n in cluster.nodes),
        cluster.interval + 10,
        "every node to refuse the rollback",
    )
    for n in cluster.nodes:
        s = n.status()
        assert s["applied_commit"] == newer
        assert "fast-forward" in s["attempted_error"] or "rollback" in s["attempted_error"]
    git(cluster.repo, "reset", "-q", "--hard", newer)
    cluster.wait_converged(newer, timeout=cluster.interval + 10)


DRIFT_WAKE = "drift:/etc/olladist/haproxy.cfg"  # the file watcher woke it, not the interval


def test_hand_edit_of_the_gateway_config_is_corrected_by_the_watcher(cluster: Cluster) -> None:
    node = cluster.nodes[0]
    cfg = node.root / "etc/olladist/haproxy.cfg"
    original = cfg.read_text()
    cfg.write_text(original + "\n# hand edit\n")
    took = cluster.wait(lambda: cfg.read_text() == original, 10, "the edit to be corrected")
    print(f"hand edit corrected after {took:.2f}s")  # the figure: bench/converge_bench.py
    # The tick that corrected it records why it ran once it ends.
    cluster.wait(lambda: node.status()["last_reason"] == DRIFT_WAKE, 5, "the watcher's tick")


def test_hand_edit_under_drift_report_is_left_and_reported(cluster: Cluster) -> None:
    cluster.write_spec(
        DEFAULT_MODELS + "  - {name: mistral:7b, replicas: 1}\n", policy=", drift: report"
    )
    head = cluster.commit("report drift only")
    cluster.wait_converged(head, timeout=cluster.interval + 10)
    node = cluster.nodes[1]
    cfg = node.root / "etc/olladist/haproxy.cfg"
    original = cfg.read_text()
    edited = original + "\n# hand edit, kept\n"
    cfg.write_text(edited)
    took = cluster.wait(
        lambda: any(d["target"] == "/etc/olladist/haproxy.cfg" for d in node.status()["drift"]),
        10,
        "the drift to be reported",
    )
    print(f"hand edit reported after {took:.2f}s")
    assert node.status()["last_reason"] == DRIFT_WAKE  # saved with the drift it reports
    time.sleep(1.0)
    assert cfg.read_text() == edited
    cfg.write_text(original)
    cluster.write_spec(DEFAULT_MODELS + "  - {name: mistral:7b, replicas: 1}\n")
    head = cluster.commit("correct drift again")
    cluster.wait_converged(head, timeout=cluster.interval + 10)


def test_status_and_metrics_show_health_models_and_commit(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    node = cluster.nodes[0]
    capsys.readouterr()
    assert main(["status", "--root", str(node.root)]) == 0
    out = capsys.readouterr().out
    assert f"applied:    {cluster.head()}" in out
    assert "instance    i0" in out and "peer        n2" in out
    assert "UP" in out
    # The models line is what placement gives n1, computed here from the committed spec.
    placed = place(load_spec(cluster.repo)).models_for("n1")
    assert placed
    assert f"models:     {', '.join(placed)}" in out.splitlines()
    metrics = (node.root / "var/lib/olladist/olladist.prom").read_text()
    assert f'olladist_applied_commit_info{{node="n1",commit="{cluster.head()}"}} 1' in metrics
    assert 'olladist_server_up{node="n1",kind="instance",server="i0"} 1' in metrics
    assert 'olladist_drift_items{node="n1"} 0' in metrics


def test_sigterm_leaves_no_process_of_the_node(cluster: Cluster) -> None:
    node = cluster.nodes[-1]
    pids = node.service_pids()
    assert len(pids) == 3  # two instances and the gateway
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(timeout=30) == 0
    for unit, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists(), f"{unit} (pid {pid}) is still running"
    # Nothing of that node listens any more.
    with pytest.raises(httpx.ConnectError):
        httpx.get(cluster.gateway(len(cluster.nodes) - 1) + "/api/version", timeout=2)
    # The node stays down; the fixture's close() has nothing left to stop for it.
