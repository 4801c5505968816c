"""A real multi-node olladist cluster on this machine, for end-to-end tests.

Three (or more) nodes on 127.A.B.2, .3, ... (a /24 of loopback chosen at random so parallel runs
do not collide), instances on free ports of 127.0.0.1, one git repository (made with the git
CLI) served over HTTP on 127.0.0.1 by dulwich.web, one ``olladist reconcile --runtime local``
per node with its own root, and ``olladist-sim`` as the Ollama binary. Every process is stopped
by PID at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from olladist.layout import ENV_FILE, PEER_SECRET_FILE, Layout
from olladist.nodeconfig import write_peer_secret
from olladist.runtime.local import LocalRuntime
from tests.harness.gitserver import HttpServer, serve_git_http
from tests.harness.ports import free_port

SIM = str(Path(sys.executable).parent / "olladist-sim")


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    full = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        **(env or {}),
    }
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=full
    ).stdout.strip()


def cluster_yaml(nodes: list[dict[str, Any]], models: str, policy: str = "") -> str:
    lines = [
        "cluster: e2e",
        "gateway: {health: {interval: 1s, fall: 2, rise: 1}}",  # the default strategy: loaded-first
        "ollama:",
        "  env:",
        "    OLLADIST_SIM_QUIET: '1'",
        "    OLLADIST_SIM_PULL_GBPS: '50'",
        "    OLLADIST_SIM_LOAD_GBPS: '50'",
        "    OLLAMA_KEEP_ALIVE: 10m",
        f"policy: {{interval: 60s, restart_stagger: 1s{policy}}}",
        "nodes:",
    ]
    for n in nodes:
        lines += [
            f"  - name: {n['name']}",
            f"    address: {n['addr']}",
            f"    listen: {n['addr']}",
            "    instances:",
        ]
        lines += [
            f"      - {{name: i{k}, port: {p}, num_parallel: 4}}" for k, p in enumerate(n["ports"])
        ]
    return "\n".join(lines) + "\nmodels:\n" + models


DEFAULT_MODELS = """\
  - {name: llama3.2:1b, replicas: 2}
  - {name: qwen2.5:0.5b, replicas: 1}
  - {name: nomic-embed-text, replicas: 2}
  - {name: gemma2:2b, replicas: 1}
"""


@dataclass
class NodeProc:
    name: str
    addr: str
    root: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def layout(self) -> Layout:
        return Layout(self.root)

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(
                (self.root / "var/lib/olladist/status.json").read_text()
            )
            return data
        except (FileNotFoundError, ValueError):
            return {}

    def service_pids(self) -> dict[str, int]:
        out = {}
        for rec in (self.root / "run/olladist/local").glob("*.json"):
            out[rec.name.removesuffix(".json")] = int(json.loads(rec.read_text())["pid"])
        return out


@dataclass
class Cluster:
    base: Path
    repo: Path
    url: str
    nodes: list[NodeProc]
    interval: float
    env_extra: dict[str, dict[str, str]] = field(default_factory=dict)
    _server_cm: AbstractContextManager[HttpServer] | None = None
    node_specs: list[dict[str, Any]] = field(default_factory=list)
    roots_base: Path | None = None

    # -- git ---------------------------------------------------------------------------------

    def write_spec(self, models: str = DEFAULT_MODELS, policy: str = "") -> None:
        (self.repo / "cluster.yaml").write_text(cluster_yaml(self.node_specs, models, policy))

    def commit(self, message: str, env: dict[str, str] | None = None, *config: str) -> str:
        """Commit everything; ``config`` are ``-c key=value`` pairs (signing), ``env`` its env."""
        git(self.repo, "add", "-A")
        git(self.repo, *config, "commit", "-q", *(["-S"] if config else []), "-m", message, env=env)
        return git(self.repo, "rev-parse", "HEAD")

    def head(self) -> str:
        return git(self.repo, "rev-parse", "HEAD")

    # -- processes ---------------------------------------------------------------------------

    def start_node(self, node: NodeProc) -> None:
        log = (self.base / f"{node.name}.log").open("ab")
        node.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "olladist",
                "reconcile",
                "--root",
                str(node.root),
                "--interval",
                str(self.interval),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            # Catalogue simulators: a model no peer holds comes through them, never from the
            # real registry; tests of transfers set OLLADIST_REGISTRY to the test registry.
            env={"OLLADIST_REGISTRY": "ollama", **os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()

    def stop_node(self, node: NodeProc, timeout: float = 30.0) -> None:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        # Whatever the reconciler left (it should leave nothing), by its PID records.
        LocalRuntime(node.layout, stop_timeout=5).stop_all()

    def close(self) -> None:
        for n in self.nodes:
            self.stop_node(n)
        if self._server_cm is not None:
            self._server_cm.__exit__(None, None, None)
        if self.roots_base is not None:
            # The services' logs outlive the roots (short paths in /tmp) for a post-mortem.
            for n in self.nodes:
                logs = n.layout.real("/var/log/olladist")
                if logs.is_dir():
                    shutil.copytree(logs, self.base / f"{n.name}-logs", dirs_exist_ok=True)
            shutil.rmtree(self.roots_base, ignore_errors=True)

    # -- waiting -----------------------------------------------------------------------------

    def wait(self, pred: Callable[[], bool], timeout: float, what: str) -> float:
        start = time.monotonic()
        while not pred():
            if time.monotonic() - start > timeout:
                states = {n.name: _brief(n.status()) for n in self.nodes}
                raise AssertionError(f"timed out after {timeout}s waiting for {what}: {states}")
            time.sleep(0.1)
        return time.monotonic() - start

    def converged(self, commit: str, nodes: list[NodeProc] | None = None) -> bool:
        for n in nodes or self.nodes:
            s = n.status()
            if s.get("applied_commit") != commit or s.get("drift") or not s.get("ok"):
                return False
        return True

    def wait_converged(self, commit: str, timeout: float = 60.0) -> float:
        return self.wait(lambda: self.converged(commit), timeout, f"convergence on {commit[:12]}")

    def gateway(self, node: int = 0) -> str:
        return f"http://{self.nodes[node].addr}:11434"

    def olladist_wait(
        self, node: NodeProc, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """``olladist wait`` on ``node``, as a script would run it."""
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "olladist",
                "wait",
                "--root",
                str(node.root),
                "--timeout",
                str(timeout),
            ],
            capture_output=True,
            text=True,
            timeout=timeout + 60,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            check=False,
        )


def _brief(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "applied": str(s.get("applied_commit", ""))[:12],
        "refused": s.get("attempted_error"),
        "drift": [f"{d['kind']} {d['target']}" for d in s.get("drift", [])][:4],
        "errors": [e["message"][:200] for e in s.get("errors", [])],
    }


def start_cluster(  # noqa: PLR0917
    base: Path,
    n_nodes: int = 3,
    instances: int = 2,
    interval: float = 2.0,
    models: str = DEFAULT_MODELS,
    policy: str = "",
    node_env: dict[str, dict[str, str]] | None = None,
    before_first_commit: Callable[[Path], None] | None = None,
    commit_with: tuple[list[str], dict[str, str]] | None = None,
    wait: bool = True,
) -> Cluster:
    """Start the cluster; with ``wait``, return once every node has converged (its status)
    and every gateway's checks are up, else at once (tests that watch it start)."""
    a, b = random.randint(100, 250), random.randint(1, 250)
    node_specs = [
        {
            "name": f"n{k + 1}",
            "addr": f"127.{a}.{b}.{k + 2}",
            "ports": [free_port() for _ in range(instances)],
        }
        for k in range(n_nodes)
    ]
    repo = base / "repo"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    # Roots stay short: HAProxy limits unix socket paths to 97 characters.
    roots_base = Path(tempfile.mkdtemp(prefix="od-e2e-"))
    nodes = [NodeProc(s["name"], s["addr"], roots_base / s["name"]) for s in node_specs]
    cluster = Cluster(base, repo, "", nodes, interval, node_specs=node_specs, roots_base=roots_base)
    cluster.write_spec(models, policy)
    if before_first_commit:
        before_first_commit(repo)
    sign_args, sign_env = commit_with or ([], {})
    head = cluster.commit("initial spec", sign_env, *sign_args)
    cluster._server_cm = serve_git_http(repo, base / "http.log")
    cluster.url = cluster._server_cm.__enter__().url
    first = write_peer_secret(nodes[0].layout)
    for n in nodes:
        target = n.layout.real(PEER_SECRET_FILE)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target != first:
            target.write_bytes(first.read_bytes())
        env = {
            "OLLADIST_SOURCE": cluster.url,
            "OLLADIST_NODE": n.name,
            "OLLADIST_RUNTIME": "local",
            "OLLADIST_OLLAMA_BINARY": SIM,
            **(node_env or {}).get(n.name, {}),
        }
        env_file = n.layout.real(ENV_FILE)
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    try:
        for n in nodes:
            cluster.start_node(n)
        if not wait:
            return cluster
        cluster.wait_converged(head, timeout=90)
        cluster.wait(lambda: all_servers_up(cluster), 30, "gateway health checks")
        # Each node converged serves what it holds; a peer's models reach its view with the
        # next poll of that peer. Ready when every gateway serves every placed model, the test
        # `olladist dev` makes before it says "up".
        cluster.wait(lambda: every_gateway_serves(cluster), 30, "every gateway serving all")
    except BaseException:
        cluster.close()
        raise
    return cluster


def every_gateway_serves(cluster: Cluster) -> bool:
    from olladist.gateway.live import LIVE_PATH, LiveUnavailable, fetch_live, serves_everything
    from olladist.specload import load_spec

    listed = sorted(m.key for m in load_spec(cluster.repo).models)
    for n in cluster.nodes:
        try:
            if serves_everything(fetch_live(f"http://{n.addr}:8404{LIVE_PATH}"), listed):
                return False
        except LiveUnavailable:
            return False
    return True


def all_servers_up(cluster: Cluster) -> bool:
    import httpx

    from olladist.check import check_servers

    with httpx.Client(timeout=3.0, trust_env=False) as client:
        for n in cluster.nodes:
            with contextlib.suppress(httpx.HTTPError):
                if not check_servers(client, f"http://{n.addr}:8404").ok:
                    return False
    return True
