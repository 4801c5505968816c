"""A real systemd, PID 1 of private namespaces, for system tests.

PID 1 on these machines is not systemd, yet olladist ships Type=notify units with watchdogs,
restarts and reloads that only a real systemd can exercise. `SystemdSandbox` runs one, following
the recipe of REFERENCE.md section 3 and nothing else.

DANGER: a systemd that can see the host's unit folders starts units such as
systemd-tmpfiles-setup.service, whose `D /tmp` rule empties the host's /tmp: a mount namespace
does not protect the root filesystem it shares with the host. Hence the inner script below
mounts over every place systemd reads units or runs generators from, then *checks* each mount
and refuses to exec systemd when one is missing. Never start systemd any other way.

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
import enum
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

CGROUP_UNIFIED = Path("/sys/fs/cgroup/unified")
SYSTEMD = "/lib/systemd/systemd"
BOOT_TARGET = "sandbox.target"
# Exit status the inner script uses for "a check failed, systemd not started".
REFUSED_EXIT = 97
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


class Mount(enum.StrEnum):
    """The mounts of the recipe, in the order the inner script makes them.

    Values name the mount in refusals and in the test-only `skip_mounts` parameter.
    """

    RUN = "run"
    UNITS = "units"
    VENDOR_UNITS = "vendor-units"
    GENERATORS = "generators"
    CONSOLE = "console"
    CGROUP = "cgroup"
    VAR_TMP = "var-tmp"
    TMP = "tmp"


@dataclass(frozen=True)
class _Layout:
    workdir: Path
    name: str

    @property
    def units(self) -> Path:
        return self.workdir / "units"

    @property
    def tmp(self) -> Path:
        return self.workdir / "tmp"

    @property
    def var_tmp(self) -> Path:
        return self.workdir / "var-tmp"

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    @property
    def launcher_log(self) -> Path:
        return self.workdir / "launcher.log"

    @property
    def marker(self) -> str:
        # Lives in the private /tmp: seen at /tmp/<marker> inside only if the bind worked.
        return f".olladist-sandbox-{self.name}"

    @property
    def cgroup(self) -> Path:
        return CGROUP_UNIFIED / self.name


class _Console:
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
            while not self._stop.is_set():
                ready, _, _ = select.select([self._master], [], [], 0.1)
                if not ready:
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
        # The harness keeps the slave open so the master never sees a hang-up while systemd
        # reopens the console; drain what is left, then close both ends.
        os.close(self._slave)
        self._stop.set()
        self._thread.join(5)
        os.close(self._master)


_STUB_TARGETS = ("sysinit.target", "basic.target", "shutdown.target", "multi-user.target")


def _stub_target(name: str) -> str:
    extra = ""
    if name == BOOT_TARGET:
        # Units a test enables (WantedBy=multi-user.target) before boot start with it.
        extra = "Wants=multi-user.target\nAfter=multi-user.target\n"
    return (
        "[Unit]\n"
        f"Description=olladist sandbox stub {name}\n"
        # Without this a target pulls in the host's sysinit chain, which is exactly what the
        # empty vendor folder is there to keep out.
        "DefaultDependencies=no\n"
        f"{extra}"
    )


def _mount_commands(layout: _Layout, console: str) -> dict[Mount, str]:
    q = shlex.quote
    return {
        Mount.RUN: "mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run && mkdir -p /run/lock",
        Mount.UNITS: f"mount --bind {q(str(layout.units))} /etc/systemd/system",
        Mount.VENDOR_UNITS: "mount -t tmpfs -o ro,mode=0755 tmpfs /usr/lib/systemd/system",
        Mount.GENERATORS: (
            "mount -t tmpfs -o ro,mode=0755 tmpfs /usr/lib/systemd/system-generators"
        ),
        Mount.CONSOLE: f"mount --bind {q(console)} /dev/console",
        Mount.CGROUP: "umount -R /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup",
        # Beyond the recipe: PrivateTmp= also makes /var/tmp/systemd-private-* directories,
        # which a SIGKILLed systemd never removes; they land in the workdir instead.
        Mount.VAR_TMP: f"mount --bind {q(str(layout.var_tmp))} /var/tmp",
        # Last: the workdir may itself live under the host's /tmp and vanish from view here.
        Mount.TMP: f"mount --bind {q(str(layout.tmp))} /tmp",
    }


# Places systemd 252 reads units or runs generators from, besides the ones mounted over.
# Each must be absent or empty, else its contents would be loaded or run.
_MUST_BE_EMPTY = (
    "/lib/systemd/system",
    "/lib/systemd/system-generators",
    "/usr/local/lib/systemd/system",
    "/usr/local/lib/systemd/system-generators",
    "/etc/systemd/system-generators",
    "/etc/systemd/system.control",
    "/etc/systemd/system.attached",
    "/run/systemd/system",
    "/run/systemd/system-generators",
    "/run/systemd/transient",
    "/usr/lib/systemd/system-environment-generators",
    "/usr/local/lib/systemd/system-environment-generators",
    "/etc/systemd/system-environment-generators",
    # Run by systemd-shutdown; the sandbox never shuts down cleanly, but keep it empty anyway.
    "/usr/lib/systemd/system-shutdown",
)


def _inner_script(
    layout: _Layout,
    console: str,
    skip_mounts: frozenset[Mount] = frozenset(),
    verify_only: bool = False,
) -> str:
    """The shell script run as PID 1 of the new namespaces: mount, check, then exec systemd.

    The checks do not trust the mount commands: each one looks at what is mounted now.
    With `verify_only` (forced when mounts are skipped) the script exits 0 where it would
    exec systemd, so a broken check can never start systemd on an incomplete sandbox.
    """
    q = shlex.quote
    commands = _mount_commands(layout, console)
    mount_lines = [
        f"{cmd} || refuse 'mounting {mount} failed'"
        for mount, cmd in commands.items()
        if mount not in skip_mounts
    ]
    empty_checks = [
        f"[ ! -e {d} ] || [ -z \"$(ls -A {d})\" ] || refuse '{d} is not empty'"
        for d in _MUST_BE_EMPTY
    ]
    if verify_only or skip_mounts:
        final = 'echo "olladist-sandbox: checks passed; verify-only, systemd not started" >&2'
    else:
        final = (
            f"export container={q(layout.name)}\n"
            f"exec {SYSTEMD} --system --unit={BOOT_TARGET} --log-target=console"
        )
    return "\n".join(
        [
            "set -u",
            "refuse() {",
            f'  echo "olladist-sandbox: refusing to start systemd: $*" >&2; exit {REFUSED_EXIT}',
            "}",
            'ident() { stat -L -c %d:%i "$1"; }',
            'fstype() { stat -L -f -c %T "$1"; }',
            # Identities of the sources, taken while the workdir is still visible.
            f"units_id=$(ident {q(str(layout.units))}) || refuse 'no unit folder'",
            f"console_id=$(ident {q(console)}) || refuse 'no console'",
            f"tmp_id=$(ident {q(str(layout.tmp))}) || refuse 'no private tmp'",
            f"var_tmp_id=$(ident {q(str(layout.var_tmp))}) || refuse 'no private var-tmp'",
            "host_tmp_id=$(ident /tmp) || refuse 'no /tmp'",
            f"[ ! -e /tmp/{layout.marker} ] || refuse 'private tmp marker already in host /tmp'",
            # Killing PID 1 must take every process of the sandbox with it.
            "[ $$ = 1 ] || refuse 'not PID 1 of a new PID namespace'",
            # A shared mount would carry these mounts over to the host.
            'propagation=$(findmnt -n -r -o PROPAGATION) && [ -n "$propagation" ]'
            " || refuse 'cannot list mounts'",
            '[ -z "$(echo "$propagation" | grep -vx private)" ]'
            " || refuse 'a mount is not private'",
            *mount_lines,
            'mountpoint -q /run && [ "$(fstype /run)" = tmpfs ]'
            " || refuse '/run is not a private tmpfs'",
            "[ -d /run/lock ] || refuse '/run/lock is missing'",
            "mountpoint -q /etc/systemd/system"
            ' && [ "$(ident /etc/systemd/system)" = "$units_id" ]'
            " || refuse '/etc/systemd/system is not the sandbox unit folder'",
            f"[ -f /etc/systemd/system/{BOOT_TARGET} ] || refuse 'no {BOOT_TARGET}'",
            "for d in /usr/lib/systemd/system /usr/lib/systemd/system-generators; do",
            '  mountpoint -q "$d" && [ "$(fstype "$d")" = tmpfs ] && [ -z "$(ls -A "$d")" ]'
            ' || refuse "$d is not an empty tmpfs"',
            "done",
            *empty_checks,
            'mountpoint -q /dev/console && [ "$(ident /dev/console)" = "$console_id" ]'
            " || refuse '/dev/console is not the sandbox console'",
            'mountpoint -q /sys/fs/cgroup && [ "$(fstype /sys/fs/cgroup)" = cgroup2fs ]'
            " || refuse '/sys/fs/cgroup is not cgroup2'",
            "grep -qx '0::/' /proc/self/cgroup || refuse 'not in a private cgroup namespace'",
            'mountpoint -q /var/tmp && [ "$(ident /var/tmp)" = "$var_tmp_id" ]'
            " || refuse '/var/tmp is not the private var-tmp folder'",
            'mountpoint -q /tmp && [ "$(ident /tmp)" = "$tmp_id" ]'
            ' && [ "$(ident /tmp)" != "$host_tmp_id" ]'
            f" && [ -e /tmp/{layout.marker} ]"
            " || refuse '/tmp is not the private tmp folder'",
            'echo "olladist-sandbox: all mounts verified" >&2',
            final,
            "",
        ]
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
    Teardown (always, also when entering fails half-way) kills that systemd by PID, which ends
    its PID namespace, and removes its cgroup.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        skip_mounts: frozenset[Mount] = frozenset(),
        verify_only: bool = False,
    ) -> None:
        """`skip_mounts` and `verify_only` are for testing the harness itself: with either,
        the inner script stops after its checks and systemd is never started."""
        self._layout = _Layout(workdir.resolve(), f"olladist-sb-{uuid.uuid4().hex[:12]}")
        self._skip_mounts = skip_mounts
        self._verify_only = verify_only or bool(skip_mounts)
        self._launcher: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._pidfd: int | None = None
        self._cgroup_made = False
        self._console: _Console | None = None

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
        (layout.tmp / layout.marker).write_text(layout.name)
        layout.console_log.write_bytes(b"")
        for target in (*_STUB_TARGETS, BOOT_TARGET):
            (layout.units / target).write_text(_stub_target(target))
        layout.cgroup.mkdir()
        self._cgroup_made = True
        self._console = _Console(layout.console_log)
        script = _inner_script(
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
            held = _hold_only_child(self._launcher)
            if held is not None:
                if _exe(held[0]) == os.path.realpath(SYSTEMD):
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
            held = _hold_only_child(launcher)
            self._pidfd = held[1] if held is not None else None
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            if not _wait_exit(self._pidfd, 10.0):
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
            try:
                _remove_cgroup(self._layout.cgroup)
                self._cgroup_made = False
            except SandboxError as exc:
                errors.append(str(exc))
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


# -- process and cgroup helpers ---------------------------------------------------------------


def _only_child(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if len(children) == 1 else None


def _hold_only_child(launcher: subprocess.Popen[bytes]) -> tuple[int, int] | None:
    """(PID, pidfd) of the launcher's only child, or None.

    The child relation is checked again after the pidfd is open: then the pidfd is that child
    and not some process that got its PID after it died.
    """
    child = _only_child(launcher.pid)
    if child is None:
        return None
    try:
        pidfd = os.pidfd_open(child)
    except ProcessLookupError:
        return None
    if launcher.poll() is not None or _only_child(launcher.pid) != child:
        os.close(pidfd)
        return None
    return child, pidfd


def _wait_exit(pidfd: int, timeout: float) -> bool:
    # A pidfd turns readable when its process has exited.
    ready, _, _ = select.select([pidfd], [], [], timeout)
    return bool(ready)


def _exe(pid: int) -> str | None:
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


def _remove_cgroup(root: Path, timeout: float = 10.0) -> None:
    """Remove the sandbox cgroup, waiting for its processes to be gone.

    Killing the namespace's PID 1 makes the kernel kill the rest; a straggler found here can
    only be ours (it is in our private cgroup), so it is killed by PID after a grace period.
    """
    deadline = time.monotonic() + timeout
    grace_end = time.monotonic() + 2.0
    while root.exists():
        for cgroup in _cgroup_tree(root):
            with contextlib.suppress(FileNotFoundError, OSError):
                cgroup.rmdir()
        if not root.exists():
            return
        if time.monotonic() > deadline:
            raise SandboxError(f"cgroup {root} could not be removed: {_cgroup_pids(root)}")
        if time.monotonic() > grace_end:
            for pid in _cgroup_pids(root):
                _kill_if_in_cgroup(pid, root)
        time.sleep(_POLL)


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
