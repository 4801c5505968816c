from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def gw_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pytest temp dir with a short name: HAProxy refuses unix socket paths over 97
    characters, and a root named after a long test name would cross that."""
    return tmp_path_factory.mktemp("g")
