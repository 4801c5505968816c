"""``olladist dev``: a whole cluster on this one machine.

It puts the spec in a git repository under the dev state directory (created once, then reused,
so edits committed there are what the cluster follows), starts one reconciler per node with
``--runtime local`` and a root of its own, waits until every node has converged, and tells
the user where to point clients. Ctrl-C (or ``olladist dev --down``) stops every process it
started, by PID, and checks that nothing is left listening.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from dulwich import porcelain
from dulwich.repo import Repo

from olladist.check import Result, check_servers
from olladist.errors import OlladistError, ToolError
from olladist.files import write_atomic
from olladist.gateway.live import LIVE_PATH, LiveUnavailable, fetch_live, serves_everything
from olladist.gateway.topology import listeners
from olladist.layout import ENV_FILE, PEER_SECRET_FILE, Layout
from olladist.nodeconfig import format_env_file, write_peer_secret
from olladist.nodelocal import ENV_BINARY
from olladist.placement import place
from olladist.ports import who_listens
from olladist.runtime.local import LocalRuntime, Running
from olladist.spec import Spec
from olladist.specload import load_spec
from olladist.state import State
from olladist.validators import haproxy_version

DEV_RECORD = "dev.json"
# The spec directory the dev repository was made from (absolute path, one line).
ORIGIN_RECORD = "spec-origin"
_ORIGIN_MESSAGE = "olladist dev: cluster spec from "


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "olladist" / "dev"


def find_binary() -> tuple[str, str]:
    """The real ollama when installed, else the simulator; and a sentence saying which."""
    real = shutil.which("ollama")
    if real:
        return real, f"using the ollama binary at {real}"
    sim = Path(sys.executable).parent / "olladist-sim"
    if not sim.exists():
        found = shutil.which("olladist-sim")
        if not found:
            raise ToolError(
                "neither ollama nor olladist-sim is installed",
                hint="install olladist with pip (it ships olladist-sim), or install ollama",
            )
        sim = Path(found)
    return str(sim), f"no ollama binary found: using the simulator {sim}"


def spec_ports(spec: Spec) -> list[tuple[str, int, str]]:
    """Every (address, port, what) the cluster will listen on on this machine."""
    return [
        (addr, port, f"{what} of {node.name}")
        for node in spec.nodes
        for addr, port, what in listeners(spec, node)
    ]


def preflight(spec: Spec) -> None:
    for node in spec.nodes:
        if not node.loopback:
            raise OlladistError(
                f"node {node.name} listens on {node.listen}, not a loopback address",
                hint="olladist dev runs every node on this machine: give each node "
                "`listen: 127.0.0.N` (see examples/cluster-spec)",
            )
    taken = []
    for addr, port, what in spec_ports(spec):
        holder = who_listens(addr, port)
        if holder is not None:
            taken.append(f"{addr}:{port} ({what}) is taken by {holder}")
    if taken:
        raise OlladistError(
            "ports the dev cluster needs are in use:\n  " + "\n  ".join(taken),
            hint="stop what holds them (a previous `olladist dev`? run `olladist dev --down`), "
            "or change the ports in the spec",
        )


def repo_origin(state_dir: Path) -> str | None:
    """The spec directory the dev repository under ``state_dir`` was made from: its record,
    else (repositories made before the record existed) the message of its first commit."""
    from dulwich.repo import Repo  # noqa: PLC0415

    with contextlib.suppress(FileNotFoundError):
        return (state_dir / ORIGIN_RECORD).read_text().strip() or None
    repo = state_dir / "repo"
    if not (repo / ".git").exists():
        return None
    with Repo(str(repo)) as r:
        walker = r.get_walker()
        first = None
        for entry in walker:
            first = entry.commit
    if first is None:
        return None
    message = first.message.decode(errors="replace").strip()
    return message.removeprefix(_ORIGIN_MESSAGE) if message.startswith(_ORIGIN_MESSAGE) else None


def ensure_repo(spec_dir: Path, repo: Path) -> str:
    """Create the dev repository from ``spec_dir`` once; return its HEAD commit."""
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        (repo.parent / ORIGIN_RECORD).write_text(f"{spec_dir.resolve()}\n")
        shutil.copytree(spec_dir, repo, dirs_exist_ok=True)
        with Repo.init(str(repo), default_branch=b"main") as r:
            paths = sorted(str(p) for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts)
            porcelain.add(r, paths=paths)
            porcelain.commit(
                r,
                message=f"{_ORIGIN_MESSAGE}{spec_dir.resolve()}".encode(),
                author=b"olladist dev <olladist@localhost>",
                committer=b"olladist dev <olladist@localhost>",
            )
    with Repo(str(repo)) as r:
        return r.head().decode()


@dataclass(frozen=True)
class Proc:
    """A reconciler this dev cluster started: its node and its process identity."""

    node: str
    pid: int
    starttime: int

    def alive(self) -> bool:
        return Running(self.pid, self.starttime).alive()


def _record(state_dir: Path) -> list[Proc]:
    try:
        data = json.loads((state_dir / DEV_RECORD).read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [Proc(p["node"], p["pid"], p["starttime"]) for p in data.get("reconcilers", [])]


class DevCluster:
    def __init__(
        self,
        spec_dir: Path,
        state_dir: Path,
        interval: float = 5.0,
        out: Any = None,
        source: str | None = None,
    ) -> None:
        """``source``: what the nodes follow instead of the dev repository (a plain directory
        is watched, so an edit converges without a commit)."""
        self.source = source
        self.spec_dir = spec_dir
        self.state_dir = state_dir
        self.interval = interval
        self.out = out or sys.stdout
        self.procs: list[Proc] = []
        self._popen: list[subprocess.Popen[bytes]] = []

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def node_root(self, node: str) -> Path:
        return self.state_dir / "nodes" / node

    def up(self, timeout: float = 180.0) -> Spec:
        if any(p.alive() for p in _record(self.state_dir)):
            raise OlladistError(
                f"a dev cluster from {self.state_dir} is already running",
                hint="stop it first: olladist dev --down",
            )
        repo = self.state_dir / "repo"
        fresh = not (repo / ".git").exists()
        origin = None if fresh else self.check_origin()
        spec = load_spec(self.spec_dir if fresh else repo)
        _, version = haproxy_version()
        preflight(spec)
        binary, which = find_binary()
        head = ensure_repo(self.spec_dir, repo)
        self.say(
            f"olladist dev: cluster {spec.cluster}, {len(spec.nodes)} nodes, HAProxy {version}"
        )
        self.say(f"  {which}")
        made = f"created from {self.spec_dir}" if fresh else f"reused, made from {origin}"
        self.say(f"  spec repository: {repo} ({made}; at {head[:12]})")
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.share_peer_secret(spec)
        # The simulators pull from their catalogue: models no peer holds come through them
        # (docs/models.md), never from the real registry.
        env = {"OLLADIST_REGISTRY": "ollama", **os.environ, "PYTHONUNBUFFERED": "1"}
        for node in spec.nodes:
            self.write_env_file(node.name, self.source or str(repo), binary)
            log = open(self.state_dir / "logs" / f"{node.name}.log", "ab")  # noqa: SIM115
            cmd = [
                sys.executable,
                "-m",
                "olladist",
                "reconcile",
                "--root",
                str(self.node_root(node.name)),
                "--interval",
                str(self.interval),
            ]
            proc = subprocess.Popen(
                cmd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            log.close()
            self._popen.append(proc)
            running = Running.of(proc)
            if running is None:
                raise OlladistError(
                    f"the reconciler of {node.name} exited at once (status {proc.poll()})",
                    hint=f"see {self.state_dir / 'logs' / (node.name + '.log')}",
                )
            self.procs.append(Proc(node.name, proc.pid, running.starttime))
            self.say(f"  started reconciler for {node.name} (pid {proc.pid})")
        self._save()
        deadline = time.monotonic() + timeout
        self.wait_converged(spec, head if self.source is None else None, timeout)
        self.wait_gateways(spec, max(5.0, deadline - time.monotonic()))
        return spec

    def check_origin(self) -> str:
        """The existing dev repository must come from the spec asked for: a cluster made from
        another spec would not be the one the user reads about."""
        origin = repo_origin(self.state_dir)
        wanted = str(self.spec_dir.resolve())
        if origin != wanted:
            made = f"from {origin}" if origin else "from an unknown spec"
            raise OlladistError(
                f"the dev repository {self.state_dir / 'repo'} was made {made}, not from {wanted}",
                hint=f"start afresh from {wanted} (this deletes the dev repository and its "
                "commits): add --reset"
                + (f"; or keep that cluster: olladist dev --spec {origin}" if origin else ""),
            )
        return origin

    def reset(self) -> None:
        """Forget the dev repository and the nodes' roots, so the next ``up`` starts afresh."""
        if any(p.alive() for p in _record(self.state_dir)):
            raise OlladistError(
                f"a dev cluster from {self.state_dir} is running",
                hint="stop it first: olladist dev --down",
            )
        for name in ("repo", "nodes", "logs"):
            shutil.rmtree(self.state_dir / name, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / ORIGIN_RECORD).unlink()
        self.say(f"olladist dev: removed the dev repository and node roots of {self.state_dir}")

    def wait_stopped(self, poll: float = 0.5) -> tuple[bool, str]:
        """Block while the cluster runs; then (stopped on purpose?, why it no longer runs).
        ``olladist dev --down`` from elsewhere stops the reconcilers and removes the record;
        a reconciler can also die on its own."""
        while True:
            for child in self._popen:
                child.poll()  # reap: a dead child left a zombie would still look alive
            if not (self.state_dir / DEV_RECORD).exists():
                return True, "the cluster was stopped from elsewhere (olladist dev --down)"
            dead = [p.node for p in self.procs if not p.alive()]
            if dead:
                logs = self.state_dir / "logs"
                return False, f"the reconciler of {', '.join(dead)} exited (see {logs})"
            time.sleep(poll)

    def write_env_file(self, node: str, repo: str, binary: str) -> None:
        """The node-local settings a real node keeps in /etc/olladist/olladist.env, so that
        every olladist command given --root ROOT acts as that node."""
        settings = {
            "OLLADIST_SOURCE": repo,
            "OLLADIST_NODE": node,
            "OLLADIST_RUNTIME": "local",
            ENV_BINARY: binary,
        }
        text = format_env_file(settings, "written by olladist dev: this node's local settings")
        write_atomic(Layout(self.node_root(node)).real(ENV_FILE), text.encode(), 0o644)

    def wait_gateways(self, spec: Spec, timeout: float) -> None:
        """Converged files are not yet a serving cluster: wait for every gateway's health
        checks to see its instances and peers up, and for its live view to serve every model
        placed in the cluster (listed, and every holder ready)."""
        placement = place(spec)
        listed = sorted(m.key for m in spec.models if placement.nodes_for(m.key))
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            for node in spec.nodes:
                url = f"http://{node.listen}:{spec.gateway.stats_port}"
                while True:
                    result = check_servers(client, url)
                    if result.ok:
                        try:
                            missing = serves_everything(fetch_live(url + LIVE_PATH, client), listed)
                        except LiveUnavailable as exc:
                            missing = [str(exc)]
                        if missing:
                            result = Result(False, "serving", f"not serving {', '.join(missing)}")
                    if result.ok:
                        self.say(
                            f"  {node.name}: gateway healthy ({result.detail}), serving "
                            f"{len(listed)} model(s)"
                        )
                        break
                    if time.monotonic() > deadline:
                        raise OlladistError(
                            f"gateway of {node.name}: {result.detail}",
                            hint=f"see {self.node_root(node.name) / 'var/log/olladist'}",
                        )
                    time.sleep(0.2)

    def share_peer_secret(self, spec: Spec) -> None:
        """Every node of a cluster needs the same peer secret (node-local, never in git)."""
        first = write_peer_secret(Layout(self.node_root(spec.nodes[0].name)))
        for node in spec.nodes[1:]:
            target = Layout(self.node_root(node.name)).real(PEER_SECRET_FILE)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(first, target)

    def _save(self) -> None:
        data = {"reconcilers": [p.__dict__ for p in self.procs], "state_dir": str(self.state_dir)}
        (self.state_dir / DEV_RECORD).write_text(json.dumps(data, indent=2))

    def wait_converged(self, spec: Spec, commit: str | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        shown: dict[str, str] = {}
        pending = {n.name for n in spec.nodes}
        while pending:
            for name in sorted(pending):
                proc = next(p for p in self.procs if p.node == name)
                if not proc.alive():
                    raise OlladistError(
                        f"the reconciler of {name} exited",
                        hint=f"see {self.state_dir / 'logs' / (name + '.log')}",
                    )
                status = State(Layout(self.node_root(name))).status() or {}
                line = _progress_line(status, commit)
                if line != shown.get(name):
                    shown[name] = line
                    self.say(f"  {name}: {line}")
                if line == "converged":
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise OlladistError(
                    f"not converged after {timeout:.0f}s: {', '.join(sorted(pending))}",
                    hint=f"see the logs in {self.state_dir / 'logs'} and `olladist status "
                    f"--root {self.node_root(sorted(pending)[0])}`",
                )
            time.sleep(0.2)

    def down(self) -> None:
        procs = self.procs or _record(self.state_dir)
        # First, so that a foreground `olladist dev` watching the record knows at once that
        # this stop is on purpose (and stops too), not a reconciler dying on its own.
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / DEV_RECORD).unlink()
        for p in procs:
            if p.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in procs:
            while p.alive() and time.monotonic() < deadline:
                for child in self._popen:
                    child.poll()
                time.sleep(0.05)
            if p.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        for child in self._popen:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
        # Each reconciler stops its own services; make sure, by their records, by PID.
        nodes = self.state_dir / "nodes"
        if nodes.is_dir():
            for root in sorted(nodes.iterdir()):
                LocalRuntime(Layout(root), stop_timeout=5).stop_all()


def _progress_line(status: dict[str, Any], commit: str | None) -> str:
    if not status:
        return "starting"
    if status.get("attempted_error"):
        return f"commit refused: {status['attempted_error']}"
    errors = status.get("errors") or []
    drift = status.get("drift") or []
    applied = status.get("applied_commit")
    if applied and commit in (None, applied) and status.get("ok") and not drift:
        return "converged"
    if errors:
        return f"error: {errors[0]['message']} (retrying)"
    return f"converging ({len(drift)} action(s) left)"
