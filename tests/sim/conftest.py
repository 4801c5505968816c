"""Real olladist-sim processes on 127.0.0.1, on a port the kernel picks (see
olladist.sim.process); every one is stopped by PID when its test ends."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from olladist.sim.process import SimProcess, start_registry, start_sim

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


class Registry(SimProcess):
    """A test registry process (olladist-sim registry) plus its admin helpers."""

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(self.url + "/_registry/stats", timeout=10).json()
        return data

    def model(self, name: str) -> dict[str, Any]:
        models = httpx.get(self.url + "/_registry/models", timeout=30).json()["models"]
        (found,) = [m for m in models if m["name"] == name]
        return found  # type: ignore[no-any-return]

    def faults(self, **faults: object) -> None:
        r = httpx.post(self.url + "/_registry/faults", json=faults, timeout=10)
        assert r.status_code == 200, r.text


class RegistryFactory(Protocol):
    def __call__(
        self, models: Sequence[str] = ..., *, plain: bool = ..., token: str | None = ...
    ) -> Registry: ...


@pytest.fixture
def registry_factory(tmp_path: Path) -> Iterator[RegistryFactory]:
    started: list[Registry] = []

    def factory(
        models: Sequence[str] = ("tiny=3MB",), *, plain: bool = False, token: str | None = None
    ) -> Registry:
        p = start_registry(tmp_path / f"reg{len(started)}", models=models, plain=plain, token=token)
        reg = Registry(p.proc, p.host, p.port, p.models_dir, p.log_path)
        started.append(reg)
        return reg

    try:
        yield factory
    finally:
        for reg in started:
            reg.stop()


@pytest.fixture
def registry(registry_factory: RegistryFactory) -> Registry:
    return registry_factory()
