"""The local runtime starts, supervises, reloads and stops services from unit files."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from olladist.errors import ToolError
from olladist.layout import Layout
from olladist.runtime.local import LocalRuntime

SERVICE = """[Unit]
Description=test %i

[Service]
Environment="GREETING=hello world"
ExecStart={python} -c "import os, signal, sys, time; \\
  signal.signal(signal.SIGHUP, lambda *a: open(os.environ['OUT'], 'a').write('hup\\\\n')); \\
  open(os.environ['OUT'], 'a').write(os.environ['GREETING'] + ' %i\\\\n'); \\
  [time.sleep(0.05) for _ in iter(int, 1)]"
ExecReload=/bin/kill -HUP $MAINPID
TimeoutStopSec=5

[Install]
WantedBy=multi-user.target
"""


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[LocalRuntime]:
    unit_dir = tmp_path / "etc/systemd/system"
    (unit_dir / "olladist-t@a.service.d").mkdir(parents=True)
    (unit_dir / "olladist-t@.service").write_text(SERVICE.format(python=sys.executable))
    (unit_dir / "olladist-t@a.service.d/10.conf").write_text(
        f'[Service]\nEnvironment="OUT={tmp_path}/out.txt"\n'
    )
    rt = LocalRuntime(Layout(tmp_path))
    try:
        yield rt
    finally:
        rt.stop_all()


def wait_for(pred, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_start_reload_stop(runtime: LocalRuntime, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    runtime.start("olladist-t@a.service")
    wait_for(lambda: out.exists() and "hello world a" in out.read_text())
    pid = runtime.running("olladist-t@a.service")
    assert pid is not None
    runtime.reload("olladist-t@a.service")
    wait_for(lambda: "hup" in out.read_text())
    runtime.stop("olladist-t@a.service")
    assert runtime.running("olladist-t@a.service") is None
    assert not pid.alive()


def test_supervise_starts_enabled_units_and_restarts_dead_ones(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    runtime.enable("olladist-t@a.service")
    assert runtime.supervise() == ["olladist-t@a.service"]
    first = runtime.running("olladist-t@a.service")
    assert first is not None
    os.kill(first.pid, signal.SIGKILL)
    wait_for(lambda: not first.alive())
    assert runtime.supervise() == ["olladist-t@a.service"]
    second = runtime.running("olladist-t@a.service")
    assert second is not None and second.pid != first.pid
    assert runtime.supervise() == []


def test_a_new_runtime_object_finds_and_stops_what_another_started(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    runtime.start("olladist-t@a.service")
    r = runtime.running("olladist-t@a.service")
    assert r is not None
    other = LocalRuntime(Layout(tmp_path))
    assert other.known_units() == ["olladist-t@a.service"]
    other.stop_all()
    wait_for(lambda: not r.alive())


def test_a_failing_command_is_reported(tmp_path: Path) -> None:
    unit_dir = tmp_path / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    (unit_dir / "olladist-x.service").write_text(
        "[Service]\nExecStartPre=/bin/false\nExecStart=/bin/sleep 10\n"
    )
    rt = LocalRuntime(Layout(tmp_path))
    with pytest.raises(ToolError, match=r"olladist-x.service: `/bin/false` failed \(1\)"):
        rt.start("olladist-x.service")
    assert rt.running("olladist-x.service") is None


def test_a_unit_that_died_says_why_from_its_log(tmp_path: Path) -> None:
    unit_dir = tmp_path / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    script = "import sys, time; time.sleep(0.3); print('starting'); "
    script += "sys.exit('Error: listen tcp 127.0.0.1:11500: bind: address already in use')"
    (unit_dir / "olladist-x.service").write_text(
        f'[Service]\nExecStart={sys.executable} -c "{script}"\n'
    )
    rt = LocalRuntime(Layout(tmp_path))
    try:
        rt.start("olladist-x.service")
        wait_for(lambda: not rt.is_active("olladist-x.service"))
        why = rt.why_inactive("olladist-x.service")
        assert why.startswith("its log ends: Error: listen tcp 127.0.0.1:11500: bind: address")
        assert "olladist-x.service.log" in why
    finally:
        rt.stop_all()
