"""Start real olladist-sim processes on 127.0.0.1 with a port the kernel picks.

The simulator binds OLLAMA_HOST=127.0.0.1:0 and names its port on stderr ("Listening on
HOST:PORT"), so parallel test sessions never race for a port. Every process is stopped by PID.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
import pytest

LISTENING = re.compile(r"Listening on ([0-9.]+):(\d+)")

# Fast defaults so tests spend little wall time: a 1.3 GB model loads in 13 ms.
FAST_ENV = {
    "OLLADIST_SIM_LOAD_GBPS": "100",
    "OLLADIST_SIM_PULL_GBPS": "200",
    "OLLADIST_SIM_TOKEN_RATE": "2000",
    "OLLADIST_SIM_PROMPT_RATE": "100000",
}


@dataclass
class Sim:
    proc: subprocess.Popen[bytes]
    port: int
    models_dir: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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
        return self.log.read_text(errors="replace")


def start_sim(
    workdir: Path, env: dict[str, str] | None = None, models_dir: Path | None = None
) -> Sim:
    workdir.mkdir(parents=True, exist_ok=True)
    models = models_dir or workdir / "models"
    log = workdir / f"sim-{time.monotonic_ns()}.log"
    full_env = {
        **os.environ,
        **FAST_ENV,
        "OLLAMA_HOST": "127.0.0.1:0",
        "OLLAMA_MODELS": str(models),
        **(env or {}),
    }
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "olladist.sim", "serve"],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        match = LISTENING.search(log.read_text(errors="replace"))
        if match:
            return Sim(proc, int(match.group(2)), models, log)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop_sim(proc)
    raise AssertionError(f"simulator did not start:\n{log.read_text(errors='replace')}")


def stop_sim(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


class SimFactory(Protocol):
    def __call__(
        self, env: dict[str, str] | None = None, models_dir: Path | None = None
    ) -> Sim: ...


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[SimFactory]:
    started: list[Sim] = []

    def factory(env: dict[str, str] | None = None, models_dir: Path | None = None) -> Sim:
        sim = start_sim(tmp_path / f"sim{len(started)}", env, models_dir)
        started.append(sim)
        return sim

    try:
        yield factory
    finally:
        for sim in started:
            stop_sim(sim.proc)


@pytest.fixture
def sim(sim_factory: SimFactory) -> Sim:
    return sim_factory()
