"""The systemd runtime: systemctl on a running systemd (PID 1, or the test sandbox's)."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from olladist.errors import ToolError

log = logging.getLogger("olladist.runtime.systemd")


def booted_with_systemd() -> bool:
    """sd_booted(): the way systemd itself tells whether it is PID 1."""
    return Path("/run/systemd/system").is_dir()


class SystemdRuntime:
    name = "systemd"
    executes = True

    def __init__(self, systemctl: list[str] | None = None) -> None:
        exe = shutil.which("systemctl")
        if systemctl is None and exe is None:
            raise ToolError("systemctl not found", hint="install systemd")
        self.systemctl = systemctl or [str(exe)]

    def _run(self, *args: str) -> str:
        cmd = [*self.systemctl, *args]
        log.debug("run %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip()
            raise ToolError(
                f"`systemctl {' '.join(args)}` failed: {detail}",
                hint=f"see: journalctl -u {args[-1]} -n 50"
                if args[-1].endswith(".service")
                else None,
            )
        return proc.stdout

    def enable(self, unit: str) -> None:
        self._run("enable", "--no-reload", unit)

    def disable(self, unit: str) -> None:
        self._run("disable", "--no-reload", unit)

    def daemon_reload(self) -> None:
        self._run("daemon-reload")

    def start(self, unit: str) -> None:
        self._run("start", unit)

    def stop(self, unit: str) -> None:
        self._run("stop", unit)

    def restart(self, unit: str) -> None:
        self._run("restart", unit)

    def reload(self, unit: str) -> None:
        # olladist-gateway.service validates the config in ExecReload before signalling. A
        # unit that is not running (stopped by hand, or failed) cannot be reloaded: it is
        # started instead, with the new config, rather than failing every reconcile.
        self._run("reload-or-restart", unit)

    def is_active(self, unit: str) -> bool:
        proc = subprocess.run(
            [*self.systemctl, "is-active", "--quiet", unit], check=False, timeout=60
        )
        return proc.returncode == 0

    def why_inactive(self, unit: str) -> str:
        try:
            out = self._run("show", "--property=ActiveState,Result,ExecMainStatus", unit)
        except (ToolError, subprocess.TimeoutExpired):
            return ""
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        facts = [f"{props.get('ActiveState', '?')}, result {props.get('Result', '?')}"]
        if props.get("ExecMainStatus", "0") != "0":
            facts.append(f"exit status {props['ExecMainStatus']}")
        return "; ".join(facts) + f"; see: journalctl -u {unit} -n 50"

    def supervise(self) -> list[str]:
        # systemd restarts the units itself (Restart=always).
        return []

    def stop_all(self) -> None:
        # The services are systemd's: they keep running while the reconciler restarts.
        pass
