"""Loaded-first scheduling in real HAProxy gateways in front of olladist-sim instances (the
simulator follows Ollama's scheduler: one model loaded at a time here, OLLAMA_NUM_PARALLEL
slots, loads that take time).

What is asserted is order and counts, never durations: which request the gateway lets through
first when a slot frees, that a cold request gets its turn while warm ones keep coming, how
many requests one instance ever runs at once (counted by the simulator), and that a killed
peer makes no request fail.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from olladist.placement import place
from olladist.sim.process import SimProcess, start_sim
from olladist.spec import Spec
from tests.gateway.harness import (
    Gateway,
    all_ready,
    live,
    loopback_hosts,
    make_spec,
    start_gateway,
    stop_pid,
    wait_until,
)

pytestmark = pytest.mark.integration

A = "qwen2.5:0.5b"  # 0.4 GB
B = "llama3.2:1b"  # 1.3 GB
LOADED_FIRST = {"strategy": "loaded-first"}


@dataclass
class SimCluster:
    spec: Spec
    sims: dict[str, SimProcess] = field(default_factory=dict)  # "node/instance" -> simulator
    gateways: dict[str, Gateway] = field(default_factory=dict)

    def gw(self, node: str) -> Gateway:
        return self.gateways[node]

    def stats(self, where: str) -> dict[str, Any]:
        with httpx.Client(trust_env=False, timeout=10) as h:
            data: dict[str, Any] = h.get(self.sims[where].url + "/_sim/stats").json()
            return data


@contextmanager
def sim_cluster(base: Path, spec: Spec, sim_env: dict[str, str]) -> Iterator[SimCluster]:
    """A simulator on each instance's port (the node's instances share one model store,
    filled with what placement gives the node), then every node's gateway."""
    c = SimCluster(spec)
    placement = place(spec)
    try:
        for n in spec.nodes:
            store = base / n.name / "models"
            for inst in n.instances:
                env = {"OLLAMA_NUM_PARALLEL": str(inst.num_parallel), **sim_env}
                c.sims[f"{n.name}/{inst.name}"] = start_sim(
                    base / n.name / inst.name, env, models_dir=store, port=inst.port
                )
            held = [m.key for m in spec.models if n.name in placement.nodes_for(m.key)]
            if n.instances:
                first = c.sims[f"{n.name}/{n.instances[0].name}"]
                with httpx.Client(trust_env=False, timeout=60) as h:
                    for model in held:
                        r = h.post(first.url + "/api/pull", json={"model": model, "stream": False})
                        assert r.status_code == 200, r.text
        for n in spec.nodes:
            c.gateways[n.name] = start_gateway(spec, n.name, base)
        routed = [m.key for m in spec.models if placement.nodes_for(m.key)]
        for g in c.gateways.values():
            wait_until(lambda g=g: all_ready(g, routed), timeout=30)
        yield c
    finally:
        for g in c.gateways.values():
            stop_pid(g.proc)
        for s in c.sims.values():
            s.stop()


def generate(url: str, model: str) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=60) as h:
        return h.post(url + "/api/generate", json={"model": model, "prompt": "hi", "stream": False})


def instance_report(gw: Gateway, name: str = "i0") -> dict[str, Any]:
    item: dict[str, Any] = next(i for i in live(gw)["instances"] if i["name"] == name)
    return item


def loaded_at(gw: Gateway, model: str, name: str = "i0") -> bool:
    return model in [m["name"] for m in instance_report(gw, name).get("loaded_models", [])]


def ps_loaded_on(gw: Gateway, model: str) -> list[str]:
    with httpx.Client(trust_env=False, timeout=10) as h:
        for m in h.get(gw.url + "/api/ps").json()["models"]:
            if m.get("name") == model:
                return list(m.get("loaded_on", []))
    return []


class Requests:
    """Requests sent in threads; ``done`` is the order their answers came in."""

    def __init__(self) -> None:
        self.done: list[tuple[str, int]] = []
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def send(self, label: str, url: str, model: str) -> None:
        def run() -> None:
            r = generate(url, model)
            with self.lock:
                self.done.append((label, r.status_code))

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)

    def join(self) -> None:
        for t in self.threads:
            t.join(120)


# Every instance keeps one model loaded; B loads in about 0.3 s; an answer of 16 tokens at
# 10 tokens/s holds its slot 1.6 s, long enough to queue two requests behind it.
ONE_LOADED = {
    "OLLAMA_MAX_LOADED_MODELS": "1",
    "OLLADIST_SIM_LOAD_GBPS": "4",
    "OLLADIST_SIM_TOKEN_RATE": "10",
    "OLLADIST_SIM_QUIET": "1",
}


def one_slot_spec(max_warm_wait: str) -> Spec:
    return make_spec(
        loopback_hosts(1),
        {0: [1]},
        [{"name": A, "nodes": ["n0"]}, {"name": B, "nodes": ["n0"]}],
        gateway={
            **LOADED_FIRST,
            "timeouts": {"connect": "1s", "queue": "40s", "server": "60s", "client": "60s"},
            "scheduling": {"max_warm_wait": max_warm_wait},
        },
    )


def test_a_freed_slot_goes_to_the_warm_request_before_an_older_cold_one(gw_tmp: Path) -> None:
    with sim_cluster(gw_tmp, one_slot_spec("30s"), ONE_LOADED) as c:
        gw = c.gw("n0")
        assert generate(gw.url, A).status_code == 200  # A is loaded on the only instance
        wait_until(lambda: loaded_at(gw, A))
        reqs = Requests()
        reqs.send("running", gw.url, A)
        wait_until(lambda: c.stats("n0/i0")["inference_in_flight"] == 1)
        reqs.send("cold", gw.url, B)
        wait_until(lambda: instance_report(gw)["queued"] == 1)
        reqs.send("warm", gw.url, A)
        wait_until(lambda: instance_report(gw)["queued"] == 2)
        reqs.join()
        # The cold request came first, but the slot went to the warm one: one request runs
        # at a time, so the order of answers is the order they ran in.
        assert reqs.done == [("running", 200), ("warm", 200), ("cold", 200)]
        stats = c.stats("n0/i0")
        assert stats["cold_loads_by_model"] == {A: 1, B: 1}
        assert stats["peak_inference_in_flight"] == 1


def test_the_age_cap_lets_a_cold_request_through_while_warm_ones_keep_coming(
    gw_tmp: Path,
) -> None:
    fast = {**ONE_LOADED, "OLLADIST_SIM_TOKEN_RATE": "40"}  # 0.4 s an answer
    with sim_cluster(gw_tmp, one_slot_spec("1s"), fast) as c:
        gw = c.gw("n0")
        assert generate(gw.url, A).status_code == 200
        wait_until(lambda: loaded_at(gw, A))
        stop = threading.Event()
        order: list[str] = []
        lock = threading.Lock()
        budget = 60  # warm requests per client at most: far more than the cap lets pass

        def warm_client() -> None:
            for _ in range(budget):
                if stop.is_set():
                    return
                r = generate(gw.url, A)
                with lock:
                    order.append(f"warm {r.status_code}")

        clients = [threading.Thread(target=warm_client, daemon=True) for _ in range(3)]
        for t in clients:
            t.start()
        # Two warm requests wait behind the running one whenever the slot frees.
        wait_until(lambda: instance_report(gw)["queued"] >= 1)
        r = generate(gw.url, B)
        with lock:
            order.append(f"cold {r.status_code}")
            warm_before = len(order) - 1
        # The warm clients go on after it: the cold request did not wait for them to stop.
        wait_until(lambda: len(order) >= warm_before + 3, timeout=60)
        stop.set()
        for t in clients:
            t.join(60)
        assert r.status_code == 200
        assert warm_before < 3 * budget
        assert order.index("cold 200") < len(order) - 1
        assert set(order) == {"warm 200", "cold 200"}
        assert c.stats("n0/i0")["peak_inference_in_flight"] == 1


def test_two_gateways_never_put_more_than_num_parallel_on_one_instance(gw_tmp: Path) -> None:
    # `solo` lives on n0's only instance (2 slots); n1's gateway reaches it through n0's peer
    # port, and both gateways get 8 requests for it at once.
    spec = make_spec(
        loopback_hosts(2),
        {0: [2], 1: [2]},
        [{"name": A, "nodes": ["n0"]}, {"name": B, "nodes": ["n1"]}],
        gateway={
            **LOADED_FIRST,
            "timeouts": {"connect": "1s", "queue": "40s", "server": "60s", "client": "60s"},
        },
    )
    env = {**ONE_LOADED, "OLLADIST_SIM_TOKEN_RATE": "40"}
    with sim_cluster(gw_tmp, spec, env) as c:
        reqs = Requests()
        for i in range(16):
            reqs.send(f"r{i}", c.gw(f"n{i % 2}").url, A)
        reqs.join()
        assert sorted(status for _, status in reqs.done) == [200] * 16
        stats = c.stats("n0/i0")
        assert stats["requests_by_route"]["/api/generate"] == 16
        # Both gateways' requests were admitted at n0, two at a time: the slots were full
        # (2) and never overcommitted (Ollama itself would have queued a third).
        assert stats["peak_inference_in_flight"] == 2


def test_a_killed_peer_makes_the_gateway_route_by_placement_not_fail(gw_tmp: Path) -> None:
    spec = make_spec(
        loopback_hosts(2),
        {0: [1], 1: [1]},
        [{"name": A, "nodes": ["n0", "n1"]}],
        gateway=LOADED_FIRST,
    )
    with sim_cluster(gw_tmp, spec, {**ONE_LOADED, "OLLADIST_SIM_TOKEN_RATE": "200"}) as c:
        # A is loaded on n1 only: n0's gateway sends its requests there (warm beats a cold
        # load at home), as n1's report says.
        with httpx.Client(trust_env=False, timeout=30) as h:
            body = {"model": A, "prompt": "", "stream": False}  # a load, as Ollama's clients do
            assert h.post(c.sims["n1/i0"].url + "/api/generate", json=body).status_code == 200
        wait_until(lambda: loaded_at(c.gw("n1"), A))
        n0 = c.gw("n0")
        wait_until(lambda: any(p["node"] == "n1" and p["reachable"] for p in live(n0)["peers"]))
        # n0's copy of n1's report says so (its /api/ps merges the peers' reports).
        wait_until(lambda: "n1/i0" in ps_loaded_on(n0, A), timeout=15)
        before = c.stats("n1/i0")["requests_by_route"].get("/api/generate", 0)
        assert generate(n0.url, A).status_code == 200
        assert c.stats("n1/i0")["requests_by_route"]["/api/generate"] == before + 1
        assert c.stats("n0/i0")["requests_by_route"].get("/api/generate", 0) == 0

        c.gw("n1").kill()
        statuses = [generate(n0.url, A).status_code for _ in range(12)]
        assert statuses == [200] * 12
        assert c.stats("n0/i0")["requests_by_route"]["/api/generate"] == 12
        wait_until(lambda: not any(p["reachable"] for p in live(n0)["peers"]))
        assert generate(n0.url, A).status_code == 200


def test_a_cold_request_waits_for_the_first_instance_that_frees_not_the_first_it_saw(
    gw_tmp: Path,
) -> None:
    # Two one-slot instances, A loaded on i0 and B on i1; a long request for A holds i0 and a
    # short one for B holds i1 when a request for C (loaded nowhere) comes. Both instances
    # are equally bad for it then (busy, and a load there evicts the only copy of a model).
    # Chosen on arrival, it would queue at one of them (i0, the first, on that tie) and load
    # C there after the long request; held at the gateway, it takes i1 when the short request
    # ends, since no request waits for B.
    C_ = "gemma2:2b"
    spec = make_spec(
        loopback_hosts(1),
        {0: [1, 1]},
        [{"name": A, "nodes": ["n0"]}, {"name": B, "nodes": ["n0"]}, {"name": C_, "nodes": ["n0"]}],
        gateway={
            **LOADED_FIRST,
            "timeouts": {"connect": "1s", "queue": "40s", "server": "60s", "client": "60s"},
        },
    )
    # 40 tokens at 10 a second (4 s) unless num_predict cuts it.
    env = {**ONE_LOADED, "OLLADIST_SIM_RESPONSE_TOKENS": "40"}
    with sim_cluster(gw_tmp, spec, env) as c:
        gw = c.gw("n0")
        with httpx.Client(trust_env=False, timeout=30) as h:
            for where, model in (("n0/i0", A), ("n0/i1", B)):
                body = {"model": model, "prompt": "", "stream": False}  # a load
                assert h.post(c.sims[where].url + "/api/generate", json=body).status_code == 200
        wait_until(lambda: loaded_at(gw, A, "i0") and loaded_at(gw, B, "i1"))

        def in_flight(where: str) -> int:
            return int(c.stats(where)["inference_in_flight"])

        done: list[str] = []
        lock = threading.Lock()

        def send(label: str, model: str, tokens: int | None) -> threading.Thread:
            def run() -> None:
                body: dict[str, Any] = {"model": model, "prompt": "hi", "stream": False}
                if tokens is not None:
                    body["options"] = {"num_predict": tokens}
                with httpx.Client(trust_env=False, timeout=60) as h:
                    r = h.post(gw.url + "/api/generate", json=body)
                with lock:
                    done.append(f"{label} {r.status_code}")

            t = threading.Thread(target=run, daemon=True)
            t.start()
            return t

        threads = [send("short B", B, 10)]  # 1 s
        wait_until(lambda: in_flight("n0/i1") == 1)
        threads.append(send("long A", A, None))  # 4 s
        wait_until(lambda: in_flight("n0/i0") == 1)
        threads.append(send("cold C", C_, 2))
        for t in threads:
            t.join(60)
        assert sorted(done) == ["cold C 200", "long A 200", "short B 200"]
        # C was loaded where B had been, and answered before the long request ended.
        assert c.stats("n0/i1")["cold_loads_by_model"] == {B: 1, C_: 1}
        assert c.stats("n0/i0")["cold_loads_by_model"] == {A: 1}  # the load made above
        assert done.index("cold C 200") < done.index("long A 200")
        for where in ("n0/i0", "n0/i1"):
            assert c.stats(where)["peak_inference_in_flight"] == 1


def test_api_show_is_answered_at_once_while_generations_wait(gw_tmp: Path) -> None:
    # Ollama answers /api/show from the model's files, with no runner: the gateway must not
    # hold it for a slot, nor count it as a cold load of the model it names.
    with sim_cluster(gw_tmp, one_slot_spec("30s"), ONE_LOADED) as c:
        gw = c.gw("n0")
        assert generate(gw.url, A).status_code == 200
        wait_until(lambda: loaded_at(gw, A))
        reqs = Requests()
        reqs.send("running", gw.url, A)
        wait_until(lambda: c.stats("n0/i0")["inference_in_flight"] == 1)
        reqs.send("warm", gw.url, A)
        wait_until(lambda: instance_report(gw)["queued"] == 1)
        with httpx.Client(trust_env=False, timeout=60) as h:
            shown = h.post(gw.url + "/api/show", json={"model": B})
        with reqs.lock:
            reqs.done.append(("show", shown.status_code))
        reqs.join()
        assert shown.json()["details"]["family"]
        assert reqs.done == [("show", 200), ("running", 200), ("warm", 200)]
        assert c.stats("n0/i0")["cold_loads_by_model"] == {A: 1}


def test_an_aged_request_whose_model_only_a_busy_peer_has_loaded_is_not_starved(
    gw_tmp: Path,
) -> None:
    # M is loaded on n1 only, where 12 clients keep its one slot's queue deep; n0's one slot
    # has A loaded and warm requests for A always waiting. A request for M at n0 is neither
    # warm there nor worth a cold load at once. Past max_warm_wait it must go somewhere (a
    # local cold load or the peer's queue): waiting for the busy peer's report to show a free
    # slot, it waited out timeouts.queue (the check after apply's /api/embed, 60 s, in the
    # e2e rolling restart).
    M = B
    spec = make_spec(
        loopback_hosts(2),
        {0: [1], 1: [1]},
        [{"name": A, "nodes": ["n0"]}, {"name": M, "nodes": ["n0", "n1"]}],
        gateway={
            **LOADED_FIRST,
            "timeouts": {"connect": "1s", "queue": "20s", "server": "60s", "client": "60s"},
            "scheduling": {"max_warm_wait": "1s"},
        },
    )
    fast = {**ONE_LOADED, "OLLADIST_SIM_TOKEN_RATE": "40"}  # 0.4 s an answer
    with sim_cluster(gw_tmp, spec, fast) as c:
        n0, n1 = c.gw("n0"), c.gw("n1")
        with httpx.Client(trust_env=False, timeout=30) as h:
            for where, model in (("n0/i0", A), ("n1/i0", M)):
                body = {"model": model, "prompt": "", "stream": False}  # a load
                assert h.post(c.sims[where].url + "/api/generate", json=body).status_code == 200
        wait_until(lambda: loaded_at(n0, A) and loaded_at(n1, M))
        stop = threading.Event()
        statuses: list[int] = []
        lock = threading.Lock()

        def client(url: str, model: str) -> None:
            for _ in range(150):  # bounded: about a minute of work for the slot
                if stop.is_set():
                    return
                r = generate(url, model)
                with lock:
                    statuses.append(r.status_code)

        work = [(n0.url, A)] * 3 + [(n1.url, M)] * 12
        clients = [threading.Thread(target=client, args=w, daemon=True) for w in work]
        for t in clients:
            t.start()
        try:
            wait_until(lambda: instance_report(n1)["queued"] >= 9, timeout=30)
            wait_until(lambda: instance_report(n0)["queued"] >= 1, timeout=30)
            r = generate(n0.url, M)
            still_running = not stop.is_set() and any(t.is_alive() for t in clients[:3])
        finally:
            stop.set()
            for t in clients:
                t.join(60)
        assert r.status_code == 200, r.text
        assert still_running
        assert set(statuses) == {200}


def test_a_cold_load_waits_for_a_little_wanted_instance_rather_than_evict_a_wanted_one(
    gw_tmp: Path,
) -> None:
    # Two one-slot instances: A loaded on i0 and just in demand (a burst of short requests),
    # B loaded on i1 and busy with one long request. A request for C (loaded nowhere) finds
    # i0 idle: evicting A there would make A's next requests load it again. It waits for i1,
    # the instance whose recent demand is lowest (at most the median of the holders').
    C_ = "gemma2:2b"
    spec = make_spec(
        loopback_hosts(1),
        {0: [1, 1]},
        [{"name": A, "nodes": ["n0"]}, {"name": B, "nodes": ["n0"]}, {"name": C_, "nodes": ["n0"]}],
        gateway={
            **LOADED_FIRST,
            "timeouts": {"connect": "1s", "queue": "40s", "server": "60s", "client": "60s"},
        },
    )
    # The gateway knows what the simulators do: one model loaded at a time, so a load evicts.
    with_env = spec.model_dump(mode="json")
    with_env["ollama"]["env"]["OLLAMA_MAX_LOADED_MODELS"] = "1"
    spec = Spec.model_validate(with_env)
    env = {**ONE_LOADED, "OLLADIST_SIM_RESPONSE_TOKENS": "40"}  # 4 s unless num_predict cuts it
    with sim_cluster(gw_tmp, spec, env) as c:
        gw = c.gw("n0")
        with httpx.Client(trust_env=False, timeout=30) as h:
            for where, model in (("n0/i0", A), ("n0/i1", B)):
                body = {"model": model, "prompt": "", "stream": False}  # a load
                assert h.post(c.sims[where].url + "/api/generate", json=body).status_code == 200
            wait_until(lambda: loaded_at(gw, A, "i0") and loaded_at(gw, B, "i1"))
            short = {"model": A, "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
            for _ in range(20):
                assert h.post(gw.url + "/api/generate", json=short).status_code == 200
        # The gateway's own measure of demand, as its live report gives it.
        wait_until(lambda: instance_report(gw, "i0")["rate"] > instance_report(gw, "i1")["rate"])

        done: list[str] = []
        lock = threading.Lock()

        def send(label: str, model: str) -> threading.Thread:
            def run() -> None:
                r = generate(gw.url, model)
                with lock:
                    done.append(f"{label} {r.status_code}")

            t = threading.Thread(target=run, daemon=True)
            t.start()
            return t

        threads = [send("long B", B)]
        wait_until(lambda: c.stats("n0/i1")["inference_in_flight"] == 1)
        threads.append(send("cold C", C_))
        for t in threads:
            t.join(60)
        assert done == ["long B 200", "cold C 200"]
        assert c.stats("n0/i0")["cold_loads_by_model"] == {A: 1}
        assert c.stats("n0/i1")["cold_loads_by_model"] == {B: 1, C_: 1}
