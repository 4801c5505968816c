"""Pulls in progress, told to this node's gateway so its live view can say why a model is not
ready yet ("gpu-a pulling (43%)") and that a failed pull is not coming.

The reconciler writes ``pulls.map`` (model -> ``43%`` or ``failed``) in HAProxy's memory over
the runtime socket; live.lua reads it with ``Map.new``, which shares the map HAProxy loaded.
Best effort: a gateway that does not run (or reloads, which empties the map) only loses the
detail, never a pull.
"""

from __future__ import annotations

import contextlib
import threading

from olladist.errors import ToolError
from olladist.gateway.runtime import HAProxyRuntime
from olladist.layout import ADMIN_SOCKET, GATEWAY_DIR, Layout
from olladist.names import InvalidModelName, normalize_model
from olladist.ollama import Progress

PULLS_MAP = f"{GATEWAY_DIR}/pulls.map"
FAILED = "failed"


def percent(p: Progress) -> str:
    """What a progress line shows: the share of the layer being downloaded."""
    if p.total > 0:
        return f"{min(100, 100 * p.completed // p.total)}%"
    return "0%"


class PullBoard:
    def __init__(self, layout: Layout) -> None:
        self.runtime = HAProxyRuntime(layout.real(ADMIN_SOCKET), timeout=1.0)
        self.map = layout.path(PULLS_MAP)
        self.shown: dict[str, str] = {}
        self.lock = threading.Lock()  # pulls run in parallel threads

    def progress(self, model: str, p: Progress) -> None:
        self._show(model, percent(p))

    def finished(self, failed: dict[str, str]) -> None:
        """After an apply: failed pulls stay marked, the others leave the map."""
        with self.lock:
            keys = {self._key(m) for m in failed}
            for key in list(self.shown):
                if key in keys:
                    self._set(key, FAILED)
                else:
                    self._command(f"del map {self.map} {key}")
                    del self.shown[key]
            for key in keys - set(self.shown):
                self._set(key, FAILED)

    def _show(self, model: str, value: str) -> None:
        with self.lock:
            key = self._key(model)
            if self.shown.get(key) != value:
                self._set(key, value)

    def _set(self, key: str, value: str) -> None:
        verb = "set" if key in self.shown else "add"
        self._command(f"{verb} map {self.map} {key} {value}")
        self.shown[key] = value

    @staticmethod
    def _key(model: str) -> str:
        try:
            return normalize_model(model)
        except InvalidModelName:
            return model

    def _command(self, command: str) -> None:
        # The gateway is not running or reloading: it only loses the detail.
        with contextlib.suppress(ToolError, ValueError):
            self.runtime.command(command, attempts=1)
