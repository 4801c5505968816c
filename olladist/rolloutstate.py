"""This node's rollout state: the ``rollout`` key of its status (``olladist status --json``).

    {"commit": the newest commit this node took part in rolling out (the attempted one),
     "from": the commit it was on before,
     "applied": the commit it runs now ("commit" once healthy or unchanged, else "from"),
     "waves": [[node, ...], ...], every node of the spec in one wave (RolloutPlan.gate_waves),
     "changed_waves": how many of them are of nodes the commit changes (the rest come after),
     "wave": this node's wave (1 = first; null: a node not in the spec),
     "unavailable": [{"model", "node"}], models held by one restarting single-instance node,
     "state": "waiting" | "applying" | "healthy" | "unchanged" | "failed" | "stopped",
     "gate": {"wave", "since", "nodes", "reason"} while waiting: the wave waited on, since
        when (wall clock; kept on disk, so a restarted reconciler resumes the wait),
     "stopped": {"wave", "nodes", "reason"} when the gate stopped the rollout here,
     "reason": why it failed or stopped (null otherwise), "at": when the state was set,
     "failed": {commit: reason}, the commits this node rolled back from (newest 20)}

``applied_commit`` and ``attempted_commit`` sit beside it in the status. A commit in
``failed`` is not applied again by this node, nor one it stopped at the gate; a newer commit
is. Peers read this record over the peer port (``/olladist/v1/status``) to gate their own
wave (olladist.gate).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from olladist.errors import OlladistError
from olladist.gate import Verdict
from olladist.rollout import RolloutPlan, plan_rollout
from olladist.spec import Spec

KEEP_FAILED = 20


def begin(record: dict[str, Any], plan: RolloutPlan, node: str, previous: str) -> dict[str, Any]:
    wave = plan.gate_wave_of(node)
    out = {
        "commit": plan.commit,
        "from": previous,
        "applied": previous,
        "waves": [list(w) for w in plan.gate_waves],
        "changed_waves": len(plan.waves),
        "wave": None if wave is None else wave + 1,
        "unavailable": [{"model": m, "node": n} for m, n in plan.unavailable],
        "state": "applying",
        "reason": None,
        "at": round(time.time(), 3),
        "failed": dict(record.get("failed") or {}),
    }
    if record.get("commit") == plan.commit and record.get("state") == "waiting":
        # A reconciler restarted while it waited at the gate: the wait goes on from when it
        # began, so the wave timeout is not reset by a restart.
        out["state"], out["gate"] = "waiting", record.get("gate")
    return out


def waiting(record: dict[str, Any], verdict: Verdict) -> dict[str, Any]:
    """At the gate, waiting on ``verdict.wave``; ``since`` kept while it is the same wave."""
    out = dict(record)
    gate = out.get("gate") or {}
    since = gate.get("since") if gate.get("wave") == verdict.wave else None
    out["state"] = "waiting"
    out["gate"] = {
        "wave": verdict.wave,
        "since": since if since is not None else round(time.time(), 3),
        "nodes": list(verdict.nodes),
        "reason": verdict.reason,
    }
    out["at"] = round(time.time(), 3)
    return out


def through(record: dict[str, Any]) -> dict[str, Any]:
    """Past the gate: applying."""
    out = {k: v for k, v in record.items() if k != "gate"}
    out["state"], out["at"] = "applying", round(time.time(), 3)
    return out


def stopped(record: dict[str, Any], verdict: Verdict) -> dict[str, Any]:
    """The gate stopped the rollout here: the node stays on the commit it runs."""
    out = {k: v for k, v in record.items() if k != "gate"}
    out["state"], out["reason"] = "stopped", verdict.reason
    out["applied"] = out.get("from")
    out["stopped"] = {"wave": verdict.wave, "nodes": list(verdict.nodes), "reason": verdict.reason}
    out["at"] = round(time.time(), 3)
    return out


def stopped_reason(record: dict[str, Any], commit: str) -> str | None:
    """Why the gate stopped ``commit`` here, if it did (the record is of that commit)."""
    if record.get("commit") == commit and record.get("state") == "stopped":
        return str(record.get("reason") or "stopped")
    return None


def settle(
    record: dict[str, Any], failures: list[str], *, unchanged: bool = False
) -> dict[str, Any]:
    """The outcome of the check after apply: healthy (or unchanged: nothing to apply here), or
    failed with the reasons."""
    out = {k: v for k, v in record.items() if k != "gate"}
    out["at"] = round(time.time(), 3)
    if not failures:
        out["state"], out["reason"] = ("unchanged" if unchanged else "healthy"), None
        out["applied"] = out.get("commit")
        return out
    out["applied"] = out.get("from")
    reason = "; ".join(failures)
    out["state"], out["reason"] = "failed", reason
    failed = dict(out.get("failed") or {})
    failed[str(out.get("commit", ""))] = reason
    out["failed"] = dict(list(failed.items())[-KEEP_FAILED:])
    return out


def failed_reason(record: dict[str, Any], commit: str) -> str | None:
    """Why this node rolled back from ``commit``, if it did."""
    failed = record.get("failed") or {}
    reason = failed.get(commit)
    return str(reason) if reason is not None else None


def lines(record: dict[str, Any]) -> list[str]:
    """Lines for ``olladist status`` and ``olladist diff``."""
    if not record:
        return []
    commit = str(record.get("commit", ""))[:12]
    waves = record.get("waves") or []
    wave = record.get("wave")
    where = f"wave {wave} of {len(waves)}" if wave else f"in no wave ({len(waves)} wave(s))"
    if wave and wave > record.get("changed_waves", len(waves)):
        where += ", no change in the commit here"
    out = [
        f"rollout:    {commit} from {str(record.get('from') or 'nothing')[:12]}: {where}, "
        f"{record.get('state')}"
    ]
    if waves:
        listed = "; ".join(f"{k + 1}: {', '.join(w)}" for k, w in enumerate(waves))
        out.append(f"  waves:    {listed}")
    gate = record.get("gate") or {}
    if record.get("state") == "waiting" and gate:
        out.append(f"  gate:     {gate.get('reason')}")
    if record.get("state") == "stopped":
        out.append(f"  stopped:  {record.get('reason')}")
    elif record.get("reason"):
        out.append(f"  failed:   {record['reason']}")
    for u in record.get("unavailable") or []:
        out.append(
            f"  note:     {u['model']} is held by {u['node']} only: unavailable while it restarts"
        )
    for sha, why in (record.get("failed") or {}).items():
        if sha != record.get("commit"):
            out.append(f"  rolled back from {sha[:12]}: {why}")
    return out


def diff_view(
    record: dict[str, Any],
    node: str,
    *,
    commit: str,
    applied: str,
    spec_of: Callable[[str], Spec],
    parent: str | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """What ``olladist diff`` adds about the rollout: the waves of the tip (``commit``) after the
    applied commit, when they differ, and this node's recorded rollout state. ``spec_of``
    loads a commit's spec as committed (without node-local overrides, so that every node
    computes the same waves). ``parent``: the tip's first parent, which the waves are planned
    against (as the daemon does); None: the applied commit. Returns the text lines and the
    same for ``--json``."""
    out: list[str] = []
    data: dict[str, Any] = {"state": record or None, "plan": None}
    if commit and commit != applied and not commit.startswith("dir:"):
        old: Spec | None = None
        before = parent if parent is not None else applied
        if before and not before.startswith("dir:"):
            try:
                old = spec_of(before)
            except OlladistError as exc:
                what = "applied commit" if parent is None else "parent commit"
                out.append(f"rollout: cannot load the {what} {before[:12]}: {exc.message}")
        plan = plan_rollout(old, spec_of(commit), commit)
        data["plan"] = plan.to_dict()
        reason = failed_reason(record, commit)
        if reason is not None:
            out.append(f"rollout: this node rolled back from {commit[:12]}: {reason}")
        stop = stopped_reason(record, commit)
        if stop is not None:
            out.append(f"rollout: {commit[:12]} stopped before this node: {stop}")
        gate = record.get("gate") or {}
        if record.get("commit") == commit and record.get("state") == "waiting" and gate:
            out.append(f"rollout: {commit[:12]} waits at the gate: {gate.get('reason')}")
        out += plan.notes(node)
    elif record:
        out += lines(record)
    return out, data
