"""Headless Chromium from the distribution (Debian's `chromium`), driven by Playwright.

Playwright never downloads a browser here: it is pointed at /usr/bin/chromium, with a fresh
profile each time and every background service (updates, sync, QUIC, first-run) turned off, so
the browser talks to nothing but the page under test on loopback.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


@contextmanager
def chromium(viewport: dict[str, int] | None = None) -> Iterator[Any]:
    """A browser context (Playwright ``BrowserContext``) on a fresh profile."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="od-chromium-")
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                args=ARGS,
                headless=True,
                viewport=viewport or DESKTOP,
            )
            try:
                yield ctx
            finally:
                ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
