"""A drain holds against the live view's picks, in a real HAProxy running live.lua.

While one holder of a model is not ready (an instance restarting), requests for that model
are not in the ready map: live.lua picks a server for them from its view and sends them there
with use-server. The view is as old as its last poll, and HAProxy's use-server sends to a
drained server (it skips only a stopped one). So when the reconciler drained the next instance,
a pick from a view older than the drain still sent requests to it, and the reconciler, seeing
its sessions at zero for a moment, restarted it under them: the client saw "server disconnected
without sending a response" (issue 13, the rolling restart of tests/e2e/test_waves.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from olladist.drain import drain_instance, set_ready
from olladist.gateway import INSTANCES_BACKEND
from olladist.gateway.runtime import AdminState
from tests.gateway.harness import Cluster, cluster, live, loopback_hosts, make_spec, wait_until

pytestmark = pytest.mark.integration


Served = list[tuple[float, int, str]]  # (sent at, status, instance or error text)


@contextmanager
def generating(url: str, clients: int = 4) -> Iterator[Served]:
    """``clients`` threads send small generates for `mine` to ``url`` until the block ends;
    yields what each request got, as it comes."""
    served: Served = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(trust_env=False, timeout=30) as h:
            while not stop.is_set():
                sent = time.monotonic()
                r = h.post(url + "/api/generate", json={"model": "mine", "prompt": "x"})
                who = r.json().get("instance", "") if r.status_code == 200 else r.text[:200]
                served.append((sent, r.status_code, who))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        yield served
    finally:
        stop.set()
        for t in threads:
            t.join(30)


@pytest.fixture
def one(gw_tmp: Path) -> Iterator[Cluster]:
    # One node, three instances, every one holding `mine`.
    spec = make_spec(loopback_hosts(1), {0: [4, 4, 4]}, [{"name": "mine", "nodes": ["n0"]}])
    with cluster(gw_tmp, spec) as c:
        yield c


def test_no_request_reaches_an_instance_after_its_drain(one: Cluster) -> None:
    gw = one.gw("n0")
    rt = gw.runtime
    # i2 restarting: `mine` leaves the ready map, so every request for it is picked in Lua.
    drain_instance(rt, "i2", timeout=5)
    wait_until(lambda: "mine:latest" not in live(gw)["ready"])

    try:
        with generating(gw.url) as served:
            wait_until(lambda: any(w == "n0/i1" for _, _, w in served))  # i1 takes its share
            # The reconciler's next restart: drain i1. Once HAProxy has answered the drain, no
            # request may be sent to i1 any more, whatever the view of live.lua says.
            rt.set_state(INSTANCES_BACKEND, "i1", AdminState.DRAIN)
            drained_at = time.monotonic()
            assert drain_instance(rt, "i1", timeout=10)
            # Past the view's age (polls every 300 ms here): a stale pick would show by now.
            wait_until(lambda: len([s for s in served if s[0] > drained_at]) >= 40)
            time.sleep(0.5)
    finally:
        set_ready(rt, "i1")
        set_ready(rt, "i2")
    after = [(status, who) for sent, status, who in served if sent > drained_at]
    assert after and all(status == 200 for status, _ in after), after[:5]
    late = [who for _, who in after if who != "n0/i0"]
    assert late == [], f"{len(late)} of {len(after)} requests reached a drained instance"


@pytest.fixture
def warm_two(gw_tmp: Path) -> Iterator[Cluster]:
    # One node, two instances, loaded-first: `mine` ends up loaded on both.
    spec = make_spec(
        loopback_hosts(1),
        {0: [4, 4]},
        [{"name": "mine", "nodes": ["n0"]}],
        gateway={"strategy": "loaded-first"},
    )
    with cluster(gw_tmp, spec) as c:
        yield c


def test_the_warm_fast_path_skips_a_drained_instance(warm_two: Cluster) -> None:
    """Loaded-first sends a request for a model loaded on a local instance straight to that
    instance's admission backend (warm.map, no Lua). The reconciler drains the instance before
    a restart; the drain reaches the admission server through its track, but its `srv_is_up`
    stays true, so the fast path sent requests to a backend whose one server was drained: 503
    (no usable server) during every rolling restart with the default strategy."""
    gw = warm_two.gw("n0")
    rt = gw.runtime
    with httpx.Client(trust_env=False, timeout=30) as h:
        for fake in warm_two.fakes.values():  # `mine` loaded on both instances
            h.post(f"http://127.0.0.1:{fake.port}/fake/ps", json=["mine:latest"])
        wait_until(
            lambda: all(
                "mine:latest" in [m["name"] for m in i.get("loaded_models", [])]
                for i in live(gw)["instances"]
            )
        )
        # Where the fast path sends `mine` now: the instance that answers a request alone.
        r = h.post(gw.url + "/api/generate", json={"model": "mine", "prompt": "x"})
        assert r.status_code == 200, r.text
        warm = r.json()["instance"].split("/")[-1]

    try:
        with generating(gw.url) as served:
            rt.set_state(INSTANCES_BACKEND, warm, AdminState.DRAIN)
            drained_at = time.monotonic()
            assert drain_instance(rt, warm, timeout=10)
            wait_until(lambda: len([s for s in served if s[0] > drained_at]) >= 60)
            time.sleep(0.5)
    finally:
        set_ready(rt, warm)
    after = [(status, who) for sent, status, who in served if sent > drained_at]
    failed = [(s, w) for s, w in after if s != 200]
    assert not failed, f"{len(failed)} of {len(after)} failed: {failed[:3]}"
    late = [who for _, who in after if who.endswith("/" + warm)]
    assert late == [], f"{len(late)} of {len(after)} requests reached the drained {warm}"


@pytest.fixture
def one_slot(gw_tmp: Path) -> Iterator[Cluster]:
    # One node, one instance with one slot, loaded-first: requests beyond the first queue in
    # the instance's admission backend.
    spec = make_spec(
        loopback_hosts(1),
        {0: [1]},
        [{"name": "mine", "nodes": ["n0"]}],
        gateway={"strategy": "loaded-first"},
    )
    with cluster(gw_tmp, spec) as c:
        yield c


def test_requests_waiting_for_an_instance_are_served_through_its_drain_and_restart(
    one_slot: Cluster,
) -> None:
    """The reconciler drains an instance before it restarts it, waits for what runs there,
    restarts it and sets it ready. Requests waiting for its slot were lost at the drain:
    HAProxy handed a draining server's queue back to the balancer, which found no other server
    and answered 503 at once (and a request in the admission backend's own queue, which a
    drained server never takes from, sat out `timeout queue`). Now they wait through the
    restart (held in live.lua, or in the server's own queue) and are served after it."""
    gw = one_slot.gw("n0")
    rt = gw.runtime
    fake = next(iter(one_slot.fakes.values()))
    httpx.post(f"http://127.0.0.1:{fake.port}/fake/ps", json=["mine:latest"], trust_env=False)
    wait_until(
        lambda: (
            "mine:latest" in [m["name"] for m in live(gw)["instances"][0].get("loaded_models", [])]
        )
    )
    results: list[int] = []

    def slow_request() -> None:
        body = {"model": "mine", "prompt": "x", "stream": True, "lines": 4, "delay": 0.15}
        with httpx.Client(trust_env=False, timeout=30) as h:
            results.append(h.post(gw.url + "/api/generate", json=body).status_code)

    threads = [threading.Thread(target=slow_request) for _ in range(5)]
    for t in threads:
        t.start()
    # One runs, the other four wait for its slot.
    wait_until(lambda: live(gw)["instances"][0].get("queued", 0) >= 4, timeout=10)
    try:
        assert drain_instance(rt, "i0", timeout=30)
        time.sleep(0.5)  # the restart (nothing runs on i0 now)
    finally:
        set_ready(rt, "i0")
    for t in threads:
        t.join(30)
    assert results == [200] * 5, results
