"""The live view and peers that fail or lag, in real HAProxy gateways: a peer whose only
instance just died (its own gateway answers 503 before the sending gateway's view knows), and a
peer of an older olladist without ``/olladist/v1/live``.

Nodes: n0 and n1, one instance each (fakes, tests/gateway/fake_ollama.py), except where a test
puts the real simulator behind a peer port.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from olladist.sim.process import start_sim
from tests.gateway.harness import Cluster, cluster, live, loopback_hosts, make_spec, wait_until

pytestmark = pytest.mark.integration

QUEUE = {"timeouts": {"queue": "3s", "server": "30s", "client": "30s", "connect": "1s"}}


@pytest.fixture
def two(gw_tmp: Path) -> Iterator[Cluster]:
    spec = make_spec(
        loopback_hosts(2), {0: [4], 1: [4]}, [{"name": "both", "nodes": ["n0", "n1"]}], QUEUE
    )
    with cluster(gw_tmp, spec) as c:
        yield c


def test_a_peers_only_instance_killed_the_replicated_model_keeps_answering(two: Cluster) -> None:
    """Requests enter at n0; n1's only instance is killed. Until n0's view sees it, n0 still
    sends to n1, whose gateway answers 503: n0 must serve those requests elsewhere (its own
    instance) instead of passing the 503 on. Zero failed requests."""
    answered: dict[str, int] = {}
    failed: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    url = two.gw("n0").url + "/api/generate"

    def hammer() -> None:
        with httpx.Client(trust_env=False, timeout=30) as h:
            while not stop.is_set():
                try:
                    r = h.post(url, json={"model": "both", "prompt": "hi"})
                except httpx.HTTPError as exc:
                    with lock:
                        failed.append(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    if r.status_code == 200:
                        who = r.json()["instance"]
                        answered[who] = answered.get(who, 0) + 1
                    else:
                        failed.append(f"{r.status_code} {r.text[:200]}")

    def count() -> int:
        with lock:
            return sum(answered.values()) + len(failed)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: answered.get("n1/i0", 0) >= 5, timeout=30)  # n1 takes its share
        two.fakes["n1/i0"].kill()
        wait_until(lambda: "both:latest" not in live(two.gw("n0"))["ready"], timeout=30)
        after = count()
        wait_until(lambda: count() >= after + 40, timeout=60)  # and on, with n1 known down
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failed == []
    assert answered.get("n0/i0", 0) > 0


def test_a_peer_without_the_live_endpoint_is_routed_to_on_placement_alone(
    gw_tmp: Path,
) -> None:
    """An older olladist during an upgrade: its peer port answers the Ollama API but 404 to
    /olladist/v1/live. Here that peer port is a real simulator. n0's gateway trusts
    placement for it: the model is listed and requests for it reach the peer."""
    hosts = loopback_hosts(2)
    model = "qwen2.5:0.5b"
    spec = make_spec(hosts, {0: [4], 1: [4]}, [{"name": model, "nodes": ["n1"]}], QUEUE)
    env = {
        "OLLADIST_SIM_QUIET": "1",
        "OLLADIST_SIM_PULL_GBPS": "50",
        "OLLADIST_SIM_LOAD_GBPS": "50",
    }
    sim = start_sim(gw_tmp / "old", env, host=hosts[1], port=spec.gateway.peer_port)
    try:
        with httpx.Client(trust_env=False, timeout=60) as h:
            pulled = h.post(sim.url + "/api/pull", json={"model": model, "stream": False})
            assert pulled.status_code == 200, pulled.text
            assert h.get(sim.url + "/olladist/v1/live").status_code == 404  # an older peer
            with cluster(gw_tmp, spec, gateways=["n0"], wait_ready=False) as c:
                gw = c.gw("n0")
                wait_until(lambda: f"{model}" in live(gw)["ready"], timeout=30)
                # n0 asked n1 for its live report and got the 404 of an older peer.
                (n1,) = [p for p in live(gw)["peers"] if p["node"] == "n1"]
                assert n1["error"] == "HTTP 404"
                assert n1["health"].startswith("UP")
                tags = h.get(gw.url + "/api/tags").json()["models"]
                assert model in [m["name"] for m in tags]
                for _ in range(3):
                    r = h.post(
                        gw.url + "/api/generate",
                        json={"model": model, "prompt": "hi", "stream": False},
                    )
                    assert r.status_code == 200, r.text
                    assert r.json()["done"] is True
    finally:
        sim.stop()
