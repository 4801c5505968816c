"""Human-readable output: plans, placements, status. JSON output comes from the same values'
to_dict."""

from __future__ import annotations

import datetime as dt
import os
import sys
from typing import TYPE_CHECKING, TextIO

from olladist.plan import Action, Kind, Plan
from olladist.status import Status

if TYPE_CHECKING:
    # Only a type here: importing placement would load pydantic for `olladist status`.
    from olladist.placement import Placement


def _color(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ


def _paint(text: str, code: str, on: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if on else text


def format_action(a: Action, color: bool = False) -> str:
    if a.kind is Kind.WRITE:
        sign = "+" if a.reason == "missing" else "~"
        head = f"{sign} {a.target} ({a.reason})"
        code = "32" if sign == "+" else "33"
        lines = [_paint(head, code, color)]
        for line in a.diff.splitlines():
            c = "32" if line.startswith("+") else "31" if line.startswith("-") else "0"
            lines.append("    " + _paint(line, c, color and c != "0"))
        return "\n".join(lines)
    if a.kind is Kind.REMOVE:
        return _paint(f"- {a.target} ({a.reason})", "31", color)
    return f"  {a.kind} {a.target} ({a.reason})"


def format_plan(plan: Plan, color: bool = False) -> str:
    if not plan.drift:
        return f"node {plan.node}: no drift"
    n = len(plan.actions)
    lines = [f"node {plan.node}: {n} action{'s' if n != 1 else ''}"]
    lines += [format_action(a, color) for a in plan.actions]
    return "\n".join(lines)


def print_plan(plan: Plan, stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    print(format_plan(plan, _color(out)), file=out)


def format_unplanned(plan: Plan, done: list[Action]) -> str:
    """The model actions ``apply`` ran that the printed plan did not hold (they were planned
    once the instances answered; see olladist.plan); empty when there were none."""
    shown = {(a.kind, a.target) for a in plan.actions}
    extra = [a for a in done if a.kind.is_model and (a.kind, a.target) not in shown]
    if not extra:
        return ""
    lines = ["model actions planned once the instances answered (not in the plan above):"]
    return "\n".join(lines + [format_action(a) for a in extra])


def format_placement(placement: Placement, nodes: list[str]) -> str:
    width = max([len(a.model) for a in placement.assignments] + [5])
    lines = [f"{'MODEL':<{width}}  NODES  WHY"]
    for a in placement.assignments:
        lines.append(f"{a.model:<{width}}  {','.join(a.nodes)}  {a.reason}")
    lines.append("")
    lines.append("per node:")
    for node in nodes:
        models = placement.models_for(node)
        lines.append(f"  {node}: {', '.join(models) if models else '(none)'}")
    return "\n".join(lines)


def format_status(s: Status) -> str:
    """``olladist status``: the last reconcile of a node, one fact a line."""

    def when(t: float) -> str:
        if not t:
            return "never"
        return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    lines = [
        f"node:       {s.node}",
        f"applied:    {s.applied_commit or 'none'} ({when(s.applied_at)})",
        f"attempted:  {s.attempted_commit or 'none'} ({when(s.attempted_at)})",
    ]
    if s.attempted_error:
        lines.append(f"refused:    {s.attempted_error}")
    lines += [
        f"last run:   {when(s.last_run_at)}, {s.duration_s:.2f}s, " + ("ok" if s.ok else "FAILED"),
        f"drift:      {len(s.drift)} item(s)",
    ]
    lines += [f"  {d['kind']} {d['target']} ({d['reason']})" for d in s.drift]
    lines.append(f"models:     {', '.join(s.models) or '(none)'}")
    for h in s.health:
        lines.append(
            f"{h['kind']:<10}  {h['name']:<16} {h['status']:<10} sessions {h['sessions']}"
            f" queued {h['queued']} ({h['check'] or 'no check'})"
        )
    # Deferred: rolloutstate needs the spec's pydantic, which `olladist status` never loads.
    from olladist.rolloutstate import lines as rollout_lines  # noqa: PLC0415

    lines += rollout_lines(s.rollout)
    lines += [f"note:       {n}" for n in s.notes]
    for e in s.errors:
        lines.append(f"error:      {e['message']}")
        if e.get("hint"):
            lines.append(f"            hint: {e['hint']}")
    return "\n".join(lines)
