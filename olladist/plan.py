"""Plan: the difference between desired and actual state, as a list of actions (values).

``diff`` prints a plan, ``apply --dry-run`` prints it and stops, ``apply`` executes the same
list, so what is shown and what is done cannot disagree. An empty plan means no drift.

One exception, on purpose: the model actions (``pull``, ``delete-model``, ``preload``). The
model store and what is loaded can only be observed through a running instance, and the plan
is made before the instances it starts or restarts run: a new node's store cannot be read
yet (the plan notes "models checked once the instances run"), and a restarted instance has
nothing loaded, so its preloads are not in the plan. ``reconcile.execute`` therefore applies
the file and unit actions of the plan, waits until the instances answer, observes the store
again and runs the model actions of that observation. They equal the plan's model actions
whenever the plan starts or restarts no instance and the store did not change in between;
``olladist apply`` prints the model actions that were not in the plan it showed.

Planning is pure: it takes the rendered files, what was observed on the node, and what the
previous apply left pending, and returns actions in the order they must run.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from olladist.files import File
from olladist.layout import GATEWAY_DIR, HAPROXY_CFG, SYSTEMD_DIR
from olladist.units import GATEWAY_UNIT, INSTANCE_TEMPLATE, dropin_unit, instance_name

WANTS_DIR = f"{SYSTEMD_DIR}/multi-user.target.wants"


class Kind(StrEnum):
    WRITE = "write"
    REMOVE = "remove"
    ENABLE = "enable"
    DISABLE = "disable"
    DAEMON_RELOAD = "daemon-reload"
    START = "start"
    RESTART = "restart"
    RELOAD = "reload"
    STOP = "stop"
    PULL = "pull"
    DELETE_MODEL = "delete-model"
    PRELOAD = "preload"
    REPORT = "report"  # drift olladist will not correct (policy), shown but not acted on

    @property
    def touches_files(self) -> bool:
        return self in (Kind.WRITE, Kind.REMOVE, Kind.ENABLE, Kind.DISABLE)

    @property
    def is_model(self) -> bool:
        return self in (Kind.PULL, Kind.DELETE_MODEL, Kind.PRELOAD)

    @property
    def is_runtime(self) -> bool:
        return not self.touches_files and not self.is_model and self is not Kind.REPORT


@dataclass(frozen=True)
class Action:
    kind: Kind
    target: str  # a node path for file actions, a unit name for unit actions
    reason: str
    content: str | None = None  # WRITE: the new content
    mode: int | None = None  # WRITE: the new mode
    diff: str = ""  # WRITE: unified diff from the current content

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": str(self.kind), "target": self.target, "reason": self.reason}
        if self.mode is not None:
            out["mode"] = f"{self.mode:04o}"
        if self.diff:
            out["diff"] = self.diff
        return out


@dataclass(frozen=True)
class Observed:
    """What is on the node now (only the parts olladist manages)."""

    files: dict[str, tuple[str, int]]  # node path -> (content, mode), for desired + managed paths
    managed: frozenset[str]  # paths olladist wrote before (its manifest)
    enabled: frozenset[str]  # units with a link in multi-user.target.wants
    pending: tuple[Action, ...] = ()  # runtime actions an interrupted apply left undone


@dataclass(frozen=True)
class Plan:
    node: str
    actions: tuple[Action, ...] = field(default_factory=tuple)
    notes: tuple[str, ...] = ()  # what was not checked, and why (not drift)

    @property
    def drift(self) -> bool:
        return bool(self.actions)

    def runtime_actions(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind.is_runtime)

    def with_actions(self, more: list[Action]) -> Plan:
        return Plan(self.node, self.actions + tuple(more), self.notes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "drift": self.drift,
            "actions": [a.to_dict() for a in self.actions],
            "notes": list(self.notes),
        }


def is_rendered_unit(unit: str) -> bool:
    """Units whose enablement follows the spec: the gateway and the instances. Not the
    reconciler itself, which the operator enables (and which must survive its own apply)."""
    return unit == GATEWAY_UNIT or instance_name(unit) is not None


def desired_units(desired: dict[str, File]) -> set[str]:
    units = {u for p in desired if (u := dropin_unit(p))}
    if HAPROXY_CFG in desired:
        units.add(GATEWAY_UNIT)
    return units


def _unified(path: str, old: str, new: str) -> str:
    lines = difflib.unified_diff(
        old.splitlines(keepends=True),
        new.splitlines(keepends=True),
        fromfile=f"a{path}",
        tofile=f"b{path}",
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def plan(node: str, desired: dict[str, File], observed: Observed) -> Plan:
    actions: list[Action] = []
    changed: set[str] = set()
    for path, f in desired.items():
        current = observed.files.get(path)
        if current is None:
            actions.append(Action(Kind.WRITE, path, "missing", f.content, f.mode))
            changed.add(path)
        elif current[0] != f.content:
            diff = _unified(path, current[0], f.content)
            actions.append(Action(Kind.WRITE, path, "content differs", f.content, f.mode, diff))
            changed.add(path)
        elif current[1] != f.mode:
            reason = f"mode {current[1]:04o}, want {f.mode:04o}"
            actions.append(Action(Kind.WRITE, path, reason, f.content, f.mode))
            changed.add(path)
    stale = sorted(p for p in observed.managed if p not in desired and p in observed.files)
    for path in stale:
        actions.append(Action(Kind.REMOVE, path, "no longer rendered"))

    want = desired_units(desired)
    # Stopping a removed instance comes before its files go, so it stops as it was configured.
    removed_units = sorted(u for p in stale if (u := dropin_unit(p)) and u not in want)
    stops = [Action(Kind.STOP, u, "instance removed from the spec") for u in removed_units]
    actions[:0] = stops
    for unit in sorted(observed.enabled - want):
        if is_rendered_unit(unit):
            actions.append(Action(Kind.DISABLE, unit, "not in the spec for this node"))
    for unit in sorted(want - observed.enabled):
        actions.append(Action(Kind.ENABLE, unit, "in the spec for this node"))

    unit_files_changed = any(p.startswith(SYSTEMD_DIR + "/") for p in changed) or any(
        p.startswith(SYSTEMD_DIR + "/") for p in stale
    )
    runtime: list[Action] = list(observed.pending)
    if unit_files_changed:
        runtime.append(Action(Kind.DAEMON_RELOAD, "systemd", "unit files changed"))
    template_changed = f"{SYSTEMD_DIR}/{INSTANCE_TEMPLATE}" in changed
    for unit in sorted(u for u in want if u != GATEWAY_UNIT):
        dropin_changed = any(dropin_unit(p) == unit for p in changed)
        if unit not in observed.enabled:
            runtime.append(Action(Kind.START, unit, "new instance"))
        elif dropin_changed or template_changed:
            why = "its drop-in changed" if dropin_changed else "the instance template changed"
            runtime.append(Action(Kind.RESTART, unit, why))
    if GATEWAY_UNIT in want:
        gateway_unit_changed = f"{SYSTEMD_DIR}/{GATEWAY_UNIT}" in changed
        config_changed = any(p == HAPROXY_CFG or p.startswith(GATEWAY_DIR + "/") for p in changed)
        if GATEWAY_UNIT not in observed.enabled:
            runtime.append(Action(Kind.START, GATEWAY_UNIT, "new gateway"))
        elif gateway_unit_changed:
            runtime.append(Action(Kind.RESTART, GATEWAY_UNIT, "its unit file changed"))
        elif config_changed:
            runtime.append(Action(Kind.RELOAD, GATEWAY_UNIT, "its configuration changed"))
    actions.extend(_dedupe(runtime))
    return Plan(node, tuple(actions))


def _dedupe(actions: list[Action]) -> list[Action]:
    """Keep the first action of each (kind, target): pending ones come first and win."""
    seen: set[tuple[Kind, str]] = set()
    out = []
    for a in actions:
        key = (a.kind, a.target)
        if key not in seen:
            seen.add(key)
            out.append(a)
    return out
