"""Every script in bench/ runs as the docs say (`python bench/NAME.py`), from any directory:
the repository root is not on sys.path then, so an import of `tests.` or `bench.` would fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
# Scripts, not the helpers they share (bench/common.py).
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if "__main__" in p.read_text())


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_starts_from_another_directory(script: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
