"""diff and apply under --root: idempotent, hand edits are drift, stale files are removed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from olladist.cli import main
from olladist.layout import Layout
from olladist.plan import Kind
from olladist.reconcile import full_plan, load_desired
from olladist.runtime import FilesOnly
from olladist.specload import load_spec
from olladist.state import State
from tests.conftest import EXAMPLE_SPEC, need, node_secrets


@pytest.fixture
def spec_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "spec"
    shutil.copytree(EXAMPLE_SPEC, dst)
    return dst


@pytest.fixture
def root(short_root: Path, spec_copy: Path) -> Path:
    node_secrets(Layout(short_root), load_spec(spec_copy))
    return short_root


def run(*args: str) -> int:
    return main([*args])


def common(spec: Path, root: Path, node: str = "gpu-a") -> list[str]:
    # Validation needs the ollama binary to exist; these tests are about files, not validators.
    return ["--spec", str(spec), "--root", str(root), "--node", node, "--no-validate"]


def test_apply_then_no_drift(
    spec_copy: Path, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    need("systemctl")
    assert run("diff", *common(spec_copy, root)) == 1
    assert run("apply", *common(spec_copy, root)) == 0
    capsys.readouterr()
    assert run("diff", *common(spec_copy, root)) == 0
    assert "no drift" in capsys.readouterr().out
    # Units are enabled the way systemctl sees it.
    out = subprocess.run(
        [
            "systemctl",
            f"--root={root}",
            "is-enabled",
            "olladist-ollama@gpu0.service",
            "olladist-gateway.service",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.stdout.split() == ["enabled", "enabled"], out


def test_hand_edit_is_drift_and_apply_restores_it(
    spec_copy: Path, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("apply", *common(spec_copy, root)) == 0
    dropin = root / "etc/systemd/system/olladist-ollama@gpu0.service.d/10-olladist.conf"
    original = dropin.read_text()
    dropin.write_text(original.replace("OLLAMA_NUM_PARALLEL=4", "OLLAMA_NUM_PARALLEL=64"))
    capsys.readouterr()
    assert run("diff", *common(spec_copy, root)) == 1
    out = capsys.readouterr().out
    assert '-Environment="OLLAMA_NUM_PARALLEL=64"' in out
    assert '+Environment="OLLAMA_NUM_PARALLEL=4"' in out
    assert "restart olladist-ollama@gpu0.service (its drop-in changed)" in out
    assert run("apply", *common(spec_copy, root)) == 0
    assert dropin.read_text() == original
    assert run("diff", *common(spec_copy, root)) == 0


def test_mode_change_is_drift(spec_copy: Path, root: Path) -> None:
    run("apply", *common(spec_copy, root))
    cfg = root / "etc/olladist/haproxy.cfg"
    mode = cfg.stat().st_mode & 0o777
    cfg.chmod(0o666)
    assert run("diff", *common(spec_copy, root)) == 1
    run("apply", *common(spec_copy, root))
    assert cfg.stat().st_mode & 0o777 == mode


def test_removed_instance_is_stopped_disabled_and_its_files_removed(
    spec_copy: Path, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run("apply", *common(spec_copy, root))
    node_file = spec_copy / "nodes" / "gpu-a.yaml"
    node_file.write_text(
        "\n".join(line for line in node_file.read_text().splitlines() if "gpu1" not in line) + "\n"
    )
    # A file olladist did not write, next to its own, must survive.
    foreign = root / "etc/systemd/system/olladist-ollama@gpu1.service.d/99-local.conf"
    foreign.write_text("[Service]\n")
    capsys.readouterr()
    assert run("diff", "--json", *common(spec_copy, root)) == 1
    plan = json.loads(capsys.readouterr().out)
    kinds = [(a["kind"], a["target"]) for a in plan["actions"]]
    assert kinds[0] == ("stop", "olladist-ollama@gpu1.service")
    assert (
        "remove",
        "/etc/systemd/system/olladist-ollama@gpu1.service.d/10-olladist.conf",
    ) in kinds
    assert ("disable", "olladist-ollama@gpu1.service") in kinds
    assert run("apply", *common(spec_copy, root)) == 0
    assert not (
        root / "etc/systemd/system/olladist-ollama@gpu1.service.d/10-olladist.conf"
    ).exists()
    assert foreign.exists()
    assert not (
        root / "etc/systemd/system/multi-user.target.wants/olladist-ollama@gpu1.service"
    ).exists()
    assert run("diff", *common(spec_copy, root)) == 0


def test_dry_run_changes_nothing(spec_copy: Path, root: Path) -> None:
    assert run("apply", "--dry-run", *common(spec_copy, root)) == 0
    assert not root.exists() or not any(root.rglob("*.cfg"))


def test_unknown_node_is_a_clear_error(
    spec_copy: Path, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("diff", *common(spec_copy, root, node="nope")) == 2
    err = capsys.readouterr().err
    assert "error: node 'nope' is not in the spec (nodes: gpu-a, gpu-b, gpu-c)" in err


class _StoppedRuntime(FilesOnly):
    """Files as FilesOnly, but claims to run services, none of which is active."""

    executes = True

    def is_active(self, unit: str) -> bool:
        return False


def test_an_enabled_unit_that_does_not_run_is_drift(spec_copy: Path, root: Path) -> None:
    assert run("apply", *common(spec_copy, root)) == 0
    layout = Layout(root)
    desired = load_desired(spec_copy, "gpu-a", layout, validate=False)
    p = full_plan(desired, layout, State(layout), _StoppedRuntime(layout))
    starts = {(a.kind, a.target, a.reason) for a in p.actions if a.kind is Kind.START}
    assert (Kind.START, "olladist-gateway.service", "enabled but not running") in starts
    assert (Kind.START, "olladist-ollama@gpu0.service", "enabled but not running") in starts
