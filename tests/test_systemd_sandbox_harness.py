"""The sandbox harness's pure parts: availability and path mapping (no systemd started)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.harness import systemd_sandbox
from tests.harness.systemd_sandbox import SandboxError, SystemdSandbox


def test_not_root_is_a_reason_to_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert systemd_sandbox.unavailable_reason() == "the systemd sandbox needs root"


def test_a_missing_tool_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "nsenter" else "/bin/x")
    assert systemd_sandbox.unavailable_reason() == "the systemd sandbox needs nsenter"


def test_inner_paths(tmp_path: Path) -> None:
    sandbox = SystemdSandbox(tmp_path / "sb")
    assert sandbox.inner_path(sandbox.unit_dir / "x.py") == "/etc/systemd/system/x.py"
    assert sandbox.inner_path(sandbox.private_tmp / "a" / "b") == "/tmp/a/b"
    assert sandbox.inner_path(sandbox.private_var_tmp / "c") == "/var/tmp/c"
    assert sandbox.inner_path("/usr/bin/python3") == "/usr/bin/python3"
    for hidden in ("/tmp/elsewhere", "/var/tmp/x"):
        with pytest.raises(SandboxError, match="hidden in the sandbox"):
            sandbox.inner_path(hidden)


def test_python_is_the_running_interpreter_when_visible(tmp_path: Path) -> None:
    sandbox = SystemdSandbox(tmp_path / "sb", share=(Path(sys.executable).parent.parent,))
    # Outside /tmp the interpreter is visible as is; under /tmp (a checkout there) only
    # through the shared folders, at the same path.
    assert sandbox.python == sys.executable


def test_closing_an_unstarted_sandbox_does_nothing(tmp_path: Path) -> None:
    sandbox = SystemdSandbox(tmp_path / "sb")
    sandbox.close()
    assert not sandbox.cgroup.exists()
    with pytest.raises(SandboxError, match="not running"):
        _ = sandbox.pid
