"""`systemctl enable --now olladist-reconcile` for real: the shipped unit in the systemd sandbox
brings a node to converged state from git over HTTP, reloads on `systemctl reload`, comes back
after SIGKILL, and is killed by the watchdog when its loop hangs. The host's /tmp, /run and
/etc are left untouched."""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from olladist.rollout import plan_rollout
from olladist.specload import load_spec
from olladist.units import GATEWAY_UNIT, RECONCILE_UNIT
from tests.harness.systemd_sandbox import SystemdSandbox
from tests.system.node import (
    MODELS,
    SandboxNode,
    cluster_yaml,
    free_port,
    git,
    loopback_address,
    sandbox_node,
)

pytestmark = pytest.mark.system

INSTANCES = ("olladist-ollama@i0.service", "olladist-ollama@i1.service")


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            try:
                st = Path(dirpath, name).lstat()
            except FileNotFoundError:
                continue
            found[os.path.join(dirpath, name)] = (st.st_mtime_ns, st.st_mode)
    return found


@pytest.fixture
def host_untouched() -> Iterator[None]:
    """Fails the test if the host's /tmp, /run or /etc saw what the sandbox's node did."""
    fd, name = tempfile.mkstemp(prefix="olladist-reconcile-canary-", dir="/tmp")
    os.close(fd)
    canary = Path(name)
    canary.write_text("still here")
    units = _tree(Path("/etc/systemd/system"))
    node_paths = [Path(p) for p in ("/etc/olladist", "/run/olladist", "/var/lib/olladist")]
    existed = {p: p.exists() for p in [*node_paths, Path("/run/systemd/system")]}
    try:
        yield
        assert canary.read_text() == "still here"
        assert _tree(Path("/etc/systemd/system")) == units
        assert {p: p.exists() for p in existed} == existed
    finally:
        canary.unlink(missing_ok=True)


@pytest.fixture
def node(sandbox_available: None, host_untouched: None, tmp_path: Path) -> Iterator[SandboxNode]:
    with sandbox_node(tmp_path) as n:
        yield n


def _pids(node: SandboxNode, units: tuple[str, ...]) -> dict[str, int]:
    return {u: node.sandbox.main_pid(u) for u in units}


def test_enable_now(node: SandboxNode) -> None:
    """enable --now converges; reload applies at once; SIGKILL and a hang are survived."""
    sb = node.sandbox
    first = node.head()
    # Type=notify: returns once the first reconcile attempt is over (READY=1).
    sb.systemctl("enable", "--now", RECONCILE_UNIT)
    assert sb.systemctl("is-enabled", RECONCILE_UNIT).stdout.strip() == "enabled"
    status = node.wait_converged(first)
    assert status["errors"] == [] and status["attempted_error"] is None

    text = sb.systemctl("status", RECONCILE_UNIT).stdout
    assert "Active: active (running)" in text
    assert f'Status: "commit {first[:12]}; drift 0"' in text
    for unit in (*INSTANCES, GATEWAY_UNIT):
        sb.wait_active(unit)
        assert sb.systemctl("is-enabled", unit).stdout.strip() == "enabled"
    for port in node.ports.instances:
        assert {"qwen2.5:0.5b", "all-minilm:latest"} <= node.instance_tags(port)
    assert {"qwen2.5:0.5b", "all-minilm:latest"} <= node.gateway_tags()
    # The status server: a thread of the hardened reconciler, reached by the gateway (another
    # unit, another user) through the socket in the reconciler's RuntimeDirectory.
    status_url = f"http://{node.address}:{node.ports.stats}/olladist/v1/status"
    with httpx.Client(trust_env=False, timeout=10) as client:
        r = client.get(status_url)
        assert r.status_code == 200 and r.json()["applied_commit"] == first

    # reload = SIGHUP = reconcile now (the interval is an hour): the new commit changes the
    # instances' environment, so both restart through the plan's restart actions.
    reconciler = sb.main_pid(RECONCILE_UNIT)
    before = _pids(node, INSTANCES)
    second = node.commit(note="reloaded")
    sb.systemctl("reload", RECONCILE_UNIT)
    node.wait_converged(second, timeout=30)
    after = _pids(node, INSTANCES)
    assert all(after[u] not in (0, before[u]) for u in INSTANCES), (before, after)
    assert sb.main_pid(RECONCILE_UNIT) == reconciler
    assert sb.show(RECONCILE_UNIT, "NRestarts") == "0"

    # SIGKILL: systemd restarts the reconciler (RestartSec=5) and it converges on the commit
    # pushed while it was down; the services it manages run on, untouched.
    sb.systemctl("kill", "-s", "KILL", RECONCILE_UNIT)
    third = node.commit(models=(*MODELS, "tinyllama"), note="reloaded")
    sb.wait_for(RECONCILE_UNIT, "NRestarts", "1", timeout=20)
    sb.wait_active(RECONCILE_UNIT)
    assert sb.main_pid(RECONCILE_UNIT) != reconciler
    node.wait_converged(third, timeout=30)
    assert "tinyllama:latest" in node.gateway_tags()
    assert _pids(node, INSTANCES) == after
    assert sb.show(GATEWAY_UNIT, "NRestarts") == "0"

    # A gateway stopped by hand cannot be reloaded: a config change starts it instead.
    sb.systemctl("stop", GATEWAY_UNIT)
    fourth = node.commit(models=(*MODELS, "tinyllama"), note="reloaded", queue="75s")
    sb.systemctl("reload", RECONCILE_UNIT)
    node.wait_converged(fourth, timeout=30)
    sb.wait_active(GATEWAY_UNIT)

    # A loop that hangs stops the heartbeat; the watchdog kills it and systemd restarts it.
    # The hang is real: the reconciler finds `haproxy` on its PATH, and this one, ahead of
    # the real one, waits while a marker file exists (a validator wedged on a new commit).
    marker, inner_marker = sb.install_file("fakebin/hang", "", reload=False)
    marker.unlink()
    _, fakebin = sb.install_file(
        "fakebin/haproxy",
        f"#!/bin/sh\nwhile [ -e {inner_marker} ]; do sleep 0.2; done\n"
        'exec /usr/sbin/haproxy "$@"\n',
        mode=0o755,
        reload=False,
    )
    sb.install_file(
        f"{RECONCILE_UNIT}.d/60-hang.conf",
        f"[Service]\nEnvironment=PATH={Path(fakebin).parent}:/usr/sbin:/usr/bin:/sbin:/bin\n"
        "WatchdogSec=6s\n",
    )
    sb.systemctl("restart", RECONCILE_UNIT)
    restarts = int(sb.show(RECONCILE_UNIT, "NRestarts"))
    marker.write_text("")
    fifth = node.commit(models=(*MODELS, "tinyllama"), note="hang", queue="75s")
    sb.systemctl("reload", RECONCILE_UNIT)  # the next tick validates the commit and hangs
    # Meanwhile the status keeps being served, and says what the loop is stuck on.
    with httpx.Client(trust_env=False, timeout=10) as client:
        busy = None
        while busy is None and sb.show(RECONCILE_UNIT, "Result") != "watchdog":
            busy = client.get(status_url).json()["daemon"]["busy"]
        assert busy is not None and busy["reason"] == "SIGHUP", "no status while the loop hung"
    sb.wait_for(RECONCILE_UNIT, "Result", "watchdog", timeout=30)
    _wait_restarted(sb, restarts + 1, timeout=20)
    assert re.search(rf"{re.escape(RECONCILE_UNIT)}: Watchdog timeout", sb.console_log())
    marker.unlink()  # the validator answers again: the restarted reconciler goes on
    sb.wait_active(RECONCILE_UNIT, timeout=60)
    node.wait_converged(fifth, timeout=60)

    # Stopping the reconciler (SIGTERM) is clean and leaves the node's services running.
    sb.systemctl("stop", RECONCILE_UNIT)
    assert sb.show(RECONCILE_UNIT, "ActiveState") == "inactive"
    assert sb.show(RECONCILE_UNIT, "Result") == "success"
    for unit in (*INSTANCES, GATEWAY_UNIT):
        assert sb.show(unit, "ActiveState") == "active", unit
    # No reconciler: the gateway says so in Ollama's error shape.
    with httpx.Client(trust_env=False, timeout=10) as client:
        r = client.get(status_url)
        assert r.status_code == 503 and "reconciler of this node is not running" in r.text


def _wait_restarted(sb: SystemdSandbox, at_least: int, timeout: float) -> None:
    """Wait until systemd has restarted the unit ``at_least`` times (the restarted one may
    hang again, and be restarted again, before the test looks)."""
    deadline = time.monotonic() + timeout
    while int(sb.show(RECONCILE_UNIT, "NRestarts")) < at_least:
        assert time.monotonic() < deadline, f"{RECONCILE_UNIT} was not restarted"
        time.sleep(0.2)


def test_watchdog_drain(node: SandboxNode) -> None:
    """Draining an instance that serves a long stream is progress, not a hang: the watchdog
    must not kill the reconciler while it waits, and the stream ends whole."""
    sb = node.sandbox
    slow = {"OLLADIST_SIM_TOKEN_RATE": "10", "OLLADIST_SIM_RESPONSE_TOKENS": "120"}
    first = node.commit(note="slow", sim_env=slow)
    sb.systemctl("enable", "--now", RECONCILE_UNIT)
    node.wait_converged(first)
    # 6 s: the loop must show progress every 3 s, far less than the 12 s stream takes.
    sb.install_file(f"{RECONCILE_UNIT}.d/70-watchdog.conf", "[Service]\nWatchdogSec=6s\n")
    sb.systemctl("restart", RECONCILE_UNIT)
    node.wait_converged(first)
    restarts = sb.show(RECONCILE_UNIT, "NRestarts")

    chunks: list[dict[str, object]] = []
    started = threading.Event()

    def stream() -> None:
        url = f"http://{node.address}:{node.ports.gateway}/api/generate"
        body = {"model": "qwen2.5:0.5b", "prompt": "why is the sky blue?"}
        with (
            httpx.Client(trust_env=False, timeout=60) as client,
            client.stream("POST", url, json=body) as response,
        ):
            for line in response.iter_lines():
                chunks.append(json.loads(line))
                started.set()

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    assert started.wait(20), "the stream did not start"
    second = node.commit(note="restart", sim_env=slow)  # both instances restart, drained first
    sb.systemctl("reload", RECONCILE_UNIT)
    node.wait_converged(second, timeout=60)
    reader.join(30)
    assert chunks and chunks[-1].get("done") is True, chunks[-3:]
    assert not [c for c in chunks if "error" in c]
    assert sb.show(RECONCILE_UNIT, "NRestarts") == restarts
    assert "Watchdog timeout" not in sb.console_log()


def _two_node_spec(
    node: SandboxNode, note: str, ghost: tuple[str, tuple[int, int]], wave_timeout: str
) -> str:
    """The sandbox node's spec plus a node ``n0`` at ``ghost`` (address, instance ports),
    where nothing listens: its peer port never answers, so it never reports healthy."""
    spec = yaml.safe_load(cluster_yaml(node.address, node.ports, MODELS, note=note))
    other = json.loads(json.dumps(spec["nodes"][0]))
    other.update(name="n0", address=ghost[0], listen=ghost[0])
    for inst, port in zip(other["instances"], ghost[1], strict=True):
        inst["port"] = port
    spec["nodes"].insert(0, other)
    spec["policy"]["rollout"] = {"wave_timeout": wave_timeout}
    return yaml.safe_dump(spec, sort_keys=False)


def test_watchdog_gate(node: SandboxNode) -> None:
    """A wave gate that waits several times WatchdogSec does not get the reconciler killed:
    the wait feeds the watchdog, the status says what it waits for, and the wave timeout
    stops the rollout with the node still on its commit."""
    sb = node.sandbox
    ghost = (loopback_address(), (free_port(), free_port()))
    path = node.upstream / "cluster.yaml"
    path.write_text(_two_node_spec(node, "0", ghost, "1h"))
    git(node.upstream, "commit", "-qam", "two nodes")
    first = node.head()
    sb.systemctl("enable", "--now", RECONCILE_UNIT)
    # Nothing applied before: the first commit does not wait. The ghost peer never answers,
    # which the node reports as drift (its gateway cannot reach it).
    node.wait_converged(first, down_peers=("n0",))
    sb.install_file(f"{RECONCILE_UNIT}.d/70-watchdog.conf", "[Service]\nWatchdogSec=4s\n")
    sb.systemctl("restart", RECONCILE_UNIT)
    node.wait_converged(first, down_peers=("n0",))
    restarts = sb.show(RECONCILE_UNIT, "NRestarts")

    # A commit that changes both nodes, with n1 after n0 (retried until the waves say so).
    for k in range(1, 30):
        parent = load_spec(node.upstream)
        path.write_text(_two_node_spec(node, str(k), ghost, "16s"))
        git(node.upstream, "commit", "-qam", f"both nodes, try {k}")
        second = node.head()
        plan = plan_rollout(parent, load_spec(node.upstream), second)
        if (plan.gate_wave_of("n1") or 0) >= 1:
            break
    assert plan.gate_wave_of("n1") == 1, plan
    before = _pids(node, INSTANCES)
    sb.systemctl("reload", RECONCILE_UNIT)

    def rollout() -> dict[str, object]:
        return dict(node.status().get("rollout") or {})

    deadline = time.monotonic() + 30
    while not (rollout().get("commit") == second and rollout().get("state") == "waiting"):
        assert time.monotonic() < deadline, rollout()
        time.sleep(0.2)
    gate = rollout()["gate"]
    assert isinstance(gate, dict) and gate["nodes"] == ["n0"] and "unreachable" in gate["reason"]
    assert "rollout of" in sb.show(RECONCILE_UNIT, "StatusText")
    # 16 s at the gate, four times WatchdogSec: then the wave timeout stops it.
    deadline = time.monotonic() + 40
    while rollout().get("state") != "stopped":
        assert time.monotonic() < deadline, rollout()
        time.sleep(0.5)
    s = node.status()
    assert s["applied_commit"] == first
    assert "wave 1 did not report healthy" in s["rollout"]["reason"]
    assert _pids(node, INSTANCES) == before  # nothing applied
    assert sb.show(RECONCILE_UNIT, "NRestarts") == restarts
    assert sb.show(RECONCILE_UNIT, "ActiveState") == "active"
    assert "Watchdog timeout" not in sb.console_log()
