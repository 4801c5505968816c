"""The wave gate: may this node apply a commit now? A pure decision from the peers' reports.

A node of wave k (``RolloutPlan.gate_waves``, 1 first) applies a commit only once every node of
the waves before k reports, in the ``rollout`` record of its ``/olladist/v1/status`` (read over
the peer port, olladist.peers), that it is healthy on that commit or that the commit does not
change it. Nothing else counts as healthy: a peer that cannot be read, answers without a record,
or reports another commit is *not yet* healthy. The decision:

- **stop** when any node reports the commit failed (it rolled back from it): no other node
  applies it; each stays on its commit until a newer one arrives.
- **stop** when the first wave not yet healthy has been waited on for ``timeout_s``.
- **wait** while a wave before this node's is not healthy yet, naming the wave and its nodes.
- **go** otherwise.

Nodes without instances have no peer port to report on (``exempt``): they are not waited on.
The wait itself (the watchdog, newer commits, the record kept on disk so that a restarted
reconciler resumes it) is the daemon's (``Daemon._gate``).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HEALTHY_STATES = ("healthy", "unchanged")


class Action(enum.StrEnum):
    GO = "go"
    WAIT = "wait"
    STOP = "stop"


@dataclass(frozen=True)
class Report:
    """One peer's answer as read: its ``rollout`` record, or why it could not be read."""

    node: str
    record: Mapping[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str
    wave: int | None = None  # (1 first) the wave waited on, or the one that stopped it
    nodes: tuple[str, ...] = ()  # the nodes waited on, failed, or late

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": str(self.action),
            "reason": self.reason,
            "wave": self.wave,
            "nodes": list(self.nodes),
        }


def failed_on(record: Mapping[str, Any] | None, commit: str) -> str | None:
    """Why the node of ``record`` rolled back from ``commit``, if it did."""
    if not record:
        return None
    failed = record.get("failed") or {}
    if isinstance(failed, Mapping) and commit in failed:
        return str(failed[commit])
    if record.get("commit") == commit and record.get("state") == "failed":
        return str(record.get("reason") or "failed its check after apply")
    return None


def healthy_on(record: Mapping[str, Any] | None, commit: str) -> bool:
    return (
        record is not None
        and record.get("commit") == commit
        and record.get("state") in HEALTHY_STATES
    )


def _why_not(report: Report | None, commit: str) -> str:
    if report is None or (report.record is None and report.error is None):
        return "no report"
    if report.record is None:
        return f"unreachable: {report.error}"
    if report.record.get("commit") != commit:
        return f"on {str(report.record.get('commit') or 'nothing')[:12]}"
    return str(report.record.get("state") or "no state")


def decide(
    commit: str,
    waves: Sequence[Sequence[str]],
    node: str,
    reports: Mapping[str, Report],
    *,
    waiting: tuple[int, float] | None,
    now: float,
    timeout_s: float,
    exempt: Collection[str] = (),
) -> Verdict:
    """Go, wait or stop for ``node`` about ``commit``. ``reports``: the peers' answers, by node
    (a peer missing from it was not read); ``waiting``: (wave, since) of the wait so far, the
    wall clock at which this node began to wait on that wave (None: not waiting yet)."""
    short = commit[:12]
    failed = [(n, why) for n, r in sorted(reports.items()) if (why := failed_on(r.record, commit))]
    if failed:
        names = tuple(n for n, _ in failed)
        where = "; ".join(f"{n}: {why}" for n, why in failed)
        wave = next((k + 1 for k, w in enumerate(waves) if names[0] in w), None)
        return Verdict(Action.STOP, f"commit {short} failed on {where}", wave, names)
    mine = next((k for k, w in enumerate(waves) if node in w), None)
    if mine is None:
        return Verdict(Action.GO, f"{node} is in no wave of {short}")
    for k in range(mine):
        pending = [
            n
            for n in waves[k]
            if n != node and n not in exempt and not healthy_on(_record(reports, n), commit)
        ]
        if not pending:
            continue
        since = waiting[1] if waiting is not None and waiting[0] == k + 1 else now
        detail = ", ".join(f"{n} ({_why_not(reports.get(n), commit)})" for n in pending)
        if now - since >= timeout_s:
            return Verdict(
                Action.STOP,
                f"wave {k + 1} did not report healthy on {short} within {timeout_s:g}s: {detail}",
                k + 1,
                tuple(pending),
            )
        return Verdict(Action.WAIT, f"waiting for wave {k + 1}: {detail}", k + 1, tuple(pending))
    return Verdict(Action.GO, f"waves before {mine + 1} are healthy on {short}", mine + 1)


def _record(reports: Mapping[str, Report], node: str) -> Mapping[str, Any] | None:
    r = reports.get(node)
    return None if r is None else r.record
