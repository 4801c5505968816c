"""Host-side plumbing of the systemd sandbox: its console pty, its processes, its cgroup.

Nothing here kills by name. Processes are signalled through pidfds, taken when the process is
provably ours (unshare's child, or a member of the sandbox's private cgroup), so a recycled
PID is never hit.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.harness.sandbox_script import CGROUP_UNIFIED

_POLL = 0.05


class Console:
    """A pty standing in for /dev/console, copied to a log file by a thread.

    systemd only logs to a console that is a tty (its open_terminal() checks isatty), so a
    plain file bound over /dev/console stays empty; the pty's slave is bound there instead.
    """

    def __init__(self, log_path: Path) -> None:
        self._log_path = log_path
        self._master, self._slave = os.openpty()
        self.slave_path = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._copy, name="sandbox-console", daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        with self._log_path.open("ab") as log:
            while True:
                ready, _, _ = select.select([self._master], [], [], 0.1)
                if not ready:
                    if self._stop.is_set():  # only once nothing is left to read
                        return
                    continue
                try:
                    data = os.read(self._master, 65536)
                except OSError:  # EIO: no slave end open any more
                    return
                if not data:
                    return
                log.write(data.replace(b"\r\n", b"\n"))
                log.flush()

    def close(self) -> None:
        # The harness holds the slave open so the master never sees a hang-up while systemd
        # reopens the console; the thread drains what is left before it stops.
        os.close(self._slave)
        self._stop.set()
        self._thread.join(5)
        os.close(self._master)


def only_child(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if len(children) == 1 else None


def hold_only_child(launcher: subprocess.Popen[bytes]) -> tuple[int, int] | None:
    """(PID, pidfd) of the launcher's only child, or None.

    The child relation is checked again after the pidfd is open: then the pidfd is that child
    and not some process that got its PID after it died.
    """
    child = only_child(launcher.pid)
    if child is None:
        return None
    try:
        pidfd = os.pidfd_open(child)
    except ProcessLookupError:
        return None
    if launcher.poll() is not None or only_child(launcher.pid) != child:
        os.close(pidfd)
        return None
    return child, pidfd


def wait_exit(pidfd: int, timeout: float) -> bool:
    # A pidfd turns readable when its process has exited.
    ready, _, _ = select.select([pidfd], [], [], timeout)
    return bool(ready)


def exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def is_dead(pid: int) -> bool:
    """True once `pid` has exited: gone, or a zombie waiting for whoever inherited it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status


def _cgroup_tree(root: Path) -> Iterator[Path]:
    """`root` and its descendants, deepest first (the order rmdir needs)."""
    dirs = [Path(d) for d, _, _ in os.walk(root)]
    yield from sorted(dirs, key=lambda p: len(p.parts), reverse=True)


def remove_cgroup(root: Path, timeout: float = 10.0) -> list[int]:
    """Remove the sandbox cgroup tree, waiting for its processes to be gone.

    Killing the namespace's PID 1 makes the kernel kill the rest; a straggler found here can
    only be ours (it is in our private cgroup), so it is killed after a grace period.
    Returns the PIDs still inside if the tree could not be removed in time, else [].
    """
    deadline = time.monotonic() + timeout
    grace_end = time.monotonic() + 2.0
    while root.exists():
        for cgroup in _cgroup_tree(root):
            with contextlib.suppress(OSError):
                cgroup.rmdir()
        if not root.exists():
            break
        if time.monotonic() > deadline:
            return _cgroup_pids(root)
        if time.monotonic() > grace_end:
            for pid in _cgroup_pids(root):
                _kill_if_in_cgroup(pid, root)
        time.sleep(_POLL)
    return []


def _cgroup_pids(root: Path) -> list[int]:
    pids: list[int] = []
    for cgroup in _cgroup_tree(root):
        with contextlib.suppress(OSError):
            pids.extend(int(p) for p in (cgroup / "cgroup.procs").read_text().split())
    return pids


def _kill_if_in_cgroup(pid: int, root: Path) -> None:
    """SIGKILL `pid` if, held by a pidfd, it is still in the cgroup tree `root`."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        relative = "/" + str(root.relative_to(CGROUP_UNIFIED))
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        path = next((line[3:] for line in lines if line.startswith("0::")), "")
        if path == relative or path.startswith(relative + "/"):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
        pass
    finally:
        os.close(pidfd)


def remove_stale_cgroups(prefix: str, max_age: float = 60.0) -> list[Path]:
    """Remove empty sandbox cgroups older than `max_age` seconds; returns those removed.

    A test run killed outright leaves its sandbox cgroup behind: the processes die with it
    (parent-death signals), the directories do not. The age keeps this away from a sandbox
    being set up right now, whose cgroup is empty for a moment; one with processes is never
    touched (and the kernel refuses to remove it anyway).
    """
    removed: list[Path] = []
    now = time.time()
    for root in CGROUP_UNIFIED.glob(f"{prefix}*"):
        try:
            age = now - root.stat().st_mtime
        except FileNotFoundError:
            continue
        if age < max_age or _cgroup_pids(root):
            continue
        for cgroup in _cgroup_tree(root):
            with contextlib.suppress(OSError):
                cgroup.rmdir()
        if not root.exists():
            removed.append(root)
    return removed
