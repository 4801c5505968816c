"""The local runtime: olladist runs the rendered services itself, for machines without systemd
as PID 1 (containers, dev clusters, CI).

It reads the same rendered units systemd would (``olladist.unitfile``): ExecStartPre/ExecStart,
Environment, ExecReload with ``$MAINPID``, TimeoutStopSec. Each service runs in its own session
(process group); its PID and start time are recorded under ``/run/olladist/local/`` so that any
later olladist process can stop exactly that process, never another one that reused the PID.
``supervise()`` restarts what died (Restart=always, with backoff); ``stop_all()`` stops every
service it knows on shutdown. Logs go to ``/var/log/olladist/UNIT.log`` under the root.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from olladist.errors import ToolError
from olladist.files import write_atomic
from olladist.layout import RUN_DIR, SYSTEMD_DIR, Layout
from olladist.observe import enabled_units
from olladist.runtime import systemctl_offline
from olladist.unitfile import Unit, load_unit

log = logging.getLogger("olladist.runtime.local")

LOG_DIR = "/var/log/olladist"


def proc_starttime(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Field 22, after the parenthesised command name (which may contain spaces).
    fields = stat.rsplit(")", 1)[1].split()
    state = fields[0]
    if state == "Z":
        return None
    return int(fields[19])


@dataclass(frozen=True)
class Running:
    pid: int
    starttime: int

    def alive(self) -> bool:
        return proc_starttime(self.pid) == self.starttime

    @classmethod
    def of(cls, proc: subprocess.Popen[bytes]) -> Running | None:
        """The identity of a child just started (None: it already exited). The child exists
        once Popen returns, so its /proc entry is there unless it died at once."""
        starttime = proc_starttime(proc.pid)
        return None if starttime is None else cls(proc.pid, starttime)


class LocalRuntime:
    name = "local"
    executes = True

    def __init__(self, layout: Layout, stop_timeout: float | None = None) -> None:
        self.layout = layout
        self.run_dir = layout.real(RUN_DIR) / "local"
        self.log_dir = layout.real(LOG_DIR)
        self.unit_dir = layout.real(SYSTEMD_DIR)
        self.stop_timeout = stop_timeout
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._failures: dict[str, tuple[int, float]] = {}  # unit -> (count, next try)

    # -- bookkeeping ------------------------------------------------------------------------

    def _record_path(self, unit: str) -> Path:
        return self.run_dir / f"{unit}.json"

    def running(self, unit: str) -> Running | None:
        try:
            data = json.loads(self._record_path(unit).read_text())
            r = Running(int(data["pid"]), int(data["starttime"]))
        except (FileNotFoundError, ValueError, KeyError):
            return None
        self._reap()
        return r if r.alive() else None

    def _reap(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]

    def known_units(self) -> list[str]:
        if not self.run_dir.is_dir():
            return []
        return sorted(p.name.removesuffix(".json") for p in self.run_dir.glob("*.json"))

    def _unit(self, unit: str) -> tuple[Unit, dict[str, str]]:
        u = load_unit(self.unit_dir, unit)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "LISTEN_"))}
        env.update(u.environment())
        return u, env

    # -- Runtime protocol -------------------------------------------------------------------

    def enable(self, unit: str) -> None:
        systemctl_offline(self.layout, "enable", "--no-reload", unit)

    def disable(self, unit: str) -> None:
        systemctl_offline(self.layout, "disable", "--no-reload", unit)

    def daemon_reload(self) -> None:
        """Units are read afresh at every start; nothing to reload."""

    def start(self, unit: str) -> None:
        if self.running(unit):
            return
        u, env = self._unit(unit)
        for argv in u.commands("ExecStartPre", env):
            self._run_checked(unit, argv, env)
        commands = u.commands("ExecStart", env)
        if len(commands) != 1:
            raise ToolError(f"{unit}: expected one ExecStart=, found {len(commands)}")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        logfile = open(self.log_dir / f"{unit}.log", "ab")  # noqa: SIM115 - child keeps it
        try:
            proc = subprocess.Popen(
                commands[0],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=str(self.layout.root),
            )
        except OSError as exc:
            raise ToolError(f"{unit}: cannot start {commands[0][0]}: {exc.strerror}") from exc
        finally:
            logfile.close()
        self._children[proc.pid] = proc
        running = Running.of(proc)
        if running is None:
            raise ToolError(
                f"{unit}: exited at once (status {proc.poll()})",
                hint=f"see {self.log_dir / (unit + '.log')}",
            )
        record = {"pid": proc.pid, "starttime": running.starttime, "argv": commands[0]}
        write_atomic(self._record_path(unit), json.dumps(record).encode(), 0o644)
        log.info("started %s (pid %d): %s", unit, proc.pid, " ".join(commands[0]))

    def stop(self, unit: str) -> None:
        r = self.running(unit)
        if r is not None:
            timeout = self.stop_timeout
            if timeout is None:
                try:
                    u, _ = self._unit(unit)
                    timeout = _seconds(u.get("Service", "TimeoutStopSec", "10s") or "10s")
                except OSError:
                    timeout = 10.0
            _terminate_group(r, timeout, self._children.pop(r.pid, None))
            log.info("stopped %s (pid %d)", unit, r.pid)
        with contextlib.suppress(FileNotFoundError):
            self._record_path(unit).unlink()
        self._reap()

    def restart(self, unit: str) -> None:
        self.stop(unit)
        self.start(unit)

    def reload(self, unit: str) -> None:
        r = self.running(unit)
        if r is None:
            self.start(unit)
            return
        u, env = self._unit(unit)
        env["MAINPID"] = str(r.pid)
        commands = u.commands("ExecReload", env)
        if not commands:
            self.restart(unit)
            return
        for argv in commands:
            self._run_checked(unit, argv, env)
        log.info("reloaded %s (pid %d)", unit, r.pid)

    # -- supervision ------------------------------------------------------------------------

    def is_active(self, unit: str) -> bool:
        return self.running(unit) is not None

    def why_inactive(self, unit: str) -> str:
        facts = []
        last = _last_line(self.log_dir / f"{unit}.log")
        if last:
            facts.append(f"its log ends: {last}")
        facts.append(f"see {self.log_dir / (unit + '.log')}")
        return "; ".join(facts)

    def supervise(self) -> list[str]:
        """Start every enabled unit that is not running (Restart=always); returns those started.
        A unit that keeps failing is retried with a growing delay, up to a minute."""
        started = []
        now = time.monotonic()
        for unit in sorted(enabled_units(self.layout)):
            if self.running(unit):
                self._failures.pop(unit, None)
                continue
            count, next_try = self._failures.get(unit, (0, 0.0))
            if now < next_try:
                continue
            try:
                self.start(unit)
                started.append(unit)
                self._failures[unit] = (count, now)  # reset once it has stayed up
            except (ToolError, OSError) as exc:
                delay = min(60.0, 1.0 * 2**count)
                self._failures[unit] = (count + 1, now + delay)
                log.warning("%s failed to start (%s); retrying in %.0fs", unit, exc, delay)
        return started

    def stop_all(self) -> None:
        units = self.known_units()
        if units:
            log.info("stopping the services this reconciler started: %s", ", ".join(units))
        for unit in units:
            self.stop(unit)
        # Children this object started whose records another olladist process removed.
        for proc in list(self._children.values()):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self._children.clear()

    def _run_checked(self, unit: str, argv: list[str], env: dict[str, str]) -> None:
        try:
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise ToolError(f"{unit}: cannot run {argv[0]}: {exc.strerror}") from exc
        if proc.returncode != 0:
            out = (proc.stderr or proc.stdout).strip()
            raise ToolError(f"{unit}: `{' '.join(argv)}` failed ({proc.returncode}): {out}")


def _last_line(path: Path, limit: int = 300) -> str:
    """The last non-empty line of a log file (its last 4 KiB read), cut to ``limit``."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1]
    return last if len(last) <= limit else last[: limit - 1] + "…"


def _seconds(value: str) -> float:
    value = value.strip()
    for suffix, mult in (("ms", 0.001), ("min", 60.0), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if value.endswith(suffix):
            with contextlib.suppress(ValueError):
                return float(value[: -len(suffix)]) * mult
    try:
        return float(value)
    except ValueError:
        return 10.0


def _reap_one(r: Running, proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        proc.poll()
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(r.pid, os.WNOHANG)


def _terminate_group(r: Running, timeout: float, proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the service's process group, then SIGKILL it after ``timeout``. ``proc`` is
    the Popen when this process started the service (so that it is reaped through it)."""
    if not r.alive():
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(r.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap_one(r, proc)
        if not r.alive():
            break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(r.pid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    else:
        _reap_one(r, None)
    # Whatever is left of the service's session (its children) goes too: only processes in
    # that session that started after the leader did, so a reused PID is never hit.
    for pid in _session_members(r):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _session_members(r: Running) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        # fields[3] is the session id, fields[19] the start time (see proc(5)).
        if int(fields[3]) == r.pid and int(fields[19]) >= r.starttime and fields[0] != "Z":
            out.append(int(entry))
    return out
