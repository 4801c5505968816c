"""Run olladist-sim as a child process: for tests, benchmarks and one-machine dev clusters.

    with start_sim(tmp_path, {"OLLAMA_NUM_PARALLEL": "4"}) as sim:
        httpx.get(sim.url + "/api/tags")

The child binds the given host with port 0 unless told otherwise and names the port the kernel
chose on stderr, so parallel sessions never race for a port. Stopping is by PID: SIGTERM, then
SIGKILL after a timeout.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from olladist.sim.errors import SimError

_LISTENING = re.compile(r"Listening on (\S+):(\d+) ")


@dataclass
class SimProcess:
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    models_dir: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait, SIGKILL if it will not go; return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        return self.proc.returncode

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_sim(
    workdir: Path,
    env: Mapping[str, str] | None = None,
    *,
    models_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    timeout: float = 20.0,
) -> SimProcess:
    """Start ``python -m olladist.sim serve``; return once it listens (or raise SimError)."""
    models = models_dir or workdir / "models"
    full_env = {
        **os.environ,
        "OLLAMA_HOST": f"{host}:{port}",
        "OLLAMA_MODELS": str(models),
        **(env or {}),
    }
    return _spawn(
        workdir, ["serve"], env=full_env, directory=models, host=host, port=port, timeout=timeout
    )


def start_registry(
    workdir: Path,
    *,
    models: Sequence[str] = (),
    rate: str | None = None,
    plain: bool = False,
    token: str | None = None,
    host: str = "127.0.0.1",
    timeout: float = 20.0,
) -> SimProcess:
    """Start ``olladist-sim registry`` on a free loopback port, its files in workdir/registry.

    ``models`` are ``name=size`` items generated at start; ``url`` is then the registry's base
    for OLLADIST_SIM_REGISTRY, and ``models_dir`` its directory.
    """
    directory = workdir / "registry"
    args = ["registry", "--host", host, "--port", "0", "--dir", str(directory)]
    for item in models:
        args += ["--model", item]
    if rate:
        args += ["--rate", rate]
    if plain:
        args.append("--plain")
    if token:
        args += ["--token", token]
    return _spawn(
        workdir, args, env=dict(os.environ), directory=directory, host=host, port=0, timeout=timeout
    )


def _spawn(
    workdir: Path,
    args: list[str],
    *,
    env: dict[str, str],
    directory: Path,
    host: str,
    port: int,
    timeout: float,
) -> SimProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"olladist-sim-{args[0]}-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "olladist.sim", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = _LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return SimProcess(proc, match.group(1), int(match.group(2)), directory, log_path)
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    sim = SimProcess(proc, host, port, directory, log_path)
    sim.stop()
    raise SimError(f"olladist-sim {args[0]} did not start; its log:\n{sim.log()}")
