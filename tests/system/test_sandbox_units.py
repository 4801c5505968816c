"""systemd behaviour olladist's units rely on, checked against the real thing."""

from __future__ import annotations

import pytest

from tests.harness.systemd_sandbox import SandboxError, SystemdSandbox

pytestmark = pytest.mark.system

# A Type=notify service in plain Python: READY and STATUS over NOTIFY_SOCKET, SIGHUP counted
# into STATUS, watchdog pings (in mode "stall-once" the first run stops pinging after 1 s).
SERVICE = """\
import os, signal, socket, sys, time
from pathlib import Path

def notify(message):
    address = os.environ["NOTIFY_SOCKET"]
    if address.startswith("@"):
        address = "\\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())

mode, counter = sys.argv[1], Path(sys.argv[2])
start = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(start))
hups = 0

def on_hup(signum, frame):
    global hups
    hups += 1
    notify(f"STATUS=reloaded {hups} times")

signal.signal(signal.SIGHUP, on_hup)
notify(f"READY=1\\nSTATUS=serving, start {start}")
began = time.monotonic()
while True:
    stalled = mode == "stall-once" and start == 1 and time.monotonic() - began > 1.0
    if "WATCHDOG_USEC" in os.environ and not stalled:
        notify("WATCHDOG=1")
    time.sleep(0.2)
"""


def _notify_unit(sandbox: SystemdSandbox, mode: str, extra: str = "") -> str:
    _, script = sandbox.install_file("olladist-test-svc.py", SERVICE, reload=False)
    return (
        "[Unit]\nDescription=olladist sandbox notify test\n"
        "[Service]\nType=notify\n"
        f"ExecStart={sandbox.python} {script} {mode} /tmp/starts-{mode}\n"
        "Restart=always\nRestartSec=100ms\n"
        # The watchdog's SIGABRT must not leave a core file in the unit's working directory.
        "LimitCORE=0\n"
        "ExecStopPost=/bin/sh -c 'echo \"$SERVICE_RESULT\" >> /tmp/results'\n"
        f"{extra}"
    )


def test_notify_status_and_restart_after_kill(systemd_sandbox: SystemdSandbox) -> None:
    sandbox = systemd_sandbox
    unit = "olladist-test-notify.service"
    sandbox.install_unit(unit, _notify_unit(sandbox, "plain"))
    sandbox.systemctl("start", unit)  # Type=notify: returns once READY=1 arrived
    assert sandbox.show(unit, "ActiveState") == "active"
    status = sandbox.systemctl("status", unit).stdout
    assert 'Status: "serving, start 1"' in status
    first = sandbox.main_pid(unit)

    sandbox.systemctl("kill", "-s", "KILL", unit)
    sandbox.wait_for(unit, "NRestarts", "1")
    sandbox.wait_active(unit)
    assert sandbox.main_pid(unit) not in (0, first)
    assert sandbox.show(unit, "StatusText") == "serving, start 2"
    assert (sandbox.private_tmp / "results").read_text().split() == ["signal"]


def test_watchdog_kills_a_stalled_service_and_it_restarts(
    systemd_sandbox: SystemdSandbox,
) -> None:
    sandbox = systemd_sandbox
    unit = "olladist-test-watchdog.service"
    sandbox.install_unit(unit, _notify_unit(sandbox, "stall-once", "WatchdogSec=2\n"))
    sandbox.systemctl("start", unit)
    # Pings stop 1 s after start; the 2 s watchdog fires about 3 s after start.
    sandbox.wait_for(unit, "NRestarts", "1", timeout=10)
    sandbox.wait_active(unit)
    assert sandbox.show(unit, "StatusText") == "serving, start 2"
    assert (sandbox.private_tmp / "results").read_text().split() == ["watchdog"]
    assert f"{unit}: Watchdog timeout" in sandbox.console_log()


def test_reload_delivers_sighup(systemd_sandbox: SystemdSandbox) -> None:
    sandbox = systemd_sandbox
    unit = "olladist-test-reload.service"
    sandbox.install_unit(
        unit, _notify_unit(sandbox, "plain", "ExecReload=/bin/kill -HUP $MAINPID\n")
    )
    sandbox.systemctl("start", unit)
    pid = sandbox.main_pid(unit)
    sandbox.systemctl("reload", unit)
    sandbox.wait_for(unit, "StatusText", "reloaded 1 times")
    sandbox.systemctl("reload", unit)
    sandbox.wait_for(unit, "StatusText", "reloaded 2 times")
    assert sandbox.main_pid(unit) == pid
    assert sandbox.show(unit, "NRestarts") == "0"


def test_enable_now_starts_and_links_the_unit(systemd_sandbox: SystemdSandbox) -> None:
    sandbox = systemd_sandbox
    unit = "olladist-test-enable.service"
    sandbox.install_unit(
        unit,
        "[Service]\nExecStart=/bin/sleep 600\n[Install]\nWantedBy=multi-user.target\n",
    )
    assert sandbox.systemctl("is-enabled", unit, check=False).stdout.strip() == "disabled"
    sandbox.systemctl("enable", "--now", unit)
    sandbox.wait_active(unit)
    assert sandbox.systemctl("is-enabled", unit).stdout.strip() == "enabled"
    link = sandbox.unit_dir / "multi-user.target.wants" / unit
    assert link.is_symlink()
    assert str(link.readlink()) == f"/etc/systemd/system/{unit}"


def test_shutdown_verbs_are_refused(systemd_sandbox: SystemdSandbox) -> None:
    with pytest.raises(SandboxError, match="use close"):
        systemd_sandbox.systemctl("poweroff")
    assert systemd_sandbox.systemctl("is-system-running").stdout.strip() == "running"
