"""The node's last reconcile result: ``status.json`` for ``olladist status``, one STATUS= line
for systemd, and Prometheus text metrics for node_exporter's textfile collector."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from olladist.files import write_atomic
from olladist.layout import STATE_DIR, Layout
from olladist.plan import Plan
from olladist.state import State

METRICS_FILE = f"{STATE_DIR}/olladist.prom"


def _now() -> float:
    return round(time.time(), 3)


@dataclass
class Status:
    node: str
    applied_commit: str = ""
    applied_at: float = 0.0
    attempted_commit: str = ""
    attempted_at: float = 0.0
    attempted_error: str | None = None
    last_run_at: float = 0.0
    # Why the last reconcile ran: start, interval, SIGHUP, drift:<file>, source:<commit>, ...
    last_reason: str = ""
    last_success_at: float = 0.0
    duration_s: float = 0.0
    ok: bool = False
    drift: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[dict[str, str | None]] = field(default_factory=list)
    runs: int = 0
    failures: int = 0
    models: list[str] = field(default_factory=list)  # what placement gives this node
    health: list[dict[str, Any]] = field(default_factory=list)  # gateway's view of servers
    rollout: dict[str, Any] = field(default_factory=dict)  # olladist.rolloutstate

    @classmethod
    def load(cls, state: State, node: str) -> Status:
        data = state.status() or {}
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        s = cls(**{**known, "node": node})
        s.errors, s.notes = [], []
        return s

    def save(self, state: State) -> None:
        state.set_status(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # -- recording ---------------------------------------------------------------------------

    def begin(self) -> None:
        self.errors, self.notes = [], []

    def attempt(self, commit: str, error: str | None) -> None:
        self.attempted_commit = commit or self.attempted_commit
        self.attempted_at = _now()
        self.attempted_error = error

    def applied(self, commit: str) -> None:
        if commit != self.applied_commit:
            self.applied_at = _now()
        self.applied_commit = commit

    def planned(self, p: Plan) -> None:
        self.drift = [a.to_dict() for a in p.actions]
        self.notes = list(p.notes)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def error(self, message: str, hint: str | None) -> None:
        self.errors.append({"message": message, "hint": hint})

    def finish(self, duration: float, ok: bool) -> None:
        self.runs += 1
        self.duration_s = round(duration, 3)
        self.last_run_at = _now()
        self.ok = ok and not self.errors
        if self.ok:
            self.last_success_at = self.last_run_at
        else:
            self.failures += 1

    # -- views -------------------------------------------------------------------------------

    def line(self) -> str:
        commit = self.applied_commit[:12] or "none"
        parts = [f"commit {commit}", f"drift {len(self.drift)}"]
        if self.attempted_error:
            parts.append(f"refused {self.attempted_commit[:12]}: {self.attempted_error}")
        elif self.errors:
            parts.append(f"error: {self.errors[0]['message']}")
        return "; ".join(parts).replace("\n", " ")[:400]


def gateway_health(layout: Layout) -> list[dict[str, Any]]:
    """Health of this node's instances and peers as its gateway sees them (runtime socket);
    empty when the gateway is not running."""
    from olladist.errors import ToolError  # noqa: PLC0415
    from olladist.gateway import INSTANCES_BACKEND, PEERS_BACKEND  # noqa: PLC0415
    from olladist.gateway.runtime import HAProxyRuntime  # noqa: PLC0415
    from olladist.layout import ADMIN_SOCKET  # noqa: PLC0415

    sock = layout.real(ADMIN_SOCKET)
    if not sock.exists():
        return []
    try:
        rows = HAProxyRuntime(sock, timeout=2.0).stats()
    except ToolError:
        return []
    return [
        {
            "kind": "instance" if r.backend == INSTANCES_BACKEND else "peer",
            "name": r.server.removeprefix("peer."),
            "status": r.status,
            "sessions": r.current_sessions,
            "queued": r.queued,
            "check": r.check_status,
        }
        for r in rows
        if r.backend in (INSTANCES_BACKEND, PEERS_BACKEND)
    ]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(s: Status) -> str:
    node = _escape(s.node)
    commit = _escape(s.applied_commit)
    rows = [
        (
            "olladist_last_run_timestamp_seconds",
            "gauge",
            "Time of the last reconcile.",
            s.last_run_at,
        ),
        (
            "olladist_last_success_timestamp_seconds",
            "gauge",
            "Time of the last reconcile that ended without error.",
            s.last_success_at,
        ),
        (
            "olladist_reconcile_duration_seconds",
            "gauge",
            "Duration of the last reconcile.",
            s.duration_s,
        ),
        (
            "olladist_drift_items",
            "gauge",
            "Actions the last plan held (0 = converged).",
            len(s.drift),
        ),
        ("olladist_errors", "gauge", "Errors in the last reconcile.", len(s.errors)),
        (
            "olladist_commit_refused",
            "gauge",
            "1 while the newest commit is refused.",
            1 if s.attempted_error else 0,
        ),
        (
            "olladist_reconcile_runs_total",
            "counter",
            "Reconciles since the state was created.",
            s.runs,
        ),
        (
            "olladist_reconcile_failures_total",
            "counter",
            "Reconciles that ended in error.",
            s.failures,
        ),
    ]
    out = []
    for name, kind, help_, value in rows:
        out += [
            f"# HELP {name} {help_}",
            f"# TYPE {name} {kind}",
            f'{name}{{node="{node}"}} {value}',
        ]
    out += [
        "# HELP olladist_server_up 1 when the gateway's health check sees the server up.",
        "# TYPE olladist_server_up gauge",
    ]
    for h in s.health:
        up = 1 if str(h["status"]).startswith("UP") else 0
        labels = f'node="{node}",kind="{h["kind"]}",server="{_escape(h["name"])}"'
        out.append(f"olladist_server_up{{{labels}}} {up}")
    out += [
        "# HELP olladist_applied_commit_info The commit this node last applied.",
        "# TYPE olladist_applied_commit_info gauge",
        f'olladist_applied_commit_info{{node="{node}",commit="{commit}"}} 1',
    ]
    return "\n".join(out) + "\n"


def write_metrics(layout: Layout, s: Status) -> None:
    write_atomic(layout.real(METRICS_FILE), metrics_text(s).encode(), 0o644)
