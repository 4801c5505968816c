"""write_atomic: whole files only, and no pile of temp files from killed writes."""

from __future__ import annotations

import os
import time
from pathlib import Path

from olladist.files import STALE_TEMP_AGE, write_atomic


def test_temp_files_left_by_a_killed_write_are_removed_once_stale(tmp_path: Path) -> None:
    target = tmp_path / "haproxy.cfg"
    stale = tmp_path / ".haproxy.cfg.abcd1234.tmp"  # as mkstemp names them
    fresh = tmp_path / ".haproxy.cfg.efgh5678.tmp"  # maybe a write in progress
    other = tmp_path / ".models.map.abcd1234.tmp"  # another file's: not ours to judge
    for path in (stale, fresh, other):
        path.write_text("half a fil")
    old = time.time() - STALE_TEMP_AGE - 5
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    write_atomic(target, b"whole\n", 0o640)
    assert target.read_text() == "whole\n"
    assert oct(target.stat().st_mode & 0o777) == "0o640"
    assert not stale.exists()
    assert fresh.exists()
    assert other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [target.name, fresh.name, other.name]
    )
