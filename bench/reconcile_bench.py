"""Reconcile at scale: the ticks of one node of an N-node spec (8 instances a node, 50 models).

    python bench/reconcile_bench.py [--nodes 100] [--instances 8] [--models 50] [--json]

- load: load and validate the spec, then place it;
- render: render one node's files;
- full tick: what the daemon does for a new commit (load, validate, place, render, validate the
  render with `haproxy -c` and `systemd-analyze verify`, plan against the node's files);
- no-op tick: what it does on an unchanged commit (poll the local directory source, which
  hashes the spec files; desired state kept; observe the node's files, plan).
Peak RSS is this process's (run one size per process for a clean figure).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

# Run as `python bench/NAME.py` from a fresh clone: the repository root is not on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.render_bench import write_spec
from olladist.layout import Layout
from olladist.nodeconfig import write_peer_secret
from olladist.placement import place
from olladist.reconcile import execute, full_plan, load_desired
from olladist.render import render_node
from olladist.runtime import FilesOnly
from olladist.source.local import DirSource
from olladist.specload import load_spec
from olladist.state import State


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss, which keeps the parent's peak across
    fork and exec: bench/run starts this after sections that held gigabytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--models", type=int, default=50)
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="olladist-reconcile-bench-") as tmp:
        spec_dir = Path(tmp) / "spec"
        # write_spec adds one embedding model on every node to the chat models it is asked for.
        write_spec(spec_dir, args.nodes, args.instances, args.models - 1)
        layout = Layout(Path(tmp) / "node")
        write_peer_secret(layout)
        node = "node-0000"

        t0 = time.perf_counter()
        spec = load_spec(spec_dir)
        placement = place(spec)
        load_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        render_node(spec, node, placement, layout)
        render_s = time.perf_counter() - t0

        runtime = FilesOnly(layout)
        state = State(layout)
        t0 = time.perf_counter()
        desired = load_desired(spec_dir, node, layout, "c1")
        full_plan(desired, layout, state, runtime)
        full_s = time.perf_counter() - t0

        # Apply it (files and unit enablement; nothing runs), so the next ticks are no-ops.
        execute(full_plan(desired, layout, state, runtime), desired, layout, state, runtime)
        source = DirSource(spec_dir)
        commit = source.poll().commit
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            assert source.poll(accepted=commit).commit == commit  # the spec did not change
            p = full_plan(desired, layout, state, runtime)
            runs.append(time.perf_counter() - t0)
        assert not p.drift, p.actions
        noop_s = sorted(runs)[len(runs) // 2]
    result = {
        "nodes": args.nodes,
        "load_s": load_s,
        "render_s": render_s,
        "full_s": full_s,
        "noop_s": noop_s,
        "peak_rss_mib": peak_rss_mib(),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"spec: {args.nodes} nodes x {args.instances} instances, {args.models} models")
    for k, v in result.items():
        print(f"{k:<14} {v:.3f}" if isinstance(v, float) else f"{k:<14} {v}")


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    # SIGTERM (bench/run's section budget) unwinds like Ctrl-C: every process is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    main()
