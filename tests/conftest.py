from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from olladist.files import File
from olladist.gateway.lua import shipped_lua
from olladist.gateway.render import SHIPPED_PATHS
from olladist.layout import Layout
from olladist.nodeconfig import write_peer_secret
from olladist.spec import Spec

REPO = Path(__file__).resolve().parent.parent

# No test reaches a host outside loopback: olladist's model transfer would ask the registry a
# model's name points to (registry.ollama.ai). Tests of transfers point it at the loopback test
# registry themselves; every other olladist a test starts (in-process or as a child) pulls
# through its simulator.
os.environ.setdefault("OLLADIST_REGISTRY", "ollama")
EXAMPLE_SPEC = REPO / "examples" / "cluster-spec"
SPECS = Path(__file__).resolve().parent / "specs"


@pytest.fixture
def example_spec() -> Path:
    return EXAMPLE_SPEC


@pytest.fixture
def short_root() -> Iterator[Path]:
    """A node root with a short path: HAProxy limits unix socket paths to 97 characters, and
    the gateway's sockets live under the root (pytest's tmp_path is too long)."""
    path = Path(tempfile.mkdtemp(prefix="od-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# Seeds that change the iteration order of sets and dicts keyed by str: a result that depends
# on that order differs between them (what one process rendering twice cannot show).
HASH_SEEDS = (0, 1, 4242)


def python_with_hash_seed(code: str, *args: str, seed: int) -> str:
    """Run ``code`` in a fresh interpreter with PYTHONHASHSEED=seed; return its stdout."""
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def need(tool: str) -> str:
    """The path of a tool the test needs. CI installs every one of them (.ci/run), so a
    missing tool fails the test there instead of skipping it."""
    found = shutil.which(tool)
    if found is None:
        pytest.fail(f"{tool} is not installed: run .ci/run's install step or see README")
    return found


def node_secrets(layout: Layout, spec: Spec) -> Layout:
    """The node-local files an operator puts on a node (never rendered): the peer secret and,
    when the spec names one, the API keys file (sha256 hex of each key, one a line)."""
    write_peer_secret(layout)
    if spec.gateway.api_keys_file:
        keys = layout.real(spec.gateway.api_keys_file)
        keys.parent.mkdir(parents=True, exist_ok=True)
        keys.write_text(hashlib.sha256(b"test-key").hexdigest() + "\n")
    return layout


def assert_golden(base: Path, files: dict[str, File]) -> None:
    """Rendered ``files`` equal the golden tree under ``base``; with OLLADIST_UPDATE_GOLDEN=1
    the tree is rewritten first (on purpose: review the diff before committing it).

    Files shipped with the package (the same on every node, e.g. live.lua) are left out: they
    are checked to be the shipped bytes instead of being copied into every node's tree."""
    for path in SHIPPED_PATHS & files.keys():
        assert files[path].content == shipped_lua(path.rsplit("/", 1)[1]), path
    files = {p: f for p, f in files.items() if p not in SHIPPED_PATHS}
    if os.environ.get("OLLADIST_UPDATE_GOLDEN") == "1":
        shutil.rmtree(base, ignore_errors=True)
        for path, f in files.items():
            target = base / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f.content)
    kept = sorted("/" + str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())
    assert kept == list(files), "rendered paths differ from golden; OLLADIST_UPDATE_GOLDEN=1"
    for path, f in files.items():
        assert (base / path.lstrip("/")).read_text() == f.content, path


def olladist_cmd() -> list[str]:
    return [sys.executable, "-m", "olladist"]


from tests.harness.fixtures import sandbox_available, systemd_sandbox  # noqa: E402, F401
