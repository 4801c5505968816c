"""One olladist node inside the systemd sandbox, fed from a git repo served over HTTP.

The node's root is arranged so that systemd sees what olladist renders:

    tmp/r/                           OLLADIST_ROOT (the same path inside the sandbox)
      etc/olladist/olladist.env      OLLADIST_SOURCE, _NODE, _ROOT, _OLLAMA_BINARY, _RUNTIME
      etc/systemd/system  ->  tmp/sb/units   the folder the sandbox binds over /etc/systemd/system
    tmp/sb/                          the sandbox's workdir
    tmp/upstream/                    the cluster-spec repo, served by `python -m dulwich.web`

Both the root and the unit folder are shared into the sandbox at their host paths, so a path
in a rendered file means the same on both sides.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from olladist.layout import Layout
from olladist.units import (
    GATEWAY_UNIT,
    INSTANCE_TEMPLATE,
    RECONCILE_UNIT,
    for_layout,
    shipped_unit,
)
from tests.harness.gitserver import serve_git_http
from tests.harness.ports import free_port
from tests.harness.systemd_sandbox import SystemdSandbox

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.prefix) / "bin"
# Tiny models of the simulator's catalogue; the simulator pulls them in milliseconds.
MODELS = ("qwen2.5:0.5b", "all-minilm")
# The shipped unit's WatchdogSec=120 made short: the loop must ping within half of it.
TEST_WATCHDOG = "20s"
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def loopback_address() -> str:
    """A 127.0.0.x of its own, so that parallel sessions' gateways do not meet."""
    return f"127.0.{os.getpid() % 250 + 1}.{int.from_bytes(os.urandom(1)) % 250 + 2}"


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **_GIT_ENV, "HOME": str(repo.parent)}
    result = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout.strip()


@dataclass(frozen=True)
class Ports:
    gateway: int
    peer: int
    stats: int
    instances: tuple[int, int]


def cluster_yaml(
    address: str,
    ports: Ports,
    models: tuple[str, ...],
    *,
    note: str = "",
    queue: str = "60s",
    sim_env: dict[str, str] | None = None,
) -> str:
    """A one-node spec. `note` lands in the instances' environment (a change restarts them),
    `queue` in the gateway's config (a change reloads it), `sim_env` in the simulator's."""
    spec: dict[str, Any] = {
        "cluster": "sandbox",
        "gateway": {
            "port": ports.gateway,
            "peer_port": ports.peer,
            "stats_port": ports.stats,
            "timeouts": {"queue": queue},
            # Restarts wait for the gateway's check to see the instance up: keep that short.
            "health": {"interval": "250ms", "rise": 1, "fall": 1},
        },
        "ollama": {
            "env": {"OLLADIST_SIM_QUIET": "1", "OLLADIST_SIM_PULL_GBPS": "100", **(sim_env or {})},
        },
        # Long: a test that sees a new commit applied knows a reload did it, not the timer.
        "policy": {"interval": "1h"},
        "nodes": [
            {
                "name": "n1",
                "address": address,
                "listen": address,
                "instances": [
                    {"name": f"i{k}", "port": port, "env": {"OLLADIST_TEST_NOTE": note or "0"}}
                    for k, port in enumerate(ports.instances)
                ],
            }
        ],
        "models": [{"name": m, "nodes": "all"} for m in models],
    }
    return yaml.safe_dump(spec, sort_keys=False)


@dataclass
class SandboxNode:
    sandbox: SystemdSandbox
    root: Path
    upstream: Path
    url: str
    address: str
    ports: Ports

    @property
    def layout(self) -> Layout:
        return Layout(self.root)

    def unit_log(self, unit: str) -> Path:
        """Where `unit` (a template: all its instances) writes stdout and stderr."""
        return self.root / "var" / "log" / f"{unit}.log"

    def logs(self, lines: int = 30) -> str:
        out = []
        for log in sorted((self.root / "var" / "log").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(out)

    def commit(
        self,
        models: tuple[str, ...] = MODELS,
        note: str = "",
        sim_env: dict[str, str] | None = None,
        queue: str = "60s",
    ) -> str:
        (self.upstream / "cluster.yaml").write_text(
            cluster_yaml(self.address, self.ports, models, note=note, sim_env=sim_env, queue=queue)
        )
        git(self.upstream, "add", "cluster.yaml")
        git(self.upstream, "commit", "-q", "--allow-empty", "-m", f"spec {note}")
        return self.head()

    def head(self) -> str:
        return git(self.upstream, "rev-parse", "HEAD")

    def olladist(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The olladist CLI on the host, on this node's root."""
        result = subprocess.run(
            [str(VENV_BIN / "olladist"), *args, "--root", str(self.root)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("OLLADIST_")},
        )
        if check and result.returncode != 0:
            raise AssertionError(f"olladist {' '.join(args)}: {result.stderr}{result.stdout}")
        return result

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.olladist("status", "--json").stdout)
        return data

    def wait_converged(
        self, commit: str, timeout: float = 60.0, down_peers: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """Wait until status.json says `commit` is applied with no drift and no error;
        ``down_peers``: peers the test keeps down on purpose, whose drift is expected."""
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if (self.layout.real("/var/lib/olladist/status.json")).is_file():
                status = self.status()
                if (
                    status["applied_commit"] == commit
                    and status["ok"]
                    and not [
                        d
                        for d in status["drift"]
                        if d["target"] not in {f"peer {p}" for p in down_peers}
                    ]
                    and not status["errors"]
                ):
                    return status
            time.sleep(0.2)
        raise AssertionError(
            f"not converged on {commit[:12]} within {timeout} s: {json.dumps(status, indent=1)}\n"
            + self.sandbox.systemctl("status", "--all", "olladist-*", check=False).stdout
            + "\n"
            + self.logs()
        )

    def gateway_tags(self) -> set[str]:
        url = f"http://{self.address}:{self.ports.gateway}/api/tags"
        with httpx.Client(trust_env=False, timeout=5) as client:
            return {m["name"] for m in client.get(url).json()["models"]}

    def instance_tags(self, port: int) -> set[str]:
        with httpx.Client(trust_env=False, timeout=5) as client:
            models = client.get(f"http://127.0.0.1:{port}/api/tags").json()["models"]
        return {m["name"] for m in models}


def reconcile_dropin(olladist: str, watchdog: str = TEST_WATCHDOG) -> str:
    """The test's only change to the shipped unit: this checkout's olladist, a short watchdog."""
    return f"[Service]\nExecStart=\nExecStart={olladist} reconcile\nWatchdogSec={watchdog}\n"


@contextmanager
def http_git_server(repo: Path, log: Path) -> Iterator[str]:
    """`python -m dulwich.web` serving `repo` on 127.0.0.1; stopped by PID."""
    with serve_git_http(repo, log) as server:
        yield server.url


@contextmanager
def sandbox_node(tmp_path: Path) -> Iterator[SandboxNode]:
    """A booted sandbox whose /etc/systemd/system is ROOT/etc/systemd/system, the reconcile
    unit installed (not started), and a first commit in the upstream repo."""
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    git(upstream, "init", "-q", "-b", "main")
    root = tmp_path / "r"
    # HAProxy refuses a socket path over 97 bytes; the test's name makes tmp_path long.
    admin_socket = Layout(root).path("/run/olladist/gateway/admin.sock")
    assert len(admin_socket) <= 97, f"{admin_socket}: too long a path, shorten the test's name"
    workdir = tmp_path / "sb"
    (root / "var" / "log").mkdir(parents=True)
    units = workdir / "units"
    units.mkdir(parents=True)
    (root / "etc" / "systemd").mkdir(parents=True)
    (root / "etc" / "systemd" / "system").symlink_to(units)
    address = loopback_address()
    ports = Ports(
        free_port(address), free_port(address), free_port(address), (free_port(), free_port())
    )
    with http_git_server(upstream, tmp_path / "http.log") as url:
        (root / "etc" / "olladist").mkdir(parents=True)
        (root / "etc" / "olladist" / "olladist.env").write_text(
            f"OLLADIST_SOURCE={url}\n"
            "OLLADIST_NODE=n1\n"
            f"OLLADIST_ROOT={root}\n"
            f"OLLADIST_OLLAMA_BINARY={VENV_BIN / 'olladist-sim'}\n"
            "OLLADIST_RUNTIME=systemd\n"
            # Catalogue simulators: models come through them, never from a real registry.
            "OLLADIST_REGISTRY=ollama\n"
        )
        # Node-local, never in git: the gateway's config loads it (docs/gateway.md).
        secrets = root / "etc" / "olladist" / "secrets"
        secrets.mkdir(mode=0o750)
        (secrets / "peer.map").write_text(f"secret {os.urandom(32).hex()}\n")
        share = (REPO, Path(sys.prefix), root, units)
        with SystemdSandbox(workdir, share=share) as sandbox:
            sandbox.wait_until_running()
            node = SandboxNode(sandbox, root, upstream, url, address, ports)
            node.commit()
            sandbox.install_unit(
                RECONCILE_UNIT, for_layout(shipped_unit(RECONCILE_UNIT), node.layout), reload=False
            )
            sandbox.install_file(
                f"{RECONCILE_UNIT}.d/50-test.conf",
                reconcile_dropin(sandbox.inner_path(VENV_BIN / "olladist")),
                reload=False,
            )
            # The sandbox has no journald: logs go to files a failing test can show.
            for unit in (RECONCILE_UNIT, GATEWAY_UNIT, INSTANCE_TEMPLATE):
                log = node.unit_log(unit)
                sandbox.install_file(
                    f"{unit}.d/60-log.conf",
                    f"[Service]\nStandardOutput=append:{log}\nStandardError=append:{log}\n",
                    reload=unit == INSTANCE_TEMPLATE,
                )
            yield node
