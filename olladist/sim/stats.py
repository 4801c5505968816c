"""Counters the simulator exposes at GET /_sim/stats, for tests and routing benchmarks."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Routes that run a model (and so take one of a runner's slots, or wait for one): the
# requests a gateway's admission must never send more of at once than num_parallel.
INFERENCE_ROUTES = frozenset(
    {
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
    }
)


@dataclass
class SimStats:
    requests: int = 0
    requests_by_route: Counter[str] = field(default_factory=Counter)
    responses_by_status: Counter[int] = field(default_factory=Counter)
    cold_loads: Counter[str] = field(default_factory=Counter)
    evictions: Counter[str] = field(default_factory=Counter)
    unloads: Counter[str] = field(default_factory=Counter)
    reloads: Counter[str] = field(default_factory=Counter)  # runner options changed
    pulls: Counter[str] = field(default_factory=Counter)
    queue_full: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    # Inference requests only (INFERENCE_ROUTES), running or waiting inside the simulator:
    # health checks and polls of /api/tags or /api/ps are not counted.
    inference_in_flight: int = 0
    peak_inference_in_flight: int = 0

    def request_started(self, route: str) -> None:
        self.requests += 1
        self.requests_by_route[route] += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        if route in INFERENCE_ROUTES:
            self.inference_in_flight += 1
            self.peak_inference_in_flight = max(
                self.peak_inference_in_flight, self.inference_in_flight
            )

    def request_finished(self, status: int, route: str = "") -> None:
        self.in_flight -= 1
        self.responses_by_status[status] += 1
        if route in INFERENCE_ROUTES:
            self.inference_in_flight -= 1

    def reset(self) -> None:
        in_flight, inference = self.in_flight, self.inference_in_flight
        fresh = SimStats()
        self.__dict__.update(fresh.__dict__)
        self.in_flight = self.peak_in_flight = in_flight
        self.inference_in_flight = self.peak_inference_in_flight = inference

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "requests_by_route": dict(self.requests_by_route),
            "responses_by_status": {str(k): v for k, v in self.responses_by_status.items()},
            "cold_loads": sum(self.cold_loads.values()),
            "cold_loads_by_model": dict(self.cold_loads),
            "evictions": sum(self.evictions.values()),
            "evictions_by_model": dict(self.evictions),
            "unloads_by_model": dict(self.unloads),
            "reloads_by_model": dict(self.reloads),
            "pulls": sum(self.pulls.values()),
            "pulls_by_model": dict(self.pulls),
            "queue_full": self.queue_full,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "inference_in_flight": self.inference_in_flight,
            "peak_inference_in_flight": self.peak_inference_in_flight,
        }
