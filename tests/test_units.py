"""The shipped units: `systemd-analyze verify` clean, as shipped and as rewritten for a root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from olladist.layout import Layout
from olladist.units import (
    GATEWAY_UNIT,
    INSTANCE_TEMPLATE,
    RECONCILE_UNIT,
    for_layout,
    shipped_unit,
)
from tests.conftest import need

SHIPPED = (RECONCILE_UNIT, GATEWAY_UNIT, INSTANCE_TEMPLATE)
# verify checks that every program exists; on this machine olladist and the simulator (as
# ollama) live in the venv.
PROGRAMS = {
    "/usr/bin/olladist": str(Path(sys.prefix) / "bin" / "olladist"),
    "/usr/local/bin/ollama": str(Path(sys.prefix) / "bin" / "olladist-sim"),
}


def verify(unit_dir: Path) -> str:
    """verify the three units (an instance of the template) found in `unit_dir`; returns its
    output, which names our units only when something is wrong."""
    haproxy = need("haproxy")
    for name in SHIPPED:
        text = (unit_dir / name).read_text().replace("/usr/sbin/haproxy", haproxy)
        for shipped, here in PROGRAMS.items():
            text = text.replace(shipped, here)
        (unit_dir / name).write_text(text)
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:/lib/systemd/system"}
    units = [RECONCILE_UNIT, GATEWAY_UNIT, INSTANCE_TEMPLATE.replace("@", "@gpu0")]
    proc = subprocess.run(
        [need("systemd-analyze"), "verify", "--recursive-errors=yes", "--man=no", *units],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0, out
    return out


@pytest.mark.parametrize("rooted", [False, True], ids=["shipped", "rooted"])
def test_units_pass_systemd_analyze_verify(tmp_path: Path, rooted: bool) -> None:
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    layout = Layout(tmp_path / "root") if rooted else Layout()
    for name in SHIPPED:
        (unit_dir / name).write_text(for_layout(shipped_unit(name), layout))
    out = verify(unit_dir)
    assert not [line for line in out.splitlines() if "olladist" in line], out


def test_rooted_unit_keeps_every_write_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    text = for_layout(shipped_unit(RECONCILE_UNIT), Layout(root))
    lines = text.splitlines()
    for gone in ("StateDirectory=", "RuntimeDirectory=", "PrivateTmp=", "User=", "ProtectHome="):
        assert not [line for line in lines if line.startswith(gone)], gone
    dirs = f"{root}/var/lib/olladist {root}/run/olladist/reconcile"
    # systemd would have made these; under ProtectSystem=strict they must be made writable.
    assert f"ExecStartPre=+/bin/mkdir -p {dirs}" in lines
    assert f"ReadWritePaths={dirs}" in lines
    assert f"ReadWritePaths={root}/etc/olladist {root}/etc/systemd/system" in lines
    assert f"EnvironmentFile={root}/etc/olladist/olladist.env" in lines
    # The reconciler stages renders under $TMPDIR (/tmp) to validate them.
    assert "ReadWritePaths=/tmp" in lines
    # The directives come first in [Service], so the mkdir runs before any other ExecStartPre.
    service = lines.index("[Service]")
    assert lines[service + 2].startswith("ExecStartPre=+/bin/mkdir")


def test_root_slash_is_the_shipped_unit() -> None:
    for name in SHIPPED:
        assert for_layout(shipped_unit(name), Layout()) == shipped_unit(name)


def test_haproxy_units_allow_the_pcre_jit() -> None:
    """HAProxy compiles regex ACLs with PCRE2's JIT: under MemoryDenyWriteExecute=yes the config
    is refused ("jit compilation failed"), seen in the systemd sandbox. The reconciler runs
    `haproxy -c`, so the same holds for it."""
    for name in (GATEWAY_UNIT, RECONCILE_UNIT):
        assert "\nMemoryDenyWriteExecute=yes" not in shipped_unit(name)
