"""What olladist remembers on a node, under the state dir (``/var/lib/olladist``).

- ``manifest.json``: every path olladist wrote, so it removes only files it owns;
- ``pending.json``: runtime actions (restart, reload, ...) of an apply that has written files
  but not yet acted on them, so that a crash between the two does not lose a restart;
- ``model-errors.json``: why the last pull of a model failed, shown by ``diff`` until it works;
- ``models.json``: pins the registry did not serve and preloads done, per commit, so that
  neither is retried every tick (``olladist.models.ModelMemory``);
- ``status.json``: the last reconcile's result, for ``olladist status``.
Each is written atomically; a missing file means empty, an unreadable one is an error that
names it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from olladist.errors import OlladistError
from olladist.files import write_atomic
from olladist.layout import STATE_DIR, Layout
from olladist.plan import Action, Kind


class StateError(OlladistError):
    pass


class State:
    def __init__(self, layout: Layout) -> None:
        self.dir = layout.real(STATE_DIR)

    def _read(self, name: str) -> Any:
        path = self.dir / name
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StateError(
                f"cannot read {path}: {exc}",
                hint="move the file aside; olladist rebuilds it on the next apply",
            ) from exc

    def _write(self, name: str, data: Any) -> None:
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        write_atomic(self.dir / name, text.encode(), 0o644)

    def managed(self) -> frozenset[str]:
        data = self._read("manifest.json") or {}
        return frozenset(data.get("paths", []))

    def set_managed(self, paths: set[str] | frozenset[str]) -> None:
        self._write("manifest.json", {"paths": sorted(paths)})

    def pending(self) -> tuple[Action, ...]:
        data = self._read("pending.json") or []
        return tuple(
            Action(
                Kind(a["kind"]), a["target"], a["reason"] + " (left pending by an earlier apply)"
            )
            for a in data
        )

    def set_pending(self, actions: list[Action] | tuple[Action, ...]) -> None:
        self._write(
            "pending.json",
            [{"kind": str(a.kind), "target": a.target, "reason": a.reason} for a in actions],
        )

    def model_errors(self) -> dict[str, str]:
        data = self._read("model-errors.json")
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def set_model_errors(self, errors: dict[str, str]) -> None:
        self._write("model-errors.json", errors)

    def model_records(self) -> dict[str, Any]:
        data = self._read("models.json")
        return data if isinstance(data, dict) else {}

    def set_model_records(self, data: dict[str, Any]) -> None:
        self._write("models.json", data)

    def status(self) -> dict[str, Any] | None:
        data = self._read("status.json")
        return data if isinstance(data, dict) else None

    def set_status(self, status: dict[str, Any]) -> None:
        self._write("status.json", status)

    @property
    def path(self) -> Path:
        return self.dir
