"""Real HAProxy gateways and fake Ollama instances on loopback, for the gateway tests.

Every process is started here and stopped by its PID in ``stop()``; ports are found free by
binding port 0, and node addresses are random 127.0.0.x, so tests run next to other sessions.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from olladist.files import write_atomic
from olladist.gateway.render import gateway_files
from olladist.gateway.runtime import HAProxyRuntime
from olladist.layout import (
    ADMIN_SOCKET,
    GATEWAY_RUN_DIR,
    HAPROXY_CFG,
    MASTER_SOCKET,
    STATE_DIR,
    Layout,
)
from olladist.nodeconfig import write_peer_secret
from olladist.nodelocal import NodeTLS
from olladist.placement import place
from olladist.spec import Spec
from tests.harness.ports import free_on_all, free_port

REPO = Path(__file__).resolve().parents[2]


def cluster_ports(hosts: list[str], n: int) -> list[int]:
    """``n`` distinct ports free on every one of ``hosts``."""
    return free_on_all(hosts, n)


def loopback_hosts(n: int) -> list[str]:
    base = random.randint(2, 250 - n)  # spreading tests over 127/8, not security
    third = random.randint(1, 250)
    return [f"127.{third}.{base + i}.1" for i in range(n)]


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"{host}:{port} did not open within {timeout}s")


def stop_pid(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


@dataclass
class Fake:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def start_fake(
    name: str, port: int, line_delay: float = 0.05, models: list[str] | None = None
) -> Fake:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.gateway.fake_ollama",
            "--port",
            str(port),
            "--name",
            name,
            "--line-delay",
            str(line_delay),
            "--models",
            ",".join(models or []),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return Fake(name, port, proc)


@dataclass
class Gateway:
    node: str
    host: str
    port: int
    peer_port: int
    stats_port: int
    root: Path
    proc: subprocess.Popen[bytes]
    runtime: HAProxyRuntime

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def stats_host(self) -> str:
        # Loopback nodes bind their stats listener on their own address (topology.py).
        return self.host if self.host.startswith("127.") else "127.0.0.1"

    @property
    def log(self) -> str:
        return (self.root / "haproxy.log").read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole gateway, as a crashed node: the master, its workers and the
        large-body process (its own session, so only what this gateway started)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)


@dataclass
class Cluster:
    spec: Spec
    base: Path
    fakes: dict[str, Fake] = field(default_factory=dict)  # "node/instance" -> fake
    gateways: dict[str, Gateway] = field(default_factory=dict)

    def gw(self, node: str) -> Gateway:
        return self.gateways[node]

    def stop(self) -> None:
        for g in self.gateways.values():
            stop_pid(g.proc)
        for f in self.fakes.values():
            f.kill()


def make_spec(
    hosts: list[str],
    instances: dict[int, list[int]],
    models: list[dict[str, Any]],
    gateway: dict[str, Any] | None = None,
) -> Spec:
    """A spec whose node i listens on hosts[i], with instances given as num_parallel per
    instance; ports are free ones."""
    ports = cluster_ports(hosts, 3)
    gw: dict[str, Any] = {
        "port": ports[0],
        "peer_port": ports[1],
        "stats_port": ports[2],
        "health": {"interval": "300ms", "fall": 2, "rise": 1},
        "timeouts": {"connect": "1s", "queue": "5s", "server": "30s", "client": "30s"},
        # The default is loaded-first; the tests written before it test least-loaded (its
        # own tests, test_scheduling.py, ask for loaded-first).
        "strategy": "least-loaded",
    }
    gw.update(gateway or {})
    nodes = []
    for i, host in enumerate(hosts):
        nodes.append(
            {
                "name": f"n{i}",
                "address": host,
                "listen": host,
                "instances": [
                    {"name": f"i{j}", "port": free_port(), "num_parallel": par}
                    for j, par in enumerate(instances.get(i, []))
                ],
            }
        )
    return Spec.model_validate({"cluster": "test", "gateway": gw, "nodes": nodes, "models": models})


def start_gateway(
    spec: Spec,
    node: str,
    base: Path,
    tls: NodeTLS | None = None,
    local_files: dict[str, str] | None = None,
    *,
    edit: Callable[[str], str] | None = None,
) -> Gateway:
    """Render ``node``'s gateway under ``base/node`` and start HAProxy on it. ``local_files``
    are node-local files (node path -> content) written first; the peer secret is shared by
    every node under ``base``. ``edit``: applied to haproxy.cfg before the start (the
    benchmarks' variants of the config)."""
    root = base / node
    layout = Layout(root)
    for path, content in (local_files or {}).items():
        write_atomic(layout.real(path), content.encode(), 0o600)
    files = gateway_files(spec, node, place(spec), layout, tls)
    for path, f in files.items():
        content = edit(f.content) if edit is not None and path == HAPROXY_CFG else f.content
        write_atomic(layout.real(path), content.encode(), f.mode)
    secret = write_peer_secret(Layout(base))
    target = layout.real("/etc/olladist/secrets/peer.map")
    if target != secret and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(secret.read_bytes())
    layout.real(GATEWAY_RUN_DIR).mkdir(parents=True, exist_ok=True)
    layout.real(f"{STATE_DIR}/gateway").mkdir(parents=True, exist_ok=True)
    master = layout.real(MASTER_SOCKET)
    cfg = layout.real("/etc/olladist/haproxy.cfg")
    log = open(root / "haproxy.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            ["haproxy", "-W", "-S", f"{master},mode,600", "-f", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # kill() takes the large-body process with it
        )
    finally:
        log.close()
    n = spec.node(node)
    gw = Gateway(
        node,
        n.listen,
        spec.gateway.port,
        spec.gateway.peer_port,
        spec.gateway.stats_port,
        root,
        proc,
        HAProxyRuntime(layout.real(ADMIN_SOCKET), master),
    )
    try:
        wait_port(n.listen, spec.gateway.port)
    except TimeoutError:
        stop_pid(proc)
        raise AssertionError(f"haproxy did not start:\n{gw.log}") from None
    return gw


@contextlib.contextmanager
def cluster(  # noqa: PLR0917 - test helper, read at the call site
    base: Path,
    spec: Spec,
    gateways: list[str] | None = None,
    line_delay: float = 0.05,
    tls: dict[str, NodeTLS] | None = None,
    local_files: dict[str, str] | None = None,
    wait_ready: bool = True,
) -> Iterator[Cluster]:
    c = Cluster(spec, base)
    placement = place(spec)
    try:
        for n in spec.nodes:
            # Every instance's store holds what placement puts on its node, as after a pull.
            held = [m.key for m in spec.models if n.name in placement.nodes_for(m.key)]
            for inst in n.instances:
                c.fakes[f"{n.name}/{inst.name}"] = start_fake(
                    f"{n.name}/{inst.name}", inst.port, line_delay, held
                )
        for f in c.fakes.values():
            wait_port("127.0.0.1", f.port, timeout=30)  # slow to start on a loaded machine
        for name in gateways if gateways is not None else [n.name for n in spec.nodes]:
            c.gateways[name] = start_gateway(spec, name, base, (tls or {}).get(name), local_files)
        if wait_ready:
            routed = [m.key for m in spec.models if placement.nodes_for(m.key)]
            for g in c.gateways.values():
                wait_until(lambda g=g: all_ready(g, routed), timeout=30)
        yield c
    finally:
        c.stop()


def wait_until(pred: Any, timeout: float = 10.0, step: float = 0.05) -> float:
    """Poll ``pred`` until true; return the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")


def all_up(gw: Gateway) -> bool:
    states = gw.runtime.servers_state()
    return all(s.serving for s in states if s.backend in ("instances", "peers"))


def env_without_proxy() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def live(gw: Gateway) -> dict[str, Any]:
    """The gateway's live report, from its stats listener (as the reconciler reads it)."""
    import httpx

    r = httpx.get(
        f"http://{gw.stats_host}:{gw.stats_port}/olladist/v1/live", trust_env=False, timeout=5
    )
    r.raise_for_status()
    data: dict[str, Any] = r.json()
    return data


def all_ready(gw: Gateway, models: list[str]) -> bool:
    """Every one of ``models`` (canonical names) is served by all its holders at ``gw``, and
    every peer's live report reached it."""
    try:
        report = live(gw)
    except OSError:
        return False
    return set(models) <= set(report["ready"]) and all(p["reachable"] for p in report["peers"])
