"""The runtime API client: parsers on captured output, then the real thing (drain, failover,
reloads under streaming load, a refused reload)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from olladist.errors import ToolError
from olladist.gateway.runtime import (
    AdminFlag,
    AdminState,
    OpState,
    parse_servers_state,
    parse_show_proc,
    parse_stat,
)
from tests.gateway.harness import (
    Cluster,
    all_ready,
    all_up,
    cluster,
    loopback_hosts,
    make_spec,
    wait_until,
)

DATA = Path(__file__).parent / "data"


def test_parse_servers_state_captured() -> None:
    states = parse_servers_state((DATA / "show-servers-state.txt").read_text())
    by = {(s.backend, s.server): s for s in states}
    assert len(states) == 10
    i1 = by[("instances", "i1")]
    assert i1.admin == AdminFlag.FDRAIN and i1.draining and not i1.serving
    # A drain set on the checked server is inherited by every backend that tracks it.
    assert by[("route.least-loaded.n0", "i1")].admin == AdminFlag.IDRAIN
    peer = by[("route.least-loaded.n0.n1", "peer.n1")]
    assert peer.op_state == OpState.STOPPED and not peer.serving
    assert by[("instances", "i0")].serving
    assert by[("instances", "i0")].port == 57429


def test_parse_stat_captured() -> None:
    stats = parse_stat((DATA / "show-stat.csv").read_text())
    by = {(s.backend, s.server): s for s in stats}
    assert ("public", "FRONTEND") not in by
    assert by[("peers", "peer.n1")].status == "DOWN"
    assert by[("instances", "i1")].status == "DRAIN"
    assert by[("instances", "i0")].status == "UP"
    assert by[("instances", "i0")].check_status == "L7OK"


def test_parse_show_proc_captured() -> None:
    before = parse_show_proc((DATA / "show-proc.txt").read_text())
    after = parse_show_proc((DATA / "show-proc-after-reload.txt").read_text())
    assert (before.reloads, before.failed_reloads) == (0, 0)
    assert after.reloads == 1 and after.master_pid == before.master_pid
    assert after.worker_pids != before.worker_pids


def test_parsers_refuse_garbage() -> None:
    with pytest.raises(ToolError):
        parse_servers_state("Unknown command\n")
    with pytest.raises(ToolError):
        parse_show_proc("")


MODELS = [{"name": "m", "nodes": ["n0"]}]


@pytest.fixture
def one_node(gw_tmp: Path) -> Iterator[Cluster]:
    spec = make_spec(loopback_hosts(1), {0: [4, 4]}, MODELS)
    with cluster(gw_tmp, spec) as c:
        wait_until(lambda: all_up(c.gw("n0")))
        yield c


def gen(c: Cluster, body: dict[str, object] | None = None) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=30) as h:
        return h.post(c.gw("n0").url + "/api/generate", json=body or {"model": "m"})


@pytest.mark.integration
def test_drain_takes_an_instance_out_of_every_backend(one_node: Cluster) -> None:
    rt = one_node.gw("n0").runtime
    rt.set_state("instances", "i0", AdminState.DRAIN)
    assert {gen(one_node).json()["instance"] for _ in range(8)} == {"n0/i1"}
    rt.set_state("instances", "i0", AdminState.READY)
    assert {gen(one_node).json()["instance"] for _ in range(8)} == {"n0/i0", "n0/i1"}
    with pytest.raises(ToolError):
        rt.set_state("instances", "nope", AdminState.MAINT)


@pytest.mark.integration
def test_a_dead_instance_leaves_rotation_within_two_check_intervals(one_node: Cluster) -> None:
    interval = 0.3  # health.interval in make_spec
    rt = one_node.gw("n0").runtime
    one_node.fakes["n0/i0"].kill()
    # Before the checks notice, requests that pick the dead instance are retried elsewhere.
    assert {gen(one_node).json()["instance"] for _ in range(6)} == {"n0/i1"}
    took = wait_until(
        lambda: not next(s for s in rt.servers_state() if s.server == "i0").serving,
        timeout=5,
        step=0.02,
    )
    assert took <= 2 * interval + 0.15, took
    with httpx.Client(trust_env=False, timeout=10) as h:
        ps = h.get(one_node.gw("n0").url + "/api/ps").json()
    assert [m["name"] for m in ps["models"]] == ["n0/i1-loaded:latest"]
    assert {gen(one_node).json()["instance"] for _ in range(8)} == {"n0/i1"}


@pytest.mark.integration
def test_hitless_reloads_under_streaming_load(one_node: Cluster) -> None:
    rt = one_node.gw("n0").runtime
    failures: list[str] = []
    done = 0
    stop = threading.Event()
    lock = threading.Lock()

    def worker() -> None:
        nonlocal done
        with httpx.Client(trust_env=False, timeout=30) as h:
            while not stop.is_set():
                body = {"model": "m", "stream": True, "lines": 4, "delay": 0.05}
                try:
                    with h.stream("POST", one_node.gw("n0").url + "/api/chat", json=body) as r:
                        lines = [x for x in r.iter_lines() if x]
                    if r.status_code != 200 or len(lines) != 4:
                        failures.append(f"{r.status_code} {len(lines)} lines")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                with lock:
                    done += 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        reloads = []
        for _ in range(5):
            time.sleep(0.3)
            reloads.append(rt.reload().reloads)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert reloads == sorted(reloads) and len(set(reloads)) == 5
    assert done >= 20


@pytest.mark.integration
def test_a_refused_reload_raises_and_the_old_config_serves(one_node: Cluster) -> None:
    g = one_node.gw("n0")
    cfg = g.root / "etc/olladist/haproxy.cfg"
    good = cfg.read_text()
    cfg.write_text(good + "\nbackend broken\n    balance nonsense\n")
    try:
        with pytest.raises(ToolError, match="refused"):
            g.runtime.reload()
        assert gen(one_node).status_code == 200
    finally:
        cfg.write_text(good)
    g.runtime.reload()
    assert gen(one_node).status_code == 200


@pytest.mark.integration
def test_save_server_state_keeps_a_drain_across_reload(one_node: Cluster) -> None:
    g = one_node.gw("n0")
    g.runtime.set_state("instances", "i1", AdminState.DRAIN)
    g.runtime.save_server_state(g.root / "var/lib/olladist/gateway/servers.state")
    g.runtime.reload()
    state = {(s.backend, s.server): s for s in g.runtime.servers_state()}
    assert state[("instances", "i1")].draining
    assert {gen(one_node).json()["instance"] for _ in range(6)} == {"n0/i0"}


@pytest.mark.integration
def test_drain_waits_for_running_streams(one_node: Cluster) -> None:
    rt = one_node.gw("n0").runtime
    body = {"model": "m", "stream": True, "lines": 4, "delay": 0.25}
    finished: list[tuple[str, float]] = []  # (instance, when its stream ended)

    def stream() -> None:
        r = gen(one_node, body)
        finished.append((json.loads(r.text.splitlines()[0])["instance"], time.monotonic()))

    threads = [threading.Thread(target=stream) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: rt.active_sessions("i0") + rt.active_sessions("i1") == 4)
    assert not rt.drain("i0", timeout=0.1)  # still streaming: not idle yet, but drained
    assert rt.drain("i0", timeout=5)
    drained_at = time.monotonic()
    for t in threads:
        t.join(10)
    on_i0 = [at for inst, at in finished if inst == "n0/i0"]
    assert on_i0 and all(at <= drained_at for at in on_i0)
    assert {gen(one_node).json()["instance"] for _ in range(6)} == {"n0/i1"}
    rt.ready("i0")
    # The live view sees i0 ready again at its next poll.
    wait_until(lambda: all_ready(one_node.gw("n0"), ["m:latest"]))
    assert {gen(one_node).json()["instance"] for _ in range(6)} == {"n0/i0", "n0/i1"}
