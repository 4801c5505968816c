"""Convergence benchmark on the example spec (3 nodes, 6 simulator instances, 4 models):

- commit-to-converged with a git source (the dev repository, read from its path and over HTTP
  from `python -m dulwich.web` on 127.0.0.1), and edit-to-converged with a plain directory
  source (watched), each for a change that adds a model;
- the no-op reconcile: a tick with nothing to do (the daemon's own timing, and `olladist diff`).

Prints one table comparing them. Run: .venv/bin/python bench/converge_bench.py [--runs 3]
Bounded: every wait has a timeout; every process is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from olladist.dev import DevCluster, ensure_repo
from tests.harness.gitserver import serve_git_http

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "cluster-spec"
EXTRA = ["gemma2:2b", "mistral:7b", "phi3:mini", "tinyllama", "all-minilm", "qwen2.5:7b"]


def status(root: Path) -> dict[str, object]:
    try:
        data: dict[str, object] = json.loads((root / "var/lib/olladist/status.json").read_text())
        return data
    except (FileNotFoundError, ValueError):
        return {}


def wait_all(cluster: DevCluster, nodes: list[str], pred, timeout: float = 60.0) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not all(pred(status(cluster.node_root(n))) for n in nodes):
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - start


def add_model(spec_dir: Path, name: str) -> None:
    with (spec_dir / "cluster.yaml").open("a") as f:
        f.write(f"  - {{name: '{name}', replicas: 1}}\n")


def run(mode: str, runs: int) -> tuple[list[float], list[float]]:
    """``mode``: git (the dev repository's path), http (the same repository over HTTP) or dir."""
    base = Path(tempfile.mkdtemp(prefix="od-bench-"))
    spec_dir = base / "spec"
    shutil.copytree(EXAMPLE, spec_dir)
    repo = base / "dev" / "repo"
    with contextlib.ExitStack() as stack:
        source = str(spec_dir) if mode == "dir" else None
        if mode == "http":
            ensure_repo(spec_dir, repo)
            server = stack.enter_context(serve_git_http(repo, base / "git-http.log"))
            source = server.url
        try:
            return _run(mode, runs, base, spec_dir, repo, source=source)
        finally:
            shutil.rmtree(base, ignore_errors=True)


def _run(
    mode: str, runs: int, base: Path, spec_dir: Path, repo: Path, *, source: str | None
) -> tuple[list[float], list[float]]:
    cluster = DevCluster(spec_dir, base / "dev", interval=30.0, out=io.StringIO(), source=source)
    converge, noop = [], []
    try:
        spec = cluster.up(timeout=120)
        nodes = [n.name for n in spec.nodes]
        for k in range(runs):
            target = spec_dir if mode == "dir" else repo
            previous = {n: status(cluster.node_root(n)).get("applied_commit") for n in nodes}
            add_model(target, EXTRA[k % len(EXTRA)])
            if mode != "dir":
                subprocess.run(
                    [
                        "git",
                        "-C",
                        str(repo),
                        "-c",
                        "user.name=b",
                        "-c",
                        "user.email=b@b",
                        "commit",
                        "-qam",
                        f"add model {k}",
                    ],
                    check=True,
                )
                # The dev reconcilers poll; SIGHUP is what a post-receive hook would send.
                head = subprocess.run(
                    ["git", "-C", str(repo), "rev-parse", "HEAD"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()
                t0 = time.monotonic()
                for p in cluster.procs:
                    os.kill(p.pid, 1)
                wait_all(
                    cluster,
                    nodes,
                    lambda s, h=head: (
                        s.get("applied_commit") == h and not s.get("drift") and s.get("ok")
                    ),
                )
                converge.append(time.monotonic() - t0)
            else:
                t0 = time.monotonic()
                wait_all(
                    cluster,
                    nodes,
                    lambda s, p=previous: (
                        s.get("ok")
                        and not s.get("drift")
                        and s.get("applied_commit") not in (None, p[s.get("node")])
                    ),
                )
                converge.append(time.monotonic() - t0)
        # A no-op tick: SIGHUP with nothing changed; the daemon's own measure of the tick.
        for _ in range(runs):
            before = {n: status(cluster.node_root(n)).get("runs", 0) for n in nodes}
            for p in cluster.procs:
                os.kill(p.pid, 1)
            wait_all(cluster, nodes, lambda s, b=before: s.get("runs", 0) > 0)
            time.sleep(0.5)
            noop += [float(status(cluster.node_root(n)).get("duration_s", 0)) for n in nodes]
    finally:
        cluster.down()
    return converge, noop


def diff_time(runs: int) -> list[float]:
    base = Path(tempfile.mkdtemp(prefix="od-bench-"))
    cluster = DevCluster(EXAMPLE, base / "dev", interval=30.0, out=io.StringIO())
    out = []
    try:
        spec = cluster.up(timeout=120)
        root = cluster.node_root(spec.nodes[0].name)
        for _ in range(runs):
            t0 = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "olladist", "diff", "--root", str(root)],
                check=True,
                capture_output=True,
            )
            out.append(time.monotonic() - t0)
    finally:
        cluster.down()
        shutil.rmtree(base, ignore_errors=True)
    return out


def fmt(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"median {statistics.median(xs):.3f}s  max {max(xs):.3f}s  (n={len(xs)})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    git_conv, git_noop = run("git", args.runs)
    http_conv, _ = run("http", args.runs)
    dir_conv, _ = run("dir", args.runs)
    diffs = diff_time(args.runs)
    print("example spec: 3 nodes x 2 olladist-sim instances, change = add one model")
    print(f"{'measure':<58} result")
    print(f"{'commit-to-converged, git source (SIGHUP, all 3 nodes)':<58} {fmt(git_conv)}")
    print(f"{'commit-to-converged, git over HTTP (SIGHUP, all 3 nodes)':<58} {fmt(http_conv)}")
    print(f"{'edit-to-converged, local dir source (watched, all 3)':<58} {fmt(dir_conv)}")
    print(f"{'no-op reconcile tick (daemon, per node)':<58} {fmt(git_noop)}")
    print(f"{'olladist diff, no drift (whole command, incl. startup)':<58} {fmt(diffs)}")


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    # SIGTERM (bench/run's section budget) unwinds like Ctrl-C: every process is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    main()
