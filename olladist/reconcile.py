"""One reconcile of one node: spec -> placement -> render -> validate -> observe -> plan -> apply.

``olladist diff`` and ``apply`` run it once; the daemon (``olladist.daemon``) runs it in a loop.
Nothing is touched until the spec is valid and the render has passed its validators, so a bad
commit is reported and never half-applied.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from olladist.apply import apply
from olladist.drain import DrainingRuntime
from olladist.errors import ApplyError, OlladistError
from olladist.files import File
from olladist.gateway.live import node_serving_drift
from olladist.gateway.render import node_local_files
from olladist.layout import INSTANCE_HOST, SYSTEMD_DIR, Layout
from olladist.models import ModelSync, memory_of, observe_models, plan_models, remember
from olladist.nodelocal import NodeLocal, NodeTLS
from olladist.observe import observe
from olladist.ollama import Progress, wait_healthy
from olladist.placement import Placement, place
from olladist.plan import Action, Kind, Plan, desired_units, plan
from olladist.render import render_node
from olladist.runtime import Runtime
from olladist.spec import ModelsTransfer, Spec
from olladist.specload import load_spec
from olladist.state import State
from olladist.units import instance_name, managed_dirs, shipped_unit
from olladist.validators import validate_render

if TYPE_CHECKING:
    from olladist.transfer import PeerTransfer

log = logging.getLogger("olladist.reconcile")


@dataclass(frozen=True)
class Desired:
    commit: str
    spec: Spec
    node: str
    placement: Placement
    files: dict[str, File]


@dataclass
class Outcome:
    plan: Plan
    done: list[Action] = field(default_factory=list)
    model_errors: dict[str, str] = field(default_factory=dict)
    model_warnings: dict[str, str] = field(default_factory=dict)  # e.g. a peer that lied

    @property
    def ok(self) -> bool:
        return not self.model_errors


def load_desired(
    spec_dir: Path,
    node: str,
    layout: Layout,
    commit: str = "",
    *,
    validate: bool = True,
    local: NodeLocal | None = None,
) -> Desired:
    """Load, place, render and (unless told not to) validate the render of ``node``.
    ``local``: the node-local settings (olladist.env), which git never holds."""
    local = local or NodeLocal()
    spec = load_spec(spec_dir)
    if local.binary:
        binary = local.binary
        spec = spec.model_copy(update={"ollama": spec.ollama.model_copy(update={"binary": binary})})
    spec.this_node(node)
    placement = place(spec)
    local_files = node_local_files(spec, node, placement)
    missing = [p for p in local_files if not layout.real(p).is_file()]
    if missing:
        raise OlladistError(
            "node-local files the gateway needs are missing: "
            + ", ".join(str(layout.real(p)) for p in missing),
            hint="they hold secrets and never come from git: create them on the node "
            "(the peer secret: olladist secret install FILE; docs/gateway.md, "
            "'Node-local files')",
        )

    def rendered() -> dict[str, File]:
        return render_node(spec, node, placement, layout, local.tls)

    files = None
    if validate:
        # The live layout's render is made while the validators check the staging one.
        files = validate_render(
            lambda lay: render_node(spec, node, placement, lay, local.tls),
            live=layout,
            node_local=local_files,
            meanwhile=rendered,
        )
    if files is None:
        files = rendered()
    return Desired(commit, spec, node, placement, files)


def full_plan(desired: Desired, layout: Layout, state: State, runtime: Runtime) -> Plan:
    p = plan(desired.node, desired.files, observe(layout, desired.files, state))
    if not runtime.executes:
        return Plan(p.node, p.actions, ("models not checked: runtime none (nothing runs here)",))
    p = p.with_actions(_stopped_units(desired, p, runtime))
    node = desired.spec.node(desired.node)
    if not node.instances:
        return p
    starting = any(a.kind is Kind.START and instance_name(a.target) for a in p.actions)
    obs = observe_models(node)
    if isinstance(obs, str):
        if starting:
            return Plan(p.node, p.actions, (f"models checked once the instances run ({obs})",))
        return p.with_actions([Action(Kind.REPORT, "models", f"cannot observe: {obs}")])
    mp = plan_models(
        desired.spec, node, desired.placement, obs, memory=memory_of(state), commit=desired.commit
    )
    p = Plan(p.node, p.actions + tuple(mp.actions), p.notes + tuple(mp.notes))
    return p.with_actions(_serving(desired, layout, p))


def _serving(desired: Desired, layout: Layout, p: Plan) -> list[Action]:
    """Converged means serving: what this node's gateway cannot serve or reach is drift too,
    unless the plan already starts or restarts something (it is what will fix it)."""
    if any(a.kind in (Kind.START, Kind.RESTART, Kind.RELOAD) for a in p.actions):
        return []
    acted = {a.target for a in p.actions if a.kind.is_model}
    return [
        a
        for a in node_serving_drift(desired.spec, desired.node, desired.placement, layout)
        if a.target.removeprefix("serving ") not in acted
    ]


def _stopped_units(desired: Desired, p: Plan, runtime: Runtime) -> list[Action]:
    """Units that should run but do not (stopped by hand, or failed for good): drift too."""
    acted = {a.target for a in p.actions if a.kind in (Kind.START, Kind.RESTART, Kind.STOP)}
    return [
        Action(Kind.START, unit, "enabled but not running")
        for unit in sorted(desired_units(desired.files) - acted)
        if not runtime.is_active(unit)
    ]


def execute(
    p: Plan,
    desired: Desired,
    layout: Layout,
    state: State,
    runtime: Runtime,
    *,
    on_progress: Callable[[str, Progress], None] | None = None,
    on_wait: Callable[[], None] | None = None,
    health_timeout: float = 60.0,
    tls: NodeTLS | None = None,
    waves: Sequence[Sequence[str]] = (),
) -> Outcome:
    """``on_wait``: called while waiting on drains and health checks (bounded waits), which
    the daemon counts as progress for its watchdog. ``waves``: the rollout's waves of this
    commit, which choose the node that fetches a blob from upstream (olladist.transfer)."""
    outcome = Outcome(p)
    node = desired.spec.node(desired.node)
    if runtime.executes:
        runtime = DrainingRuntime(runtime, layout, node, on_wait=on_wait)
    outcome.done = apply(p, layout, state, runtime)
    if not runtime.executes:
        if layout.root.as_posix() != "/":
            _make_managed_dirs(desired, layout)
        return outcome
    if not node.instances:
        return outcome
    dead = wait_healthy([i.port for i in node.instances], health_timeout, on_wait)
    if len(dead) == len(node.instances):
        raise ApplyError(
            f"no instance of node {node.name} answers on {INSTANCE_HOST} ports "
            f"{', '.join(map(str, dead))} after {health_timeout:.0f}s",
            hint="see the instance logs (journalctl -u 'olladist-ollama@*', or "
            "/var/log/olladist/ under the root with --runtime local)",
        )
    # Observe again: the plan may have been made before the instances were running, and a
    # restarted instance has lost what it had loaded (olladist.plan says why models differ).
    obs = observe_models(node)
    if isinstance(obs, str):
        raise ApplyError(f"cannot observe models: {obs}")
    memory = memory_of(state)
    mp = plan_models(
        desired.spec, node, desired.placement, obs, memory=memory, commit=desired.commit
    )
    transfer = _transfer(desired, layout, tls, on_progress, waves)
    sync = ModelSync(desired.spec, node, on_progress=on_progress, transfer=transfer)
    try:
        result = sync.execute([a for a in mp.actions if a.kind.is_model])
    finally:
        if transfer is not None:
            transfer.close()
    outcome.done += result.done
    outcome.model_errors = result.failed
    outcome.model_warnings = result.warnings
    remember(state, memory.after(desired.commit, result))
    return outcome


def _make_managed_dirs(desired: Desired, layout: Layout) -> None:
    """Under a root with nothing running, make the folders systemd would make at start, so
    that the rendered services start by hand there (``haproxy -f ROOT/etc/olladist/...``)."""
    for path in desired.files:
        if path.startswith(SYSTEMD_DIR + "/") and path.endswith(".service"):
            for d in managed_dirs(shipped_unit(path.rsplit("/", 1)[1]), layout):
                os.makedirs(d, exist_ok=True)


def _transfer(
    desired: Desired,
    layout: Layout,
    tls: NodeTLS | None,
    on_progress: Callable[[str, Progress], None] | None,
    waves: Sequence[Sequence[str]] = (),
) -> PeerTransfer | None:
    """With ``policy.models_transfer: peers-first`` and peers to ask, the blob fetcher."""
    from olladist.peers import Peers  # noqa: PLC0415
    from olladist.registry import Store  # noqa: PLC0415
    from olladist.transfer import PeerTransfer  # noqa: PLC0415

    spec = desired.spec
    if spec.policy.models_transfer is not ModelsTransfer.PEERS_FIRST or len(spec.nodes) < 2:
        return None
    return PeerTransfer(
        desired.node,
        Store.shared(layout.real(spec.ollama.models_dir)),
        Peers.of(spec, desired.node, layout, tls),
        holders_of=desired.placement.nodes_for,
        waves=waves,
        on_progress=on_progress,
    )


def restart_slot(spec: Spec, placement: Placement, node: str, commit: str) -> int:
    """This node's restart slot for ``commit``: nodes that share a model never share a slot,
    so a cluster-wide change never restarts every replica of a model at once. Every node
    computes the same slots (greedy colouring in an order drawn from the commit)."""

    def rank(name: str) -> bytes:
        return hashlib.sha256(f"{commit}\0{name}".encode()).digest()

    holders = {a.model: set(a.nodes) for a in placement.assignments}
    slots: dict[str, int] = {}
    for name in sorted((n.name for n in spec.nodes), key=rank):
        taken = {
            slots[other]
            for nodes in holders.values()
            if name in nodes
            for other in nodes
            if other in slots
        }
        slot = 0
        while slot in taken:
            slot += 1
        slots[name] = slot
    return slots[node]
