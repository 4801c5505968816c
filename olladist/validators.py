"""Check rendered files with their real validators: ``haproxy -c`` and ``systemd-analyze verify``.

A render is validated in a staging root before anything is applied: the render is written
there with paths pointing into the staging root (see ``olladist.layout``), together with a copy
of the node-local secrets the config loads (never rendered), and each validator runs on it.
Any failure raises ``RenderError`` naming the file and the validator's own words.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from olladist.errors import RenderError, ToolError
from olladist.files import File, write_atomic
from olladist.layout import HAPROXY_CFG, LARGE_BODIES_CFG, SECRETS_DIR, SYSTEMD_DIR, Layout

log = logging.getLogger("olladist.validators")

HAPROXY = os.environ.get("OLLADIST_HAPROXY", "haproxy")


def _tool(name: str, hint: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ToolError(f"{name} not found on PATH", hint=hint)
    return found


# The gateway's config needs HAProxy 2.6 (balance hash, json_query, set-var-fmt).
MIN_HAPROXY = (2, 6)


def haproxy_version() -> tuple[str, str]:
    """(path, version) of the HAProxy olladist runs; ToolError when it is missing or older
    than 2.6. The one check of it, for doctor and dev alike."""
    exe = shutil.which(HAPROXY)
    if exe is None:
        raise ToolError(
            "haproxy is not installed (olladist's gateway is HAProxy >= 2.6)",
            hint="Debian/Ubuntu: sudo apt-get install haproxy (Debian 12 and Ubuntu 24.04 ship "
            ">= 2.6; RHEL 9's 2.4 is too old)",
        )
    out = subprocess.run([exe, "-v"], capture_output=True, text=True, check=False).stdout.split()
    version = out[2] if len(out) > 2 else "unknown"
    head = version.split("-", maxsplit=1)[0]
    if tuple(int(x) for x in head.split(".")[:2] if x.isdigit()) < MIN_HAPROXY:
        raise ToolError(
            f"haproxy {version} is too old; olladist needs 2.6 or newer",
            hint="install HAProxy >= 2.6 (Debian 12 and Ubuntu 24.04 ship it)",
        )
    return exe, version


def check_haproxy(config: Path) -> None:
    exe = _tool(HAPROXY, "install HAProxy >= 2.6 (Debian/Ubuntu: apt-get install haproxy)")
    # Not -q: it silences the alerts too, leaving an error without a reason.
    proc = subprocess.run(
        [exe, "-c", "-f", str(config)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip()
        raise RenderError(f"{config.name} failed `haproxy -c`:\n{out}")


def check_units(unit_dir: Path, units: list[str]) -> None:
    """``systemd-analyze verify --recursive-errors=yes`` on ``units`` found in ``unit_dir``.

    Warnings about parse problems only fail with --recursive-errors; we also treat any line
    naming one of our files as an error, since a unit that systemd warns about is not one we
    ship."""
    exe = _tool("systemd-analyze", "install systemd (it ships systemd-analyze)")
    if not units:
        return
    # Our directory first, then the machine's own units (targets such as multi-user.target).
    system = ":".join(d for d in ("/etc/systemd/system", "/lib/systemd/system") if Path(d).is_dir())
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:{system}"}
    paths = [str(unit_dir / u) for u in units]
    proc = subprocess.run(
        [exe, "verify", "--recursive-errors=yes", "--man=no", *paths],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if str(unit_dir) in line]
    if proc.returncode != 0 or ours:
        out = "\n".join(ours) or (proc.stdout + proc.stderr).strip()
        raise RenderError(f"units failed `systemd-analyze verify`:\n{out}")


def validate_render(
    render: Callable[[Layout], dict[str, File]],
    staging: Path | None = None,
    live: Layout | None = None,
    node_local: tuple[str, ...] = (),
) -> None:
    """Render into a staging root and run every validator on the result. ``live``: the node's
    layout, whose secrets folder is copied into the staging root (HAProxy opens those files)."""
    with tempfile.TemporaryDirectory(prefix="olladist-validate-") as tmp:
        root = staging or Path(tmp)
        layout = Layout(root)
        files = render(layout)
        for path, f in files.items():
            write_atomic(layout.real(path), f.content.encode(), f.mode)
        if live is not None and live.real(SECRETS_DIR).is_dir():
            shutil.copytree(live.real(SECRETS_DIR), layout.real(SECRETS_DIR), dirs_exist_ok=True)
        for path in node_local:
            # Node-local files the config loads (API keys, ...) can live anywhere.
            if live is not None and live.real(path).is_file():
                layout.real(path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(live.real(path), layout.real(path))
        if HAPROXY_CFG in files:
            check_haproxy(layout.real(HAPROXY_CFG))
        if LARGE_BODIES_CFG in files:
            check_haproxy(layout.real(LARGE_BODIES_CFG))
        unit_dir = layout.real(SYSTEMD_DIR)
        units = sorted(
            p.removeprefix(SYSTEMD_DIR + "/")
            for p in files
            if p.startswith(SYSTEMD_DIR + "/") and p.count("/") == 4 and not p.endswith("@.service")
        )
        instances = sorted(
            {
                p.split("/")[4].removesuffix(".d")
                for p in files
                if p.startswith(SYSTEMD_DIR + "/") and p.split("/")[4].endswith(".service.d")
            }
        )
        check_units(unit_dir, units + instances)
