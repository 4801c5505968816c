"""HAProxy master-worker as a Type=notify unit: the gateway's pattern, in the sandbox."""

from __future__ import annotations

import os
import shutil
import time
import urllib.request

import pytest

from tests.harness.ports import free_port
from tests.harness.systemd_sandbox import SystemdSandbox

pytestmark = pytest.mark.system

UNIT = "olladist-test-haproxy.service"
# Loopback only: never through a proxy configured in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _config(port: int, answer: str) -> str:
    return (
        "global\n  log stderr local0 warning\n"
        "defaults\n  mode http\n  timeout client 5s\n  timeout server 5s\n"
        "  timeout connect 1s\n"
        f"frontend answer\n  bind 127.0.0.1:{port}\n"
        f"  http-request return status 200 content-type text/plain string {answer}\n"
    )


def _get(port: int, want: str, timeout: float = 5.0) -> str:
    """The body at `port`, polled until it is `want` (a reload takes effect asynchronously)."""
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        try:
            with _OPENER.open(f"http://127.0.0.1:{port}/", timeout=2) as response:
                body = response.read().decode()
        except OSError:
            body = ""
        if body == want:
            return body
        time.sleep(0.05)
    return body


def test_haproxy_notify_unit_serves_and_reloads_hitlessly(
    systemd_sandbox: SystemdSandbox,
) -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        if os.environ.get("CI") == "true":
            pytest.fail("haproxy is not installed")
        pytest.skip("haproxy is not installed")
    sandbox = systemd_sandbox
    port = free_port()
    _, config = sandbox.install_file("haproxy-test.cfg", _config(port, "v1"), reload=False)
    sandbox.install_unit(
        UNIT,
        "[Service]\nType=notify\n"
        f"ExecStartPre={haproxy} -c -q -f {config}\n"
        f"ExecStart={haproxy} -Ws -f {config}\n"
        f"ExecReload={haproxy} -c -q -f {config}\n"
        "ExecReload=/bin/kill -USR2 $MAINPID\n"
        "KillMode=mixed\n"
        "LimitCORE=0\n",
    )
    sandbox.systemctl("start", UNIT)  # returns once the master sent READY=1
    master = sandbox.main_pid(UNIT)
    assert _get(port, "v1") == "v1"

    sandbox.install_file("haproxy-test.cfg", _config(port, "v2"), reload=False)
    sandbox.systemctl("reload", UNIT)
    assert _get(port, "v2") == "v2"
    assert sandbox.main_pid(UNIT) == master
    assert sandbox.show(UNIT, "ActiveState") == "active"
    assert sandbox.show(UNIT, "NRestarts") == "0"
