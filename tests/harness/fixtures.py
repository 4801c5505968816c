"""pytest fixtures for the systemd sandbox.

Wire them in with `from tests.harness.fixtures import sandbox_available, systemd_sandbox`
in a conftest.py (both names must be imported for pytest to see them).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.systemd_sandbox import SystemdSandbox, unavailable_reason


@pytest.fixture
def sandbox_available() -> None:
    """Skip the test where the sandbox cannot run (not root, no unshare or cgroup2).

    Under CI (CI=true, root) the sandbox must work, so there it fails instead of skipping.
    """
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must run the systemd sandbox tests")
    pytest.skip(reason)


# The checkout and this interpreter's environment: units run the venv's Python on the
# checkout's code, so where they live under the host's /tmp (a CI clone may), they are shared.
_CODE = (Path(__file__).resolve().parents[2], Path(sys.prefix))


@pytest.fixture
def systemd_sandbox(sandbox_available: None, tmp_path: Path) -> Iterator[SystemdSandbox]:
    """A booted systemd in private namespaces, torn down after the test."""
    with SystemdSandbox(tmp_path / "systemd-sandbox", share=_CODE) as sandbox:
        sandbox.wait_until_running()
        yield sandbox
