"""The runtime API client: parsers on captured output, then the real thing (drain, failover,
reloads under streaming load, a refused reload). Reloads go the way production reloads: the
rendered gateway unit run by LocalRuntime, reloaded through DrainingRuntime."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from olladist.check import check_servers
from olladist.drain import DrainingRuntime, active_sessions, drain_instance, set_ready
from olladist.errors import ToolError
from olladist.files import write_atomic
from olladist.gateway import INSTANCES_BACKEND
from olladist.gateway.render import gateway_files
from olladist.gateway.runtime import (
    AdminFlag,
    AdminState,
    HAProxyRuntime,
    OpState,
    ServerState,
    parse_servers_state,
    parse_show_proc,
    parse_stat,
)
from olladist.layout import ADMIN_SOCKET, MASTER_SOCKET, Layout
from olladist.nodeconfig import write_peer_secret
from olladist.placement import place
from olladist.runtime.local import LocalRuntime
from olladist.spec import Spec
from olladist.units import GATEWAY_UNIT, unit_files
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
    # The functions the reconciler's DrainingRuntime calls, against the real HAProxy.
    rt = one_node.gw("n0").runtime
    assert drain_instance(rt, "i0", timeout=5)
    assert {gen(one_node).json()["instance"] for _ in range(8)} == {"n0/i1"}
    set_ready(rt, "i0")
    assert {gen(one_node).json()["instance"] for _ in range(8)} == {"n0/i0", "n0/i1"}
    with pytest.raises(ToolError):
        set_ready(rt, "nope")


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


@dataclass
class UnitGateway:
    """A gateway run the way the reconciler runs it: its rendered unit started by
    LocalRuntime, reloaded through DrainingRuntime (as reconcile.execute wraps the runtime)."""

    url: str
    root: Path
    runtime: DrainingRuntime
    rt: HAProxyRuntime
    spec: Spec

    def reload(self) -> int:
        """Reload as apply does (save server states, then the unit's ExecReload: `haproxy -c`
        and SIGUSR2 to the master) and wait until the master counts the reload."""
        before = self.rt.processes().reloads
        self.runtime.reload(GATEWAY_UNIT)
        wait_until(lambda: self.rt.processes().reloads > before, timeout=10)
        return self.rt.processes().reloads

    def gen(self) -> httpx.Response:
        with httpx.Client(trust_env=False, timeout=30) as h:
            return h.post(self.url + "/api/generate", json={"model": "m"})


@pytest.fixture
def unit_gateway(gw_tmp: Path) -> Iterator[UnitGateway]:
    spec = make_spec(loopback_hosts(1), {0: [4, 4]}, MODELS)
    with cluster(gw_tmp, spec, gateways=[]):
        layout = Layout(gw_tmp / "n0")
        files = {**unit_files(layout), **gateway_files(spec, "n0", place(spec), layout)}
        for path, f in files.items():
            write_atomic(layout.real(path), f.content.encode(), f.mode)
        write_peer_secret(layout)  # node-local; the config names it
        runtime = DrainingRuntime(LocalRuntime(layout), layout, spec.node("n0"))
        runtime.start(GATEWAY_UNIT)
        try:
            rt = HAProxyRuntime(layout.real(ADMIN_SOCKET), layout.real(MASTER_SOCKET))
            node = spec.node("n0")
            g = UnitGateway(
                f"http://{node.listen}:{spec.gateway.port}", layout.root, runtime, rt, spec
            )
            wait_until(lambda: all(s.serving for s in _servers(rt)))
            yield g
        finally:
            runtime.stop_all()


def _servers(rt: HAProxyRuntime) -> list[ServerState]:
    try:
        return [s for s in rt.servers_state() if s.backend == INSTANCES_BACKEND]
    except ToolError:
        return []


@pytest.mark.integration
def test_hitless_reloads_under_streaming_load(unit_gateway: UnitGateway) -> None:
    g = unit_gateway
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
                    with h.stream("POST", g.url + "/api/chat", json=body) as r:
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
            reloads.append(g.reload())
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert reloads == sorted(reloads) and len(set(reloads)) == 5
    assert g.rt.processes().failed_reloads == 0
    assert done >= 20


@pytest.mark.integration
def test_a_refused_reload_raises_and_the_old_config_serves(unit_gateway: UnitGateway) -> None:
    g = unit_gateway
    cfg = g.root / "etc/olladist/haproxy.cfg"
    good = cfg.read_text()
    cfg.write_text(good + "\nbackend broken\n    balance nonsense\n")
    before = g.rt.processes()
    try:
        # ExecReload checks the config before it signals: HAProxy is never told to reload.
        with pytest.raises(ToolError, match=r"olladist-gateway.service: `.*haproxy.* -c` failed"):
            g.runtime.reload(GATEWAY_UNIT)
        assert g.gen().status_code == 200
        assert g.rt.processes().reloads == before.reloads
    finally:
        cfg.write_text(good)
    g.reload()
    assert g.gen().status_code == 200


@pytest.mark.integration
def test_a_drain_survives_a_reload(unit_gateway: UnitGateway) -> None:
    """The reload apply does saves server states first, so a drained instance stays out."""
    g = unit_gateway
    g.rt.set_state(INSTANCES_BACKEND, "i1", AdminState.DRAIN)
    g.reload()
    state = {(s.backend, s.server): s for s in g.rt.servers_state()}
    assert state[(INSTANCES_BACKEND, "i1")].draining
    assert {g.gen().json()["instance"] for _ in range(6)} == {"n0/i0"}


@pytest.mark.integration
def test_drain_waits_for_running_streams(one_node: Cluster) -> None:
    rt = one_node.gw("n0").runtime
    # 2 s streams: long enough that all four are open at once even on a loaded machine.
    body = {"model": "m", "stream": True, "lines": 8, "delay": 0.25}
    finished: list[tuple[str, float]] = []  # (instance, when its stream ended)

    def stream() -> None:
        r = gen(one_node, body)
        finished.append((json.loads(r.text.splitlines()[0])["instance"], time.monotonic()))

    threads = [threading.Thread(target=stream) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: active_sessions(rt, "i0") + active_sessions(rt, "i1") == 4)
    assert not drain_instance(rt, "i0", timeout=0.1)  # still streaming: not idle yet, but drained
    assert drain_instance(rt, "i0", timeout=30)
    drained_at = time.monotonic()
    for t in threads:
        t.join(10)
    on_i0 = [at for inst, at in finished if inst == "n0/i0"]
    assert on_i0 and all(at <= drained_at for at in on_i0)
    assert {gen(one_node).json()["instance"] for _ in range(6)} == {"n0/i1"}
    set_ready(rt, "i0")
    # The live view sees i0 ready again at its next poll.
    wait_until(lambda: all_ready(one_node.gw("n0"), ["m:latest"]))
    assert {gen(one_node).json()["instance"] for _ in range(6)} == {"n0/i0", "n0/i1"}


@pytest.mark.integration
def test_check_servers_reads_the_stats_page_and_names_a_dead_instance(one_node: Cluster) -> None:
    """`olladist check` reads the stats page's CSV with the runtime socket's parser."""
    g = one_node.gw("n0")
    stats = f"http://{g.host}:{g.stats_port}"
    with httpx.Client(trust_env=False, timeout=10) as h:
        first = check_servers(h, stats)
        assert first.ok, first.detail
        assert first.detail == "all 2 checked servers are up"
        one_node.fakes["n0/i0"].kill()
        wait_until(lambda: not check_servers(h, stats).ok, timeout=5)
        after = check_servers(h, stats)
    assert after.detail.startswith("not up: instances/i0 DOWN"), after.detail


@pytest.mark.integration
def test_a_reload_returns_once_the_new_config_serves(unit_gateway: UnitGateway) -> None:
    """What follows a reload (the check after apply, a drain) talks to the new config: the
    reload is a signal to the master, and until the new worker takes over, new connections
    reach the old one. The check after apply of a commit that turned API keys off met the old
    worker's 401 and rolled the commit back (tests/e2e/test_gateway_clients.py)."""
    g = unit_gateway
    layout = Layout(g.root)
    keys = layout.real("/etc/olladist/keys")
    keys.write_text("0" * 64 + "\n")
    gateway = g.spec.gateway.model_copy(update={"api_keys_file": "/etc/olladist/keys"})
    keyed = g.spec.model_copy(update={"gateway": gateway})
    for spec, status in ((keyed, 401), (g.spec, 200), (keyed, 401)):
        for path, f in gateway_files(spec, "n0", place(spec), layout).items():
            write_atomic(layout.real(path), f.content.encode(), f.mode)
        g.runtime.reload(GATEWAY_UNIT)
        # At once, on a new connection: no wait here.
        assert g.gen().status_code == status
