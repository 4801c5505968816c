from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_SPEC = REPO / "examples" / "cluster-spec"
SPECS = Path(__file__).resolve().parent / "specs"


@pytest.fixture
def example_spec() -> Path:
    return EXAMPLE_SPEC


def need(tool: str) -> str:
    """The path of a tool the test needs. CI installs every one of them (.ci/run), so a
    missing tool fails the test there instead of skipping it."""
    found = shutil.which(tool)
    if found is None:
        pytest.fail(f"{tool} is not installed: run .ci/run's install step or see README")
    return found


def olladist_cmd() -> list[str]:
    return [sys.executable, "-m", "olladist"]


from tests.harness.fixtures import sandbox_available, systemd_sandbox  # noqa: E402, F401
