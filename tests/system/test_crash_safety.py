"""SIGKILL during `olladist apply --runtime systemd`, at random moments, in the sandbox.

Each round switches the node between two specs (A and B differ in the instances' environment,
so both instances restart, drained in the gateway first, and in the gateway's config, so it
reloads), kills the apply after a random delay, and checks that every file olladist manages is
whole: the content of A or of B, never a mix or a truncated file, and its state files still
parse. The next apply must then converge: files as rendered, nothing left pending, every unit
active and running its current drop-in, no instance left drained in the gateway.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from olladist.files import File
from olladist.gateway.runtime import HAProxyRuntime
from olladist.layout import ADMIN_SOCKET, STATE_DIR
from olladist.nodelocal import NodeLocal
from olladist.reconcile import load_desired
from olladist.units import GATEWAY_UNIT, instance_dropin_path
from tests.system.node import MODELS, VENV_BIN, SandboxNode, cluster_yaml, sandbox_node

pytestmark = pytest.mark.system

KILLS = 30
TIME_BUDGET = 90.0  # seconds for the rounds; fewer kills are made on a slow machine
MIN_KILLS = 10
HARD_BUDGET = 360.0  # a loaded machine goes on past TIME_BUDGET until MIN_KILLS, up to this
UNIT = "olladist-crashtest@.service"
SPECS = {"a": ("a", "60s"), "b": ("b", "61s")}  # name -> (instances' note, gateway queue)
INSTANCES = ("i0", "i1")


@pytest.fixture
def node(sandbox_available: None, tmp_path: Path) -> Iterator[SandboxNode]:
    with sandbox_node(tmp_path) as n:
        yield n


def _install(node: SandboxNode) -> dict[str, dict[str, File]]:
    """Spec folders A and B under the root, the apply unit; returns what each renders."""
    rendered = {}
    for name, (note, queue) in SPECS.items():
        spec_dir = node.root / "srv" / "specs" / name
        spec_dir.mkdir(parents=True)
        (spec_dir / "cluster.yaml").write_text(
            cluster_yaml(node.address, node.ports, MODELS, note=note, queue=queue)
        )
        desired = load_desired(
            spec_dir,
            "n1",
            node.layout,
            validate=False,
            local=NodeLocal(binary=str(VENV_BIN / "olladist-sim")),
        )
        rendered[name] = desired.files
    env = node.layout.real("/etc/olladist/olladist.env")
    log = node.unit_log(UNIT)
    node.sandbox.install_unit(
        UNIT,
        "[Service]\nType=oneshot\n"
        f"EnvironmentFile={env}\n"
        f"ExecStart={VENV_BIN / 'olladist'} apply --spec {node.root}/srv/specs/%i\n"
        f"StandardOutput=append:{log}\nStandardError=append:{log}\n",
    )
    return rendered


def _torn(node: SandboxNode, rendered: dict[str, dict[str, File]]) -> list[str]:
    """Managed files whose content is neither A's nor B's, and state files that do not parse."""
    bad = []
    for path in sorted(set(rendered["a"]) | set(rendered["b"])):
        real = node.layout.real(path)
        if not real.exists():
            continue
        content = real.read_text()
        if content not in {r[path].content for r in rendered.values() if path in r}:
            bad.append(path)
    for state in node.layout.real(STATE_DIR).glob("*.json"):
        try:
            json.loads(state.read_text())
        except ValueError:
            bad.append(str(state))
    return bad


def _started_at(node: SandboxNode, unit: str) -> float:
    value = node.sandbox.systemctl(
        "show", "-P", "ExecMainStartTimestamp", "--timestamp=us+utc", unit
    ).stdout.strip()
    return (
        dt.datetime.strptime(value, "%a %Y-%m-%d %H:%M:%S.%f UTC")
        .replace(tzinfo=dt.UTC)
        .timestamp()
    )


def _check_converged(node: SandboxNode, files: dict[str, File]) -> None:
    sb = node.sandbox
    for path, f in files.items():
        assert node.layout.real(path).read_text() == f.content, path
    pending = json.loads(node.layout.real(f"{STATE_DIR}/pending.json").read_text())
    assert pending == [], pending
    for name in INSTANCES:
        unit = f"olladist-ollama@{name}.service"
        sb.wait_active(unit)
        assert sb.show(unit, "NeedDaemonReload") == "no"
        # Running the drop-in on disk: started after it was last written.
        written = node.layout.real(instance_dropin_path(name)).stat().st_mtime
        assert _started_at(node, unit) >= written - 0.001, unit
    sb.wait_active(GATEWAY_UNIT)
    # A restart drains the instance in the gateway first: none may be left drained.
    gateway = HAProxyRuntime(node.layout.real(ADMIN_SOCKET))
    left = [(s.backend, s.server) for s in gateway.servers_state() if s.draining or s.maintenance]
    assert not left, f"left drained or in maintenance: {left}"


def _phase(node: SandboxNode, target: dict[str, File]) -> str:
    """Where the killed apply was: before its writes, between writes and restarts, or done."""
    pending = node.layout.real(f"{STATE_DIR}/pending.json")
    if pending.exists() and json.loads(pending.read_text()):
        return "actions pending"
    new = sum(node.layout.real(p).read_text() == f.content for p, f in target.items())
    return "nothing written" if new < len(target) else "files written, nothing pending"


def _wait_stopped(node: SandboxNode, unit: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while node.sandbox.show(unit, "ActiveState") not in ("inactive", "failed"):
        assert time.monotonic() < deadline, f"{unit} still running after SIGKILL"
        time.sleep(0.05)


def test_sigkill_during_apply(node: SandboxNode) -> None:
    sb = node.sandbox
    rendered = _install(node)
    began = time.monotonic()
    sb.systemctl("start", "olladist-crashtest@a.service")  # the first apply: models pulled
    print(f"first apply {time.monotonic() - began:.2f} s")
    _check_converged(node, rendered["a"])
    # How long a switch takes (restarts, a reload, no pulls): the kills fall within it.
    switches = []
    for name in ("b", "a"):
        began = time.monotonic()
        sb.systemctl("start", f"olladist-crashtest@{name}.service")
        switches.append(time.monotonic() - began)
        _check_converged(node, rendered[name])
    duration = min(switches)

    rng = random.Random()
    phases: Counter[str] = Counter()
    kills: list[float] = []
    began = time.monotonic()
    target = "b"

    def go_on() -> bool:
        spent = time.monotonic() - began
        if len(kills) >= KILLS or spent > HARD_BUDGET:
            return False
        return spent < TIME_BUDGET or len(kills) < MIN_KILLS

    while go_on():
        unit = f"olladist-crashtest@{target}.service"
        delay = rng.uniform(0.0, 0.9 * duration)
        sb.systemctl("start", "--no-block", unit)
        time.sleep(delay)
        sb.systemctl("kill", "-s", "KILL", unit, check=False)
        _wait_stopped(node, unit)
        torn = _torn(node, rendered)
        assert not torn, f"torn after a SIGKILL {delay:.2f}s into the apply: {torn}"
        if sb.show(unit, "Result") == "signal":
            kills.append(delay)
            phases[_phase(node, rendered[target])] += 1
        sb.systemctl("reset-failed", unit, check=False)
        sb.systemctl("start", unit)  # the next run converges
        _check_converged(node, rendered[target])
        target = "b" if target == "a" else "a"
    assert len(kills) >= MIN_KILLS, f"only {len(kills)} applies were killed mid-way"
    leftovers = sorted(str(p) for p in node.root.rglob(".*.tmp"))
    print(
        f"{len(kills)} applies killed at {', '.join(f'{k:.2f}' for k in sorted(kills))} s "
        f"(a whole apply took {duration:.2f} s); state after the kill: {dict(phases)}; "
        f"temp files left by killed writes: {len(leftovers)}"
    )
