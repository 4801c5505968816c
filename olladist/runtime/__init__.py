"""Runtimes: what starts, stops and reloads the node's services.

- ``none``: files and unit enablement only; runtime actions are reported, not executed.
- ``local``: olladist runs the rendered services itself (machines without systemd as PID 1).
- ``systemd``: systemctl on a real systemd.

All three take the same actions from the same plan; see ``olladist.apply``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Protocol

from olladist.errors import ToolError
from olladist.layout import Layout

log = logging.getLogger("olladist.runtime")


class Runtime(Protocol):
    name: str
    executes: bool  # False: runtime actions are only reported

    def enable(self, unit: str) -> None: ...
    def disable(self, unit: str) -> None: ...
    def daemon_reload(self) -> None: ...
    def start(self, unit: str) -> None: ...
    def stop(self, unit: str) -> None: ...
    def restart(self, unit: str) -> None: ...
    def reload(self, unit: str) -> None: ...
    def is_active(self, unit: str) -> bool:
        """Whether ``unit`` runs now: an enabled unit that does not is drift (stopped by hand,
        or failed for good)."""
        ...

    def why_inactive(self, unit: str) -> str:
        """What is known of why ``unit`` does not run (how it exited, its last log line), for
        error messages; empty when nothing is known."""
        ...

    def supervise(self) -> list[str]:
        """Start what should run and died; returns the units started (the daemon calls it
        while it waits). A runtime whose services restart on their own returns []."""
        ...

    def stop_all(self) -> None:
        """On the daemon's shutdown: stop the services this runtime started itself (none
        for a runtime whose services outlive the reconciler)."""
        ...


def systemctl_offline(layout: Layout, *args: str) -> None:
    """``systemctl --root`` edits enablement links without talking to a running systemd."""
    exe = shutil.which("systemctl")
    if exe is None:
        raise ToolError("systemctl not found", hint="install systemd (apt-get install systemd)")
    cmd = [exe, f"--root={layout.root}", *args]
    log.debug("run %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ToolError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")


class FilesOnly:
    """Writes files and enablement links; starts nothing."""

    name = "none"
    executes = False

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def enable(self, unit: str) -> None:
        systemctl_offline(self.layout, "enable", "--no-reload", unit)

    def disable(self, unit: str) -> None:
        systemctl_offline(self.layout, "disable", "--no-reload", unit)

    def daemon_reload(self) -> None:
        pass

    def start(self, unit: str) -> None:
        pass

    def stop(self, unit: str) -> None:
        pass

    def restart(self, unit: str) -> None:
        pass

    def reload(self, unit: str) -> None:
        pass

    def is_active(self, unit: str) -> bool:
        # Nothing runs here, so nothing can be found stopped; plans under this runtime do not
        # ask (runtime actions are only reported).
        return True

    def why_inactive(self, unit: str) -> str:
        return ""

    def supervise(self) -> list[str]:
        return []

    def stop_all(self) -> None:
        pass
