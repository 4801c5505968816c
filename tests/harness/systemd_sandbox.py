"""A real systemd, PID 1 of private namespaces, for system tests.

PID 1 on these machines is not systemd, yet olladist ships Type=notify units with watchdogs,
restarts and reloads that only a real systemd can exercise. `SystemdSandbox` runs one, following
the recipe of REFERENCE.md section 3 and nothing else.

DANGER: a systemd that can see the host's unit folders starts units such as
systemd-tmpfiles-setup.service, whose `D /tmp` rule empties the host's /tmp: a mount namespace
does not protect the root filesystem it shares with the host. Hence the inner script
(sandbox_script.py) mounts over every place systemd reads units or runs generators from, then
*checks* each mount and refuses to exec systemd when one is missing. Never start systemd any
other way. docs/testing-systemd.md explains each mount.

Layout of the workdir (the host paths; inside the sandbox they are seen as noted):

    units/        -> /etc/systemd/system   stub targets + the units a test installs
    tmp/          -> /tmp                   private /tmp (a service's /tmp lands here)
    var-tmp/      -> /var/tmp               private /var/tmp (PrivateTmp= puts files here too)
    console.log                             systemd's own log (--log-target=console), copied
                                            from a pty whose slave is bound over /dev/console
    launcher.log                            stderr of the inner script (refusals land here)

Errors::

    SandboxError                 base class
    +-- SandboxUnavailable       not root, no unshare, no writable cgroup2 (tests skip)
    +-- SandboxRefused           the inner script found a mount missing; systemd never ran
    +-- SandboxCommandError      a command run in the sandbox failed (carries the result)
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from tests.harness.sandbox_procs import (
    Console,
    exe,
    hold_only_child,
    is_dead,
    remove_cgroup,
    remove_stale_cgroups,
    wait_exit,
)
from tests.harness.sandbox_script import (
    BOOT_TARGET,
    CGROUP_UNIFIED,
    OVERLAY_TOPS,
    REFUSED_EXIT,
    STUB_TARGETS,
    SYSTEMD,
    Layout,
    Mount,
    inner_script,
    stub_target,
)

__all__ = [
    "BOOT_TARGET",
    "Mount",
    "SandboxCommandError",
    "SandboxError",
    "SandboxRefused",
    "SandboxUnavailable",
    "SystemdSandbox",
    "is_dead",
    "unavailable_reason",
]

# Names the sandbox's cgroup and its `container=`.
_CGROUP_PREFIX = "olladist-sb-"
_LAUNCH_TIMEOUT = 20.0
_COMMAND_TIMEOUT = 30.0
_POLL = 0.05
# systemctl is-system-running answers; the boot is over in these two.
_UP_STATES = frozenset({"running", "degraded"})
# These would walk the sandbox through a shutdown (systemd-shutdown and friends); teardown is a
# SIGKILL to PID 1 instead, which runs nothing.
_SHUTDOWN_VERBS = frozenset(
    {"poweroff", "reboot", "halt", "kexec", "soft-reboot", "switch-root", "exit", "isolate"}
)
_TOOLS = ("unshare", "nsenter", "mountpoint", "findmnt", "setpriv", "stat")


class SandboxError(Exception):
    """The sandbox could not be started, used or torn down."""


class SandboxUnavailable(SandboxError):
    """This machine cannot run the sandbox (not root, tools or cgroup2 missing)."""


class SandboxRefused(SandboxError):
    """The inner script found a required mount missing and did not start systemd."""


class SandboxCommandError(SandboxError):
    """A command run inside the sandbox exited non-zero."""

    def __init__(self, result: subprocess.CompletedProcess[str]) -> None:
        self.result = result
        super().__init__(
            f"{shlex.join(result.args)} exited {result.returncode}\n"
            f"stdout: {result.stdout.strip()}\nstderr: {result.stderr.strip()}"
        )


def unavailable_reason() -> str | None:
    """Why the sandbox cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "the systemd sandbox needs root"
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        return f"the systemd sandbox needs {', '.join(missing)}"
    if not os.access(SYSTEMD, os.X_OK):
        return f"no systemd at {SYSTEMD}"
    if not (CGROUP_UNIFIED / "cgroup.procs").is_file() or not os.access(CGROUP_UNIFIED, os.W_OK):
        return f"no writable cgroup2 hierarchy at {CGROUP_UNIFIED}"
    return None


class SystemdSandbox:
    """A context manager running a real systemd in private namespaces under `workdir`.

    `with SystemdSandbox(tmp_path / "sb") as sb: sb.wait_until_running(); sb.systemctl(...)`.
    Teardown (always, also when entering fails half-way) SIGKILLs that systemd, which ends its
    PID namespace and every process in it, and removes its cgroup.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        share: Sequence[Path] = (),
        skip_mounts: frozenset[Mount] = frozenset(),
        verify_only: bool = False,
        overlay_system: bool = False,
    ) -> None:
        """`share`: host folders to keep visible inside at the same path; only those under the
        host's /tmp need it (everything outside /tmp is visible anyway).

        `overlay_system`: /etc, /usr and /var are overlays of the host's whose writes land in
        `overlay_upper(TOP)` (in the workdir), so a package can be installed, upgraded and
        purged inside without changing a file of the host. /usr/lib/systemd/system is then a
        writable (still empty at boot) tmpfs, so that the package's units land there.

        `skip_mounts` and `verify_only` are for testing the harness itself: with either, the
        inner script stops after its checks and systemd is never started.
        """
        shares: list[Path] = []
        for folder in share:
            resolved = Path(os.path.realpath(folder))
            if resolved.is_relative_to("/var/tmp"):
                raise SandboxError(f"cannot share {folder}: /var/tmp is private in the sandbox")
            if not resolved.is_relative_to("/tmp"):
                continue
            if resolved == Path("/tmp") or not resolved.is_dir():
                raise SandboxError(f"cannot share {folder}: not a folder below /tmp")
            shares.append(resolved)
        # A folder inside another shared one is visible already.
        shares = [s for s in shares if not any(s != o and s.is_relative_to(o) for o in shares)]
        self._layout = Layout(
            workdir.resolve(),
            f"{_CGROUP_PREFIX}{uuid.uuid4().hex[:12]}",
            tuple(shares),
            overlay_system,
        )
        self._skip_mounts = skip_mounts
        self._verify_only = verify_only or bool(skip_mounts)
        self._launcher: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._pidfd: int | None = None
        self._cgroup_made = False
        self._console: Console | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> SystemdSandbox:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _start(self) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise SandboxUnavailable(reason)
        layout = self._layout
        layout.units.mkdir(parents=True, exist_ok=True)
        for private in (layout.tmp, layout.var_tmp):
            private.mkdir(exist_ok=True)
            private.chmod(0o1777)
        for shared in layout.shares:
            layout.share_mountpoint(shared).mkdir(parents=True, exist_ok=True)
        if layout.overlay_system:
            # An upper folder inside its own lower one would loop (and /var/tmp is private).
            if any(layout.workdir.is_relative_to(f"/{top}") for top in OVERLAY_TOPS):
                raise SandboxError(f"{layout.workdir}: overlay mode needs a workdir outside them")
            for top in OVERLAY_TOPS:
                layout.overlay_upper(top).mkdir(parents=True, exist_ok=True)
                layout.overlay_work(top).mkdir(parents=True, exist_ok=True)
        (layout.tmp / layout.marker).write_text(layout.name)
        layout.console_log.write_bytes(b"")
        for target in (*STUB_TARGETS, BOOT_TARGET):
            (layout.units / target).write_text(stub_target(target))
        remove_stale_cgroups(_CGROUP_PREFIX)
        layout.cgroup.mkdir()
        self._cgroup_made = True
        self._console = Console(layout.console_log)
        script = inner_script(
            layout, self._console.slave_path, self._skip_mounts, self._verify_only
        )
        (layout.workdir / "inner.sh").write_text(script)  # a copy to read when debugging
        # sh joins the cgroup first so that the cgroup namespace unshare creates is rooted
        # there. setpriv ties unshare to this process and --kill-child ties systemd to
        # unshare, so a killed test run leaves no systemd behind.
        launcher = (
            'echo $$ > "$1/cgroup.procs" || exit 1\n'
            "exec setpriv --pdeathsig KILL unshare --fork --pid --mount --cgroup --uts --ipc"
            ' --mount-proc --propagation private --kill-child=KILL /bin/sh -c "$2"'
        )
        with layout.launcher_log.open("wb") as log:
            self._launcher = subprocess.Popen(
                ["/bin/sh", "-c", launcher, "sh", str(layout.cgroup), script],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
                cwd="/",
            )
        if self._verify_only:
            self._wait_verify_only()
        else:
            self._pid, self._pidfd = self._wait_for_systemd()

    def _launcher_failure(self, returncode: int) -> SandboxError:
        log = self._layout.launcher_log.read_text(errors="replace").strip()
        if returncode == REFUSED_EXIT:
            return SandboxRefused(log.splitlines()[-1] if log else "refused")
        return SandboxError(f"sandbox launcher exited {returncode} before systemd ran:\n{log}")

    def _wait_verify_only(self) -> None:
        assert self._launcher is not None
        try:
            returncode = self._launcher.wait(_LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise SandboxError("the sandbox checks did not finish") from exc
        if returncode != 0:
            raise self._launcher_failure(returncode)
        if self._skip_mounts:
            raise SandboxError(
                f"checks passed although mounts were skipped: {sorted(self._skip_mounts)}"
            )

    def _wait_for_systemd(self) -> tuple[int, int]:
        """(host PID, pidfd) of the sandbox's PID 1 once it has exec'd systemd."""
        assert self._launcher is not None
        deadline = time.monotonic() + _LAUNCH_TIMEOUT
        while time.monotonic() < deadline:
            returncode = self._launcher.poll()
            if returncode is not None:
                raise self._launcher_failure(returncode)
            held = hold_only_child(self._launcher)
            if held is not None:
                if exe(held[0]) == os.path.realpath(SYSTEMD):
                    return held
                os.close(held[1])
            time.sleep(_POLL)
        raise SandboxError(f"systemd did not start within {_LAUNCH_TIMEOUT} s")

    def close(self) -> None:
        """Kill systemd, reap the launcher, remove the cgroup. Safe to call twice.

        systemd is signalled through a pidfd taken while it was provably unshare's child, so a
        recycled PID can never be hit.
        """
        errors: list[str] = []
        launcher = self._launcher
        self._pid = None
        if self._pidfd is None and launcher is not None and launcher.poll() is None:
            # Entering failed before systemd was seen: the would-be PID 1 is unshare's child.
            held = hold_only_child(launcher)
            self._pidfd = held[1] if held is not None else None
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            if not wait_exit(self._pidfd, 10.0):
                errors.append("the sandbox's systemd did not die on SIGKILL")
            os.close(self._pidfd)
            self._pidfd = None
        elif launcher is not None and launcher.poll() is None:
            # unshare has not forked yet: killing it is enough, --kill-child covers the child.
            launcher.kill()
        if launcher is not None:
            try:
                launcher.wait(10)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait(10)
        if self._cgroup_made:
            left = remove_cgroup(self._layout.cgroup)
            if left:
                errors.append(f"cgroup {self._layout.cgroup} still holds PIDs {left}")
            else:
                self._cgroup_made = False
        self._launcher = None
        if self._console is not None:
            self._console.close()
            self._console = None
        if errors:
            raise SandboxError("; ".join(errors))

    # -- facts ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._layout.name

    @property
    def pid(self) -> int:
        """Host PID of the sandbox's systemd."""
        if self._pid is None:
            raise SandboxError("the sandbox's systemd is not running")
        return self._pid

    @property
    def launcher_pid(self) -> int:
        """PID of the unshare process whose child is the sandbox's systemd."""
        if self._launcher is None:
            raise SandboxError("the sandbox is not running")
        return self._launcher.pid

    @property
    def cgroup(self) -> Path:
        return self._layout.cgroup

    @property
    def unit_dir(self) -> Path:
        """Host path of the folder seen as /etc/systemd/system inside."""
        return self._layout.units

    def overlay_upper(self, top: str) -> Path:
        """Host path of what the sandbox wrote to /TOP (with `overlay_system`)."""
        return self._layout.overlay_upper(top)

    @property
    def private_tmp(self) -> Path:
        """Host path of the folder seen as /tmp inside."""
        return self._layout.tmp

    @property
    def private_var_tmp(self) -> Path:
        """Host path of the folder seen as /var/tmp inside."""
        return self._layout.var_tmp

    def inner_path(self, host_path: Path | str) -> str:
        """Where the sandbox sees `host_path`. The host's /tmp is hidden inside, except the
        parts bound in (the unit folder and the private tmp); other paths are unchanged."""
        path = Path(os.path.abspath(host_path))
        real = Path(os.path.realpath(path))
        for shared in self._layout.shares:
            if path.is_relative_to(shared) or real.is_relative_to(shared):
                return str(path)
        for host_dir, inner_dir in (
            (self._layout.units, "/etc/systemd/system"),
            (self._layout.tmp, "/tmp"),
            (self._layout.var_tmp, "/var/tmp"),
        ):
            if path.is_relative_to(host_dir):
                return str(Path(inner_dir, path.relative_to(host_dir)))
        for hidden in (path, Path(os.path.realpath(path))):
            if hidden.is_relative_to("/tmp") or hidden.is_relative_to("/var/tmp"):
                raise SandboxError(f"{path} is under a /tmp of the host, hidden in the sandbox")
        return str(path)

    @property
    def python(self) -> str:
        """This interpreter (the venv's) as units inside the sandbox must name it."""
        return self.inner_path(sys.executable)

    def console_log(self) -> str:
        return self._layout.console_log.read_text(errors="replace")

    # -- commands ---------------------------------------------------------------------------

    def run(
        self, *cmd: str, check: bool = True, timeout: float = _COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` in the sandbox's mount and PID namespaces (the network is the host's)."""
        self._ensure_alive()
        args = ["nsenter", "-t", str(self.pid), "-m", "-p", "--", *cmd]
        result = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={
                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                "SYSTEMD_COLORS": "0",
                "SYSTEMD_PAGER": "",
                "LANG": "C.UTF-8",
            },
        )
        if check and result.returncode != 0:
            raise SandboxCommandError(result)
        return result

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run systemctl inside. Shutdown verbs are refused: the sandbox ends by `close()`."""
        shutdown = _SHUTDOWN_VERBS.intersection(args)
        if shutdown:
            raise SandboxError(f"systemctl {' '.join(sorted(shutdown))}: use close() instead")
        return self.run("systemctl", "--no-pager", *args, check=check)

    def install_unit(self, name: str, text: str, *, reload: bool = True) -> Path:
        """Write a unit into /etc/systemd/system of the sandbox; returns its host path."""
        if "/" in name:
            raise SandboxError(f"unit name {name!r} must not contain '/'")
        return self.install_file(name, text, reload=reload)[0]

    def install_file(
        self, path: str, text: str, *, mode: int = 0o644, reload: bool = True
    ) -> tuple[Path, str]:
        """Write `path` (relative to the unit folder, e.g. a drop-in or a script).

        Returns (host path, path inside the sandbox). Scripts a unit runs must be placed
        where the sandbox sees them: here, under `private_tmp`, or outside the host /tmp.
        """
        rel = Path(path)
        if rel.is_absolute() or ".." in rel.parts:
            raise SandboxError(f"{path!r} must be relative to the unit folder")
        host = self._layout.units / rel
        host.parent.mkdir(parents=True, exist_ok=True)
        tmp = host.with_name(f".{host.name}.tmp")
        tmp.write_text(text)
        tmp.chmod(mode)
        tmp.replace(host)
        if reload and self._pid is not None:
            self.systemctl("daemon-reload")
        return host, f"/etc/systemd/system/{rel.as_posix()}"

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-P", prop, unit).stdout.strip()

    def main_pid(self, unit: str) -> int:
        """MainPID of `unit` as systemd sees it: a PID inside the sandbox's namespace."""
        return int(self.show(unit, "MainPID"))

    def wait_until_running(self, timeout: float = 20.0) -> str:
        """Wait until the boot is over (running or degraded); returns that state."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            self._ensure_alive()
            state = self.systemctl("is-system-running", check=False).stdout.strip()
            if state in _UP_STATES:
                return state
            time.sleep(_POLL)
        raise SandboxError(
            f"systemd still {state or 'unreachable'} after {timeout} s\n{self.console_log()}"
        )

    def wait_active(self, unit: str, timeout: float = 10.0) -> None:
        """Wait until `unit` is active; a unit that fails and will not restart fails early."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.systemctl("is-active", unit, check=False).stdout.strip()
            if state == "active":
                return
            if state == "failed":
                break
            time.sleep(_POLL)
        status = self.systemctl("status", unit, check=False).stdout
        raise SandboxError(f"{unit} is {state or 'unknown'}, not active\n{status}")

    def wait_for(self, unit: str, prop: str, predicate: str, timeout: float = 10.0) -> str:
        """Wait until property `prop` of `unit` equals `predicate`; returns its value."""
        deadline = time.monotonic() + timeout
        value = ""
        while time.monotonic() < deadline:
            value = self.show(unit, prop)
            if value == predicate:
                return value
            time.sleep(_POLL)
        raise SandboxError(f"{unit} {prop}={value!r}, wanted {predicate!r} within {timeout} s")

    def _ensure_alive(self) -> None:
        if self._launcher is not None:
            returncode = self._launcher.poll()
            if returncode is not None:
                raise SandboxError(
                    f"the sandbox's systemd exited ({returncode})\n{self.console_log()}"
                )
