"""Clients that keep requests going through every gateway while a test changes the cluster:
streaming generates (embeds for embedding models), each failure kept with its time and gateway.

The issue's load for rollouts is 100 streaming clients spread over all gateways; each client is
a thread with its own keep-alive connection, so a request cut by a gateway shows as a failure.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Sequence

import httpx

from tests.e2e.cluster import Cluster

STREAMING_CLIENTS = 100


class Clients:
    """``n`` clients, client k on gateway k mod nodes asking for ``models[k mod len]``, until
    the block ends; ``done`` counts answers, ``failures`` lists what failed, by model."""

    def __init__(self, cluster: Cluster, models: Sequence[str], n: int = STREAMING_CLIENTS) -> None:
        self.cluster, self.models, self.n = cluster, list(models), n
        self.stop = threading.Event()
        self.failures: dict[str, list[str]] = {}
        self.done = 0
        self.lock = threading.Lock()
        self.pool = concurrent.futures.ThreadPoolExecutor(n)
        self.futures: list[concurrent.futures.Future[None]] = []

    @staticmethod
    def _one(c: httpx.Client, base: str, model: str) -> None:
        if model.startswith("nomic"):
            r = c.post(f"{base}/api/embed", json={"model": model, "input": "x"})
            if r.status_code != 200 or not r.json().get("embeddings"):
                raise AssertionError(f"{r.status_code} {r.text[:200]}")
            return
        with c.stream("POST", f"{base}/api/generate", json={"model": model, "prompt": "x"}) as r:
            if r.status_code != 200:
                r.read()
                raise AssertionError(f"{r.status_code} {r.text[:200]}")
            last = [line for line in r.iter_lines() if line][-1]
            if '"done":true' not in last:
                raise AssertionError(f"stream ended early: {last[:200]}")

    def _loop(self, k: int) -> None:
        base = self.cluster.gateway(k % len(self.cluster.nodes))
        model = self.models[k % len(self.models)]
        with httpx.Client(timeout=60, trust_env=False) as c:
            while not self.stop.is_set():
                try:
                    self._one(c, base, model)
                    with self.lock:
                        self.done += 1
                except Exception as exc:  # every failure counts, whatever its kind
                    with self.lock:
                        self.failures.setdefault(model, []).append(
                            f"{time.strftime('%H:%M:%S')} {base}: {exc!r}"
                        )

    def __enter__(self) -> Clients:
        self.futures = [self.pool.submit(self._loop, k) for k in range(self.n)]
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for f in self.futures:
            f.result()
        self.pool.shutdown()
