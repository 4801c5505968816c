"""`systemd-analyze security --offline=true` of every unit the package ships (the files under
/usr/lib/systemd/system are these, byte for byte: tests/packaging/test_deb.py), at 4.0 or less,
and each far below the official Ollama unit's. docs/systemd.md quotes the figures."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from olladist.units import shipped_unit
from tests.conftest import REPO, need

UNITS = {
    "olladist-reconcile.service": "olladist-reconcile.service",
    "olladist-gateway.service": "olladist-gateway.service",
    # A template is scored through an instance of it.
    "olladist-ollama@gpu0.service": "olladist-ollama@.service",
}
# The unit Ollama's Linux installer writes (install.sh), without hardening.
OFFICIAL_OLLAMA = """[Unit]
Description=Ollama Service
After=network-online.target

[Service]
ExecStart=/usr/bin/ollama serve
User=ollama
Group=ollama
Restart=always
RestartSec=3
Environment="PATH=/usr/local/bin:/usr/bin:/bin"

[Install]
WantedBy=default.target
"""


def exposure(path: Path) -> float:
    out = subprocess.run(
        [need("systemd-analyze"), "security", "--offline=true", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        cwd=path.parent,
    ).stdout
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", out)
    assert found, out
    return float(found.group(1))


def _documented() -> dict[str, float]:
    text = (REPO / "docs" / "systemd.md").read_text()
    rows = re.findall(r"^\| (?:official )?`([\w@.-]+)` \| (\d+\.\d) ", text, re.MULTILINE)
    return {name: float(score) for name, score in rows}


@pytest.fixture
def scores(tmp_path: Path) -> dict[str, float]:
    for name, shipped in UNITS.items():
        (tmp_path / name).write_text(shipped_unit(shipped))
    (tmp_path / "ollama.service").write_text(OFFICIAL_OLLAMA)
    return {name: exposure(tmp_path / name) for name in [*UNITS, "ollama.service"]}


def test_every_shipped_unit_scores_at_most_4(scores: dict[str, float]) -> None:
    for name in UNITS:
        assert scores[name] <= 4.0, (name, scores[name])
        assert scores[name] < scores["ollama.service"] - 5
    assert shutil.which("systemd-analyze")


def test_docs_quote_the_scores(scores: dict[str, float]) -> None:
    assert _documented() == scores, "update the exposure table of docs/systemd.md"
