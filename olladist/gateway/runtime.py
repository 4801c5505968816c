"""A small client for HAProxy's runtime API over unix sockets.

Two sockets: the worker's stats socket (``level admin``, ``/run/olladist/gateway/admin.sock``)
for server states and stats, and the master socket (``master.sock``) for ``show proc``.
Reloads go through the gateway unit's ExecReload (``haproxy -c``, then SIGUSR2 to the master),
run by the node's runtime, never through this socket. Each command opens a connection, sends
one line, half-closes and reads to EOF; HAProxy answers and closes (the master socket only
closes once it sees our half-close).

Parsers are pure functions of the text HAProxy prints, tested on captured output.
"""

from __future__ import annotations

import csv
import io
import re
import socket
import time
from dataclasses import dataclass
from enum import IntEnum, IntFlag, StrEnum
from pathlib import Path

from olladist.errors import ToolError
from olladist.files import write_atomic


class OpState(IntEnum):
    """``srv_op_state`` in ``show servers state``."""

    STOPPED = 0
    STARTING = 1
    RUNNING = 2
    STOPPING = 3


class AdminFlag(IntFlag):
    """``srv_admin_state`` bits: F = forced on this server, I = inherited from a tracked one."""

    FMAINT = 0x01
    IMAINT = 0x02
    CMAINT = 0x04  # disabled in the configuration
    FDRAIN = 0x08
    IDRAIN = 0x10
    RMAINT = 0x20  # DNS resolution failed
    HMAINT = 0x40  # maintenance set through the server's address


class AdminState(StrEnum):
    """What ``set server BE/SRV state`` accepts."""

    READY = "ready"
    DRAIN = "drain"
    MAINT = "maint"


@dataclass(frozen=True)
class ServerState:
    backend: str
    server: str
    address: str
    port: int
    op_state: OpState
    admin: AdminFlag
    weight: int

    @property
    def maintenance(self) -> bool:
        return bool(self.admin & (AdminFlag.FMAINT | AdminFlag.IMAINT | AdminFlag.CMAINT))

    @property
    def draining(self) -> bool:
        return bool(self.admin & (AdminFlag.FDRAIN | AdminFlag.IDRAIN))

    @property
    def serving(self) -> bool:
        """Takes new requests: running, not in maintenance, not draining."""
        return self.op_state == OpState.RUNNING and not self.maintenance and not self.draining


@dataclass(frozen=True)
class ServerStat:
    backend: str
    server: str
    status: str  # UP, DOWN, MAINT, DRAIN, "UP 1/2", "no check", ...
    current_sessions: int
    queued: int
    total_sessions: int
    check_status: str


@dataclass(frozen=True)
class ProcInfo:
    master_pid: int
    reloads: int
    failed_reloads: int
    worker_pids: tuple[int, ...]


def parse_servers_state(text: str) -> list[ServerState]:
    """Parse ``show servers state`` (format version 1)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or lines[0].strip() != "1":
        raise ToolError(f"unexpected `show servers state` output: {text[:200]!r}")
    header: list[str] = []
    out = []
    for line in lines[1:]:
        if line.startswith("#"):
            header = line.lstrip("# ").split()
            continue
        row = dict(zip(header, line.split(), strict=False))
        out.append(
            ServerState(
                backend=row["be_name"],
                server=row["srv_name"],
                address=row["srv_addr"],
                port=int(row["srv_port"]),
                op_state=OpState(int(row["srv_op_state"])),
                admin=AdminFlag(int(row["srv_admin_state"])),
                weight=int(row["srv_uweight"]),
            )
        )
    return out


def parse_stat(text: str) -> list[ServerStat]:
    """Parse ``show stat`` CSV; only server rows (not FRONTEND/BACKEND totals)."""
    body = text.lstrip("# ")
    out = []
    for row in csv.DictReader(io.StringIO(body)):
        name = row.get("svname") or ""
        if name in ("FRONTEND", "BACKEND", ""):
            continue

        def num(key: str, r: dict[str, str] = row) -> int:
            return int(r.get(key) or 0)

        out.append(
            ServerStat(
                backend=row["pxname"],
                server=name,
                status=row["status"],
                current_sessions=num("scur"),
                queued=num("qcur"),
                total_sessions=num("stot"),
                check_status=row.get("check_status") or "",
            )
        )
    return out


_PROC_LINE = re.compile(r"^(\d+)\s+(master|worker)\s+(\d+)(?:\s+\[failed:\s*(\d+)\])?")


def parse_show_proc(text: str) -> ProcInfo:
    master: tuple[int, int, int] | None = None
    workers: list[int] = []
    for line in text.splitlines():
        m = _PROC_LINE.match(line.strip())
        if not m:
            continue
        if m.group(2) == "master":
            master = (int(m.group(1)), int(m.group(3)), int(m.group(4) or 0))
        else:
            workers.append(int(m.group(1)))
    if master is None:
        raise ToolError(f"unexpected `show proc` output: {text[:200]!r}")
    return ProcInfo(master[0], master[1], master[2], tuple(workers))


class HAProxyRuntime:
    """Runtime API of one HAProxy (master-worker). Socket errors become ``ToolError``."""

    def __init__(
        self,
        admin_socket: Path,
        master_socket: Path | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.admin_socket = admin_socket
        self.master_socket = master_socket
        self.timeout = timeout

    def _send(self, path: Path, command: str, attempts: int = 1, delay: float = 0.1) -> str:
        if "\n" in command or ";" in command:
            raise ValueError(f"one command at a time, without newline or ';': {command!r}")
        last: OSError | None = None
        for i in range(attempts):
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(self.timeout)
                    s.connect(str(path))
                    s.sendall(command.encode() + b"\n")
                    s.shutdown(socket.SHUT_WR)
                    chunks = []
                    while chunk := s.recv(65536):
                        chunks.append(chunk)
                return b"".join(chunks).decode(errors="replace")
            except OSError as exc:
                # Both sockets refuse for a moment while HAProxy reloads.
                last = exc
                if i + 1 < attempts:
                    time.sleep(delay)
        raise ToolError(
            f"HAProxy runtime socket {path}: {command!r} failed: {last}",
            hint="is olladist-gateway running? see `olladist status`",
        ) from last

    def command(self, command: str, attempts: int = 20) -> str:
        return self._send(self.admin_socket, command, attempts)

    def worker_pid(self) -> int | None:
        """The PID of the worker that answers on the admin socket (``show info``): after a
        reload it changes once the new worker serves. None when the line is missing."""
        m = re.search(r"^Pid:\s*(\d+)", self.command("show info", attempts=1), re.M)
        return int(m.group(1)) if m else None

    def servers_state(self) -> list[ServerState]:
        return parse_servers_state(self.command("show servers state"))

    def stats(self) -> list[ServerStat]:
        return parse_stat(self.command("show stat"))

    def set_state(self, backend: str, server: str, state: AdminState) -> None:
        """Drain (finish what runs, take nothing new), ready, or maintenance. On a server other
        backends ``track``, the state spreads to them."""
        out = self.command(f"set server {backend}/{server} state {state}").strip()
        if out:
            raise ToolError(f"set server {backend}/{server} state {state}: {out}")

    def save_server_state(self, target: Path) -> None:
        """Write ``show servers state`` where ``server-state-file`` points, so that a reload
        keeps drained servers drained and dead ones down until their checks pass."""
        text = self.command("show servers state")
        parse_servers_state(text)  # refuse to write anything HAProxy would not read back
        write_atomic(target, text.encode(), 0o600)

    def _master(self, command: str, attempts: int = 50) -> str:
        if self.master_socket is None:
            raise ToolError("no HAProxy master socket configured")
        return self._send(self.master_socket, command, attempts)

    def processes(self) -> ProcInfo:
        return parse_show_proc(self._master("show proc"))
