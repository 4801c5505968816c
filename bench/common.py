"""Helpers shared by the bench scripts: a wrk runner, process CPU and RSS, machine facts."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Sent to every path; LiteLLM's proxy refuses to start without a master key, the others ignore it.
API_KEY = "sk-olladist-bench"
GENERATE = {"model": "m", "prompt": "hi", "stream": False}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    workdir: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_proc(self.proc)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def stop_proc(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def wait_port(host: str, port: int, timeout: float = 15.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"{host}:{port} did not open within {timeout}s")


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


_WRK_LUA = """wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


def _lua_str(s: str) -> str:
    return "[==[" + s + "]==]"


def _ms(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)$", value)
    if not m:
        raise ValueError(value)
    v = float(m.group(1))
    return {"us": v / 1000, "ms": v, "s": v * 1000}[m.group(2)]


def wrk(
    url: str, conns: int, seconds: float, body: dict[str, object], threads: int = 1
) -> WrkResult:
    """Run wrk (Debian package `wrk`) against ``url``: a POST of ``body`` on keep-alive
    connections; req/s and the latency percentiles wrk reports."""
    exe = shutil.which("wrk")
    if exe is None:
        raise RuntimeError("wrk not found: apt-get install wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_WRK_LUA.format(body=_lua_str(json.dumps(body)), key=API_KEY))
        script = f.name
    try:
        out = subprocess.run(
            [
                exe,
                f"-t{min(threads, conns)}",
                f"-c{conns}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "-s",
                script,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(script)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    n = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errs = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errs += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errs += sum(int(x) for x in m.groups())
    return WrkResult(rps, p50, p99, n, errs)


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (and their threads), in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def machine() -> dict[str, str]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = rss = "?"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = f"{int(line.split()[1]) // 1024} MiB"
    del rss
    hap = subprocess.run(["haproxy", "-v"], capture_output=True, text=True, check=False)
    load = Path("/proc/loadavg").read_text().split()[:3]
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "kernel": os.uname().release,
        "haproxy": hap.stdout.split("\n", 1)[0].removeprefix("HAProxy version ").split(" ")[0],
        "load": " ".join(load),
    }
