"""The sandbox leaves the host alone: files, mounts, processes and cgroups."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.sandbox_procs import remove_cgroup, remove_stale_cgroups
from tests.harness.sandbox_script import CGROUP_UNIFIED
from tests.harness.systemd_sandbox import (
    Mount,
    SandboxError,
    SandboxRefused,
    SystemdSandbox,
    is_dead,
)

pytestmark = pytest.mark.system


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under `root` with its mtime and mode, without following links."""
    found: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            found[str(path)] = (st.st_mtime_ns, st.st_mode)
    return found


def _mounts() -> list[str]:
    return Path("/proc/self/mountinfo").read_text().splitlines()


@pytest.fixture
def host_canary() -> Iterator[Path]:
    """A file in the host's /tmp itself: what systemd-tmpfiles would have removed."""
    fd, name = tempfile.mkstemp(prefix="olladist-sandbox-canary-", dir="/tmp")
    os.close(fd)
    canary = Path(name)
    canary.write_text("still here")
    try:
        yield canary
    finally:
        canary.unlink(missing_ok=True)


def _gone(sandbox: SystemdSandbox, pids: list[int]) -> None:
    assert not sandbox.cgroup.exists()
    for pid in pids:
        assert is_dead(pid), f"PID {pid} outlived the sandbox"


def test_host_files_mounts_and_processes_untouched(
    sandbox_available: None, tmp_path: Path, host_canary: Path
) -> None:
    run_before = _snapshot(Path("/run"))
    units_before = _snapshot(Path("/etc/systemd/system"))
    var_tmp_before = _snapshot(Path("/var/tmp"))
    machine_id = Path("/etc/machine-id").read_bytes()
    mounts_before = _mounts()
    sandbox = SystemdSandbox(tmp_path / "sb")
    with sandbox:
        sandbox.wait_until_running()
        # A unit that deletes the canary by its host path only reaches the private /tmp.
        sandbox.private_tmp.joinpath(host_canary.name).write_text("private copy")
        sandbox.install_unit(
            "olladist-test-rm.service",
            "[Service]\nType=oneshot\n"
            f"ExecStart=/bin/rm -f {host_canary}\n"
            f"ExecStart=/bin/sh -c 'ls -A /run > /tmp/inner-run-listing'\n",
        )
        sandbox.systemctl("start", "olladist-test-rm.service")
        assert not sandbox.private_tmp.joinpath(host_canary.name).exists()
        inner_run = sandbox.private_tmp.joinpath("inner-run-listing").read_text().split()
        assert "systemd" in inner_run  # the sandbox's own /run, a tmpfs
        # PrivateTmp= makes directories in /tmp and /var/tmp that a SIGKILL never removes.
        sandbox.install_unit(
            "olladist-test-privtmp.service", "[Service]\nPrivateTmp=yes\nExecStart=/bin/sleep 60\n"
        )
        sandbox.systemctl("start", "olladist-test-privtmp.service")
        sandbox.wait_active("olladist-test-privtmp.service")
        assert any(sandbox.private_var_tmp.glob("systemd-private-*-olladist-test-privtmp*"))
        pids = [sandbox.pid, sandbox.launcher_pid]
    _gone(sandbox, pids)
    assert host_canary.read_text() == "still here"
    assert _snapshot(Path("/run")) == run_before
    assert _snapshot(Path("/etc/systemd/system")) == units_before
    assert _snapshot(Path("/var/tmp")) == var_tmp_before
    assert Path("/etc/machine-id").read_bytes() == machine_id
    assert _mounts() == mounts_before
    assert "Startup finished" in sandbox.console_log()


def test_teardown_kills_every_process_and_removes_the_cgroup(
    systemd_sandbox: SystemdSandbox,
) -> None:
    sandbox = systemd_sandbox
    sandbox.install_unit("olladist-test-sleep.service", "[Service]\nExecStart=/bin/sleep 600\n")
    sandbox.systemctl("start", "olladist-test-sleep.service")
    sandbox.wait_active("olladist-test-sleep.service")
    service_cgroup = sandbox.cgroup / "system.slice" / "olladist-test-sleep.service"
    sleeper = [int(p) for p in (service_cgroup / "cgroup.procs").read_text().split()]
    assert len(sleeper) == 1
    pids = [sandbox.pid, sandbox.launcher_pid, *sleeper]
    sandbox.close()
    _gone(sandbox, pids)
    sandbox.close()  # the fixture closes again: must be harmless


def test_teardown_runs_when_the_test_body_fails(sandbox_available: None, tmp_path: Path) -> None:
    sandbox = SystemdSandbox(tmp_path / "sb")
    with pytest.raises(RuntimeError, match="test body failed"), sandbox:
        pids = [sandbox.pid, sandbox.launcher_pid]
        raise RuntimeError("test body failed")
    _gone(sandbox, pids)


def test_killing_the_launcher_takes_systemd_down(sandbox_available: None, tmp_path: Path) -> None:
    """If the test process dies, unshare dies with it (pdeathsig) and kills systemd."""
    sandbox = SystemdSandbox(tmp_path / "sb")
    with sandbox:
        sandbox.wait_until_running()
        systemd_pid = sandbox.pid
        os.kill(sandbox.launcher_pid, 9)
        with pytest.raises(SandboxError, match="exited"):
            sandbox.wait_until_running(timeout=5)
        # The kernel delivers the parent-death SIGKILL as unshare exits; allow it a moment.
        deadline = time.monotonic() + 5
        while not is_dead(systemd_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert is_dead(systemd_pid)
    _gone(sandbox, [systemd_pid])


@pytest.mark.parametrize("skipped", list(Mount))
def test_a_missing_mount_is_refused_before_systemd_starts(
    sandbox_available: None, tmp_path: Path, skipped: Mount
) -> None:
    sandbox = SystemdSandbox(
        tmp_path / "sb",
        skip_mounts=frozenset({skipped}),
        overlay_system=skipped is Mount.OVERLAY,
    )
    with pytest.raises(SandboxRefused, match="refusing to start systemd"), sandbox:
        pytest.fail("the sandbox started")
    assert sandbox.console_log() == ""  # systemd never wrote a line
    launcher_log = (tmp_path / "sb" / "launcher.log").read_text()
    assert "all mounts verified" not in launcher_log
    assert not sandbox.cgroup.exists()


def test_the_full_recipe_passes_every_check(sandbox_available: None, tmp_path: Path) -> None:
    with SystemdSandbox(tmp_path / "sb", verify_only=True) as sandbox:
        pass
    assert "all mounts verified" in (tmp_path / "sb" / "launcher.log").read_text()
    assert not sandbox.cgroup.exists()


def test_overlay_mode_passes_every_check_and_keeps_writes_off_the_host(
    sandbox_available: None, tmp_path: Path
) -> None:
    with SystemdSandbox(tmp_path / "v", verify_only=True, overlay_system=True):
        pass
    assert "all mounts verified" in (tmp_path / "v" / "launcher.log").read_text()
    probe = f"olladist-overlay-probe-{uuid.uuid4().hex[:8]}"
    with SystemdSandbox(tmp_path / "sb", overlay_system=True) as sandbox:
        sandbox.wait_until_running()
        sandbox.run("touch", f"/etc/{probe}", f"/usr/{probe}", f"/var/{probe}")
        for top in ("etc", "usr", "var"):
            assert (sandbox.overlay_upper(top) / probe).is_file()
            assert not Path(f"/{top}/{probe}").exists()
    assert not sandbox.cgroup.exists()


def test_host_tmp_is_hidden_except_shared_folders(sandbox_available: None, tmp_path: Path) -> None:
    if not tmp_path.resolve().is_relative_to("/tmp"):
        pytest.skip("pytest's tmp dir is not under /tmp")
    shared, hidden = tmp_path / "shared", tmp_path / "hidden"
    for folder in (shared, hidden):
        folder.mkdir()
        (folder / "file").write_text(folder.name)
    (shared / "nested").mkdir()  # inside a shared folder: shared with it, not bound twice
    with SystemdSandbox(tmp_path / "sb", share=[shared, shared / "nested"]) as sandbox:
        sandbox.wait_until_running()
        assert sandbox.inner_path(shared / "file") == str(shared / "file")
        seen = sandbox.run("cat", str(shared / "file"), str(hidden / "file"), check=False)
        assert seen.stdout == "shared"
        assert "No such file" in seen.stderr
        sandbox.run("sh", "-c", f"echo from-inside > {shared}/written")
    assert (shared / "written").read_text() == "from-inside\n"
    assert not sandbox.cgroup.exists()


def test_cgroup_removal_kills_a_straggler_in_it(sandbox_available: None) -> None:
    """The last resort of teardown: a process left in the sandbox cgroup is killed by pidfd."""
    root = CGROUP_UNIFIED / f"olladist-sb-test-{uuid.uuid4().hex[:8]}"
    (root / "inner").mkdir(parents=True)
    straggler = subprocess.Popen(
        ["/bin/sh", "-c", 'echo $$ > "$1/cgroup.procs" && exec sleep 600', "sh", root / "inner"]
    )
    try:
        deadline = time.monotonic() + 5
        while str(straggler.pid) not in (root / "inner" / "cgroup.procs").read_text():
            assert time.monotonic() < deadline, "the straggler never joined its cgroup"
            time.sleep(0.02)
        assert remove_cgroup(root, timeout=8) == []
        assert straggler.wait(5) == -signal.SIGKILL
        assert not root.exists()
    finally:
        if straggler.poll() is None:
            straggler.kill()
            straggler.wait()
        remove_cgroup(root)


def test_stale_cgroups_go_and_live_sandboxes_stay(systemd_sandbox: SystemdSandbox) -> None:
    """What a killed test run leaves (empty cgroups) is cleared; a running sandbox is not."""
    stale = CGROUP_UNIFIED / f"olladist-sb-test-{uuid.uuid4().hex[:8]}"
    (stale / "system.slice").mkdir(parents=True)
    try:
        assert remove_stale_cgroups(stale.name, max_age=0) == [stale]
        assert not stale.exists()
        live = systemd_sandbox.cgroup
        assert remove_stale_cgroups(live.name, max_age=0) == []
        assert live.exists()
        assert systemd_sandbox.systemctl("is-system-running").stdout.strip() == "running"
    finally:
        remove_cgroup(stale)
