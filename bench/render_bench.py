"""Render benchmark: a 1,000-node spec with 8 instances a node.

Prints, side by side, the time and peak memory of: loading and validating the spec, placement,
rendering one node, rendering every node, and validating one node's render with the real
validators. Run: .venv/bin/python bench/render_bench.py [--nodes 1000] [--instances 8]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from olladist.layout import Layout
from olladist.nodeconfig import write_peer_secret
from olladist.placement import place
from olladist.render import render_node
from olladist.specload import load_spec
from olladist.validators import validate_render


def write_spec(root: Path, n_nodes: int, n_inst: int, n_models: int) -> None:
    (root / "nodes").mkdir(parents=True)
    (root / "cluster.yaml").write_text(
        "cluster: bench\nollama: {binary: "
        + sys.executable
        + "}\nmodels:\n"
        + "".join(
            f"  - {{name: 'model-{j}:7b', replicas: 3, size_gb: 4.5, "
            f"preload: {str(j % 5 == 0).lower()}}}\n"
            for j in range(n_models)
        )
        + "  - {name: nomic-embed-text, nodes: all, size_gb: 0.3}\n"
    )
    for i in range(n_nodes):
        lines = [
            f"name: node-{i:04d}",
            f"address: 10.{i // 65536}.{i // 256 % 256}.{i % 256}",
            f"labels: {{gpu: {'h100' if i % 3 == 0 else 'l40s'}}}",
            "capacity: {vram_gb: 80, disk_gb: 2000}",
            "instances:",
        ]
        lines += [
            f"  - {{name: gpu{k}, port: {11435 + k}, gpus: ['{k}'], num_parallel: 4}}"
            for k in range(n_inst)
        ]
        (root / "nodes" / f"node-{i:04d}.yaml").write_text("\n".join(lines) + "\n")


def measure(fn: Callable[[], Any], memory: bool = True) -> tuple[Any, float, float | None]:
    """Time one run of ``fn`` as it is, then its peak Python heap in a second run under
    tracemalloc (which slows Python several times, so the two are never mixed)."""
    gc.collect()
    t0 = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - t0
    if not memory:
        return result, elapsed, None
    gc.collect()
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, elapsed, peak / 2**20


def render_each(spec: Any, placement: Any) -> int:
    """Every node renders its own files; nothing is kept, as on a real cluster."""
    n = 0
    for node in spec.nodes:
        n += len(render_node(spec, node.name, placement))
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--models", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec_dir = Path(tmp) / "spec"
        write_spec(spec_dir, args.nodes, args.instances, args.models)
        rows = []
        spec, t, m = measure(lambda: load_spec(spec_dir))
        rows.append(("load + validate spec (incl. placement check)", t, m))
        placement, t, m = measure(lambda: place(spec))
        rows.append(("placement", t, m))
        files, t, m = measure(lambda: render_node(spec, "node-0000", placement))
        rows.append((f"render one node ({len(files)} files)", t, m))
        _, t, m = measure(lambda: render_each(spec, placement), memory=False)
        rows.append((f"render every node in turn ({len(spec.nodes)})", t, m))
        live = Layout(Path(tmp) / "live")
        write_peer_secret(live)
        _, t, m = measure(
            lambda: validate_render(
                lambda layout: render_node(spec, "node-0000", placement, layout), live=live
            ),
        )
        rows.append(("validate one node (haproxy -c, systemd-analyze)", t, m))
    print(f"spec: {args.nodes} nodes x {args.instances} instances, {args.models + 1} models")
    print(f"{'step':<52} {'seconds':>9} {'peak MiB (py heap)':>19}")
    for label, t, m in rows:
        mem = "-" if m is None else f"{m:.1f}"
        print(f"{label:<52} {t:>9.3f} {mem:>19}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak RSS: {rss:.0f} MiB (pid {os.getpid()})")


if __name__ == "__main__":
    main()
