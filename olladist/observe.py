"""Observe the parts of a node olladist manages: its files and which units are enabled."""

from __future__ import annotations

import os
import stat

from olladist.files import File
from olladist.layout import Layout
from olladist.plan import WANTS_DIR, Observed
from olladist.state import State


def read_file(layout: Layout, path: str) -> tuple[str, int] | None:
    real = layout.real(path)
    try:
        st = os.lstat(real)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        # A directory or a link where we render a file: report it as different content.
        return (f"<not a regular file: {stat.filemode(st.st_mode)}>", stat.S_IMODE(st.st_mode))
    data = real.read_bytes()
    return data.decode("utf-8", errors="replace"), stat.S_IMODE(st.st_mode)


def enabled_units(layout: Layout) -> frozenset[str]:
    wants = layout.real(WANTS_DIR)
    try:
        names = os.listdir(wants)
    except FileNotFoundError:
        return frozenset()
    return frozenset(n for n in names if n.startswith("olladist-") and os.path.islink(wants / n))


def observe(layout: Layout, desired: dict[str, File], state: State) -> Observed:
    managed = state.managed()
    files = {}
    for path in sorted(set(desired) | managed):
        found = read_file(layout, path)
        if found is not None:
            files[path] = found
    return Observed(files, managed, enabled_units(layout), state.pending())
