"""Real olladist-sim processes on 127.0.0.1, on a port the kernel picks (see
olladist.sim.process); every one is stopped by PID when its test ends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import httpx
import pytest

from olladist.sim.process import SimProcess, start_sim

# Fast defaults so tests spend little wall time: a 1.3 GB model loads in 13 ms.
FAST_ENV = {
    "OLLADIST_SIM_LOAD_GBPS": "100",
    "OLLADIST_SIM_PULL_GBPS": "200",
    "OLLADIST_SIM_TOKEN_RATE": "2000",
    "OLLADIST_SIM_PROMPT_RATE": "100000",
}


class Sim(SimProcess):
    """A simulator process plus the small HTTP helpers tests use."""

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def pull(self, model: str) -> None:
        with self.client() as c:
            r = c.post("/api/pull", json={"model": model, "stream": False})
            assert r.status_code == 200, r.text
            assert r.json() == {"status": "success"}

    def stats(self) -> dict[str, object]:
        with self.client() as c:
            data: dict[str, object] = c.get("/_sim/stats").json()
            return data

    def log_text(self) -> str:
        return self.log()


def start(workdir: Path, env: dict[str, str] | None, models_dir: Path | None) -> Sim:
    started = start_sim(workdir, {**FAST_ENV, **(env or {})}, models_dir=models_dir)
    return Sim(started.proc, started.host, started.port, started.models_dir, started.log_path)


class SimFactory(Protocol):
    def __call__(
        self, env: dict[str, str] | None = None, models_dir: Path | None = None
    ) -> Sim: ...


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[SimFactory]:
    started: list[Sim] = []

    def factory(env: dict[str, str] | None = None, models_dir: Path | None = None) -> Sim:
        sim = start(tmp_path / f"sim{len(started)}", env, models_dir)
        started.append(sim)
        return sim

    try:
        yield factory
    finally:
        for sim in started:
            sim.stop()


@pytest.fixture
def sim(sim_factory: SimFactory) -> Sim:
    return sim_factory()
