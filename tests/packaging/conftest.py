"""Built once per session: the wheel, the sdist, the wheelhouse and the .deb (slow: ~1.5 min)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, need


@dataclass(frozen=True)
class Built:
    dist: Path  # the wheel and the sdist
    wheels: Path  # olladist's wheel and every dependency's: an offline install needs nothing else
    out: Path

    @property
    def wheel(self) -> Path:
        (wheel,) = self.dist.glob("olladist-*.whl")
        return wheel

    @property
    def sdist(self) -> Path:
        (sdist,) = self.dist.glob("olladist-*.tar.gz")
        return sdist


def _run(*cmd: str) -> str:
    # The scripts run with this interpreter (a 3.11, as the package's python3 dependency).
    env = {"PYTHON": sys.executable, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """packaging/build-wheels: the one step that reads a package index (the local one here)."""
    out = tmp_path_factory.mktemp("pkg")
    _run(str(REPO / "packaging" / "build-wheels"), str(out))
    return Built(out / "dist", out / "wheels", out)


def build_deb(built: Built, version: str) -> Path:
    """packaging/build-deb, offline from the wheelhouse; returns the .deb."""
    need("dpkg-deb")
    lines = _run(
        str(REPO / "packaging" / "build-deb"),
        "--wheels",
        str(built.wheels),
        "--version",
        version,
        "--out",
        str(built.out / "deb"),
    ).split()
    return Path(lines[-1])


@pytest.fixture(scope="session")
def deb(built: Built) -> Path:
    return build_deb(built, "0.1.0-1")
