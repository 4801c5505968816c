"""A git repository served over HTTP on 127.0.0.1 by `python -m dulwich.web`, for tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.harness.ports import free_port


@dataclass
class HttpServer:
    url: str
    log: Path

    def upload_pack_posts(self) -> int:
        """How many fetches (POST git-upload-pack) the server has answered."""
        return sum(
            1 for line in self.log.read_text().splitlines() if "POST /git-upload-pack" in line
        )


def wait_listening(
    port: int, proc: subprocess.Popen[bytes], why: Callable[[], str], timeout: float = 10.0
) -> None:
    """Wait until 127.0.0.1:port accepts connections; fail with ``why()`` if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(why()) from None
            time.sleep(0.05)


@contextmanager
def serve_git_http(repo: Path, log: Path) -> Iterator[HttpServer]:
    """Serve ``repo`` on a free port; the server is stopped by PID on exit."""
    port = free_port()
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dulwich.web", "-l", "127.0.0.1", "-p", str(port), str(repo)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_listening(port, proc, lambda: f"dulwich.web did not start: {log.read_text()}")
        yield HttpServer(f"http://127.0.0.1:{port}/", log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
