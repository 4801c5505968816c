"""Progress of long work (model pulls): a bar on a terminal, one line per step in logs."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

from olladist.ollama import Progress

log = logging.getLogger("olladist.progress")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


class PullProgress:
    """Callable for ModelSync(on_progress=...). Thread-safe: pulls run in parallel."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        stream = stream or sys.stderr
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self._last: dict[str, str] = {}
        self._drawn = 0.0
        self._lock = threading.Lock()

    def __call__(self, model: str, p: Progress) -> None:
        with self._lock:
            if self.tty:
                self._draw(model, p)
            elif self._last.get(model) != p.status:
                # Logs get one line per step, not one per chunk.
                self._last[model] = p.status
                extra = f" ({_size(p.total)})" if p.total else ""
                print(f"pull {model}: {p.status}{extra}", file=self.stream, flush=True)

    def _draw(self, model: str, p: Progress) -> None:
        now = time.monotonic()
        final = p.status == "success"
        if not final and now - self._drawn < 0.1 and self._last.get(model) == p.status:
            return
        self._drawn = now
        self._last[model] = p.status
        if p.total:
            frac = min(1.0, p.completed / p.total)
            bar = "#" * int(frac * 30)
            line = f"{model:<28} [{bar:<30}] {frac:4.0%} {_size(p.completed)}/{_size(p.total)}"
        else:
            line = f"{model:<28} {p.status}"
        self.stream.write("\r\033[K" + line + ("\n" if final else ""))
        self.stream.flush()
