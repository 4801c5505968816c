"""Human-readable output: plans, placements. JSON output comes from the same values' to_dict."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from olladist.placement import Placement
from olladist.plan import Action, Kind, Plan


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
