"""The live view end to end: a real three-node cluster (reconcilers with ``--runtime local``,
olladist-sim instances, git over HTTP) watched from the moment it starts.

Ollama's contract, kept by the cluster: a model listed in ``/api/tags`` answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import ollama
import pytest

from olladist.names import normalize_model
from olladist.placement import place
from olladist.specload import load_spec
from tests.e2e.cluster import Cluster, start_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODELS = ["llama3.2:1b", "qwen2.5:0.5b", "nomic-embed-text:latest", "gemma2:2b"]
EMBED = "nomic-embed-text:latest"
START_TIMEOUT = 180.0


@pytest.fixture(scope="module")
def cold(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = start_cluster(tmp_path_factory.mktemp("live"), wait=False)
    try:
        yield c
    finally:
        c.close()


def use(client: httpx.Client, base: str, model: str) -> httpx.Response:
    if model == EMBED:
        return client.post(f"{base}/api/embed", json={"model": model, "input": "hi"})
    return client.post(
        f"{base}/api/generate", json={"model": model, "prompt": "hi", "stream": False}
    )


def test_every_listed_model_answers_from_the_first_moment(cold: Cluster) -> None:
    """From t=0, every gateway's /api/tags is polled every 100 ms, and every model is used as
    soon as it is listed: no answer but 200. Then `olladist wait` on every node, and one
    request per model per gateway."""
    results: list[tuple[str, str, int, float, str]] = []  # gateway, model, status, took, body
    lock = threading.Lock()
    t0 = time.monotonic()

    def watch(k: int) -> None:
        base = cold.gateway(k)
        used: set[str] = set()
        with httpx.Client(timeout=120, trust_env=False) as h:
            while used != set(MODELS) and time.monotonic() - t0 < START_TIMEOUT:
                try:
                    listed = [m["name"] for m in h.get(f"{base}/api/tags").json()["models"]]
                except httpx.HTTPError:
                    listed = []  # the gateway is not up yet
                for model in sorted(set(listed) - used):
                    used.add(model)
                    start = time.monotonic()
                    r = use(h, base, model)
                    with lock:
                        results.append(
                            (base, model, r.status_code, time.monotonic() - start, r.text[:300])
                        )
                time.sleep(0.1)

    threads = [threading.Thread(target=watch, args=(k,)) for k in range(len(cold.nodes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(START_TIMEOUT + 130)
    listed_at = time.monotonic() - t0
    bad = [r for r in results if r[2] != 200]
    assert bad == []
    assert {(r[0], r[1]) for r in results} == {
        (cold.gateway(k), m) for k in range(len(cold.nodes)) for m in MODELS
    }, "every model was listed at every gateway"
    longest = max(r[3] for r in results)
    print(f"all models listed everywhere after {listed_at:.1f}s; longest request {longest:.2f}s")
    for node in cold.nodes:
        done = cold.olladist_wait(node, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "converged and serving" in done.stdout
    with httpx.Client(timeout=60, trust_env=False) as h:
        for k in range(len(cold.nodes)):
            for model in MODELS:
                r = use(h, cold.gateway(k), model)
                assert r.status_code == 200, r.text


def test_tags_entries_are_the_holders_own(cold: Cluster) -> None:
    spec = load_spec(cold.repo)
    placement = place(spec)
    ports = {n.name: [i.port for i in n.instances] for n in spec.nodes}
    for k in range(len(cold.nodes)):
        with ollama.Client(host=cold.gateway(k), trust_env=False) as client:
            listed = {m.model: m for m in client.list().models}
        assert sorted(listed) == sorted(MODELS)
        for model, entry in listed.items():
            # The gateway shows its own node's entry when it holds the model, else the first
            # holder's by name (each node pulled it itself: modified_at differs between them).
            holders = sorted(placement.nodes_for(normalize_model(model)))
            here = cold.nodes[k].name
            holder = here if here in holders else holders[0]
            with ollama.Client(host=f"http://127.0.0.1:{ports[holder][0]}", trust_env=False) as c:
                own = {m.model: m for m in c.list().models}[model]
            assert (entry.size, entry.digest, entry.modified_at, entry.details) == (
                own.size,
                own.digest,
                own.modified_at,
                own.details,
            )
            assert entry.digest and entry.size and entry.details and entry.details.family


def test_ps_lists_every_loaded_model_once(cold: Cluster) -> None:
    with ollama.Client(host=cold.gateway(2), trust_env=False) as client:
        names = [m.model for m in client.ps().models]  # the official types read it
    assert sorted(names) == sorted(set(names))
    assert set(MODELS) <= set(names)  # every model was used above (keep_alive 10m)
    with httpx.Client(timeout=10, trust_env=False) as h:
        raw = h.get(cold.gateway(2) + "/api/ps").json()["models"]
    nodes = {n.name for n in cold.nodes}
    for m in raw:
        assert m["loaded_on"] and all(w.split("/")[0] in nodes for w in m["loaded_on"])


def test_wait_times_out_with_exit_1_and_says_why(cold: Cluster) -> None:
    node = cold.nodes[0]
    # A peer's gateway stopped by hand: the node's gateway cannot reach it.
    pids = cold.nodes[1].service_pids()
    cold.stop_node(cold.nodes[1])
    try:
        done = cold.olladist_wait(node, timeout=3)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "peer n2" in done.stdout and "cannot reach it" in done.stdout
    finally:
        assert pids  # it ran before
        cold.start_node(cold.nodes[1])
    done = cold.olladist_wait(node, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
