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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from olladist.errors import RenderError, ToolError
from olladist.files import File
from olladist.layout import HAPROXY_CFG, LARGE_BODIES_CFG, SECRETS_DIR, SYSTEMD_DIR, Layout

log = logging.getLogger("olladist.validators")
T = TypeVar("T")

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
    _haproxy_check(config).result()


@dataclass
class _Check:
    """A validator running in the background; result() waits and raises what it found."""

    proc: subprocess.Popen[str]
    verdict: Callable[[int, str, str], None]

    def result(self) -> None:
        out, err = self.proc.communicate()
        self.verdict(self.proc.returncode, out, err)


def _start(cmd: list[str], verdict: Callable[[int, str, str], None], **kw: Any) -> _Check:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    return _Check(proc, verdict)


def _haproxy_check(config: Path) -> _Check:
    exe = _tool(HAPROXY, "install HAProxy >= 2.6 (Debian/Ubuntu: apt-get install haproxy)")

    def verdict(code: int, out: str, err: str) -> None:
        if code != 0:
            text = (out + err).strip()
            raise RenderError(f"{config.name} failed `haproxy -c`:\n{text}")

    # Not -q: it silences the alerts too, leaving an error without a reason.
    return _start([exe, "-c", "-f", str(config)], verdict)


def check_units(unit_dir: Path, units: list[str]) -> None:
    """``systemd-analyze verify --recursive-errors=yes`` on ``units`` found in ``unit_dir``.

    Warnings about parse problems only fail with --recursive-errors; we also treat any line
    naming one of our files as an error, since a unit that systemd warns about is not one we
    ship."""
    check = _units_check(unit_dir, units)
    if check is not None:
        check.result()


def _units_check(unit_dir: Path, units: list[str]) -> _Check | None:
    exe = _tool("systemd-analyze", "install systemd (it ships systemd-analyze)")
    if not units:
        return None
    # Our directory first, then the machine's own units (targets such as multi-user.target).
    system = ":".join(d for d in ("/etc/systemd/system", "/lib/systemd/system") if Path(d).is_dir())
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:{system}"}
    paths = [str(unit_dir / u) for u in units]

    def verdict(code: int, out: str, err: str) -> None:
        ours = [line for line in (out + err).splitlines() if str(unit_dir) in line]
        if code != 0 or ours:
            text = "\n".join(ours) or (out + err).strip()
            raise RenderError(f"units failed `systemd-analyze verify`:\n{text}")

    return _start([exe, "verify", "--recursive-errors=yes", "--man=no", *paths], verdict, env=env)


def validate_render(
    render: Callable[[Layout], dict[str, File]],
    staging: Path | None = None,
    live: Layout | None = None,
    node_local: tuple[str, ...] = (),
    meanwhile: Callable[[], T] | None = None,
) -> T | None:
    """Render into a staging root and run every validator on the result. ``live``: the node's
    layout, whose secrets folder is copied into the staging root (HAProxy opens those files).
    ``meanwhile``: called while the validators run (the render for the live layout: a tenth
    of a 1,000-node full tick off its wall time); its result is returned once they pass."""
    with tempfile.TemporaryDirectory(prefix="olladist-validate-") as tmp:
        root = staging or Path(tmp)
        layout = Layout(root)
        files = render(layout)
        for path, f in files.items():
            # A scratch copy for the validators: no temp file, fsync or rename (write_atomic's
            # cost, a tenth of a full tick, buys nothing in a directory deleted right after).
            real = layout.real(path)
            real.parent.mkdir(parents=True, exist_ok=True)
            real.write_bytes(f.content.encode())
            real.chmod(f.mode)
        if live is not None and live.real(SECRETS_DIR).is_dir():
            shutil.copytree(live.real(SECRETS_DIR), layout.real(SECRETS_DIR), dirs_exist_ok=True)
        for path in node_local:
            # Node-local files the config loads (API keys, ...) can live anywhere.
            if live is not None and live.real(path).is_file():
                layout.real(path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(live.real(path), layout.real(path))
        # The validators run side by side (each is mostly its own start-up), and every one is
        # waited for before the first failure is raised, so none outlives the staging root.
        checks: list[_Check] = []
        try:
            if HAPROXY_CFG in files:
                checks.append(_haproxy_check(layout.real(HAPROXY_CFG)))
            if LARGE_BODIES_CFG in files:
                checks.append(_haproxy_check(layout.real(LARGE_BODIES_CFG)))
            _stage_units(layout, files, checks)
            result = meanwhile() if meanwhile is not None else None
        finally:
            errors: list[BaseException] = []
            for c in checks:
                try:
                    c.result()
                except RenderError as exc:
                    errors.append(exc)
        if errors:
            raise errors[0]
        return result


def _stage_units(layout: Layout, files: dict[str, File], checks: list[_Check]) -> None:
    """Start `systemd-analyze verify` on the staged units (added to ``checks``)."""
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
    check = _units_check(unit_dir, units + instances)
    if check is not None:
        checks.append(check)
