"""Rollout waves: in which order the nodes take a commit, computed by every node alike.

A pure function of the previous spec, the new spec and the new commit id, so every node computes
the same waves without talking to the others. The previous spec is that of the new commit's
first parent, never a node's own applied commit: nodes on different commits (one lagging, one
that refused a commit) would otherwise compute different waves for the same commit.

1. **Which nodes change.** Each node's files are rendered for the old and the new spec (with
   the same fixed layout and no node-local settings, so every node gets the same renders for
   every other node) and compared. The nodes whose files do not change come after the waves
   of those that do (``later``), coloured the same way: most report "unchanged" at once, and
   one that lags behind the parent still changes and waits for every earlier wave.
2. **Which nodes may not go together.** Two changed nodes that hold a replica of the same model
   (before or after the commit) never share a wave, so a commit never takes every replica of a
   model down at once. A ``nodes: all`` model is the exception: it would give every node its
   own wave, and a rollout as long as the cluster is large. Instead at most half of its
   holders (at least one) go in one wave, so at least half keep serving it.
3. **Waves.** Greedy colouring: nodes with the most constraints first, ties broken by a hash of
   (commit, node), each into the first wave that breaks no constraint. Different commits order
   the nodes differently, so the same node is not always the first to take a change.

A model held by one node, with one instance, is unavailable while that instance restarts,
whatever the waves: ``olladist diff`` says so.

The wave gate (olladist.gate) holds a node of wave k until every node of the earlier waves
reports healthy on the commit (or unchanged).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from olladist.files import File
from olladist.layout import GATEWAY_DIR, HAPROXY_CFG, SYSTEMD_DIR, Layout
from olladist.placement import Placement, place
from olladist.render import render_node
from olladist.spec import Spec
from olladist.units import GATEWAY_UNIT, INSTANCE_TEMPLATE, dropin_unit

# Renders compared across nodes use one layout, whatever --root this node runs under.
_COMPARE_LAYOUT = Layout()


@dataclass(frozen=True)
class NodeChange:
    """What a commit changes on one node, from its renders."""

    node: str
    files: tuple[str, ...]  # node paths added, removed or changed
    restarts: tuple[str, ...]  # instance units that restart (or start, or stop)
    gateway: str  # "restart", "reload" or "" (untouched)
    models_added: tuple[str, ...] = ()
    models_removed: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "files": list(self.files),
            "restarts": list(self.restarts),
            "gateway": self.gateway,
            "models_added": list(self.models_added),
            "models_removed": list(self.models_removed),
        }


@dataclass(frozen=True)
class RolloutPlan:
    """The waves of one commit: each wave a sorted tuple of node names."""

    commit: str
    waves: tuple[tuple[str, ...], ...]
    changes: tuple[NodeChange, ...]  # of the changed nodes, sorted by node
    unchanged: tuple[str, ...]  # nodes the commit leaves as they are
    # (model, node): held by that node only, with one instance, which restarts
    unavailable: tuple[tuple[str, str], ...] = ()
    # The waves of the unchanged nodes, after ``waves``: every node is in exactly one wave of
    # ``gate_waves``, which is what the wave gate (olladist.gate) waits on.
    later: tuple[tuple[str, ...], ...] = ()

    @property
    def gate_waves(self) -> tuple[tuple[str, ...], ...]:
        return self.waves + self.later

    def gate_wave_of(self, node: str) -> int | None:
        """The wave of ``node`` in ``gate_waves`` (0 first); None for a node not in the spec."""
        return next((k for k, wave in enumerate(self.gate_waves) if node in wave), None)

    def wave_of(self, node: str) -> int | None:
        """The wave of ``node`` (0 first), or None when the commit does not change it."""
        return next((k for k, wave in enumerate(self.waves) if node in wave), None)

    def change_of(self, node: str) -> NodeChange | None:
        return next((c for c in self.changes if c.node == node), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "commit": self.commit,
            "waves": [list(w) for w in self.waves],
            "changes": [c.to_dict() for c in self.changes],
            "unchanged": list(self.unchanged),
            "unavailable": [{"model": m, "node": n} for m, n in self.unavailable],
            "later": [list(w) for w in self.later],
        }

    def notes(self, node: str) -> list[str]:
        """Lines for ``olladist diff`` of ``node``."""
        wave = self.wave_of(node)
        out = []
        if wave is None:
            out.append(
                f"rollout of {self.commit[:12]}: this node does not change "
                f"({len(self.waves)} wave(s) for the others)"
            )
        else:
            out.append(
                f"rollout of {self.commit[:12]}: this node is in wave {wave + 1} of "
                f"{len(self.waves)}: "
                + "; ".join(f"{k + 1}: {', '.join(w)}" for k, w in enumerate(self.waves))
            )
        for model, holder in self.unavailable:
            out.append(
                f"{model} is held by {holder} only (one instance): it is unavailable while "
                f"{holder} restarts (wave {(self.wave_of(holder) or 0) + 1})"
            )
        return out


def _render(spec: Spec, placement: Placement, node: str) -> dict[str, File]:
    return render_node(spec, node, placement, _COMPARE_LAYOUT, None)


def _changed_paths(old: Mapping[str, File], new: Mapping[str, File]) -> tuple[str, ...]:
    paths = set(old) | set(new)
    return tuple(sorted(p for p in paths if old.get(p) != new.get(p)))


def _classify(
    paths: tuple[str, ...], old: Mapping[str, File], new: Mapping[str, File]
) -> tuple[tuple[str, ...], str]:
    template = f"{SYSTEMD_DIR}/{INSTANCE_TEMPLATE}"
    # The template changes every instance; otherwise only those whose drop-in changed.
    touched = [p for f in (old, new) for p in f] if template in paths else list(paths)
    restarts = {u for p in touched if (u := dropin_unit(p))}
    gateway = ""
    if f"{SYSTEMD_DIR}/{GATEWAY_UNIT}" in paths:
        gateway = "restart"
    elif any(p == HAPROXY_CFG or p.startswith(GATEWAY_DIR + "/") for p in paths):
        gateway = "reload"
    return tuple(sorted(restarts)), gateway


def node_changes(old: Spec | None, new: Spec) -> tuple[NodeChange, ...]:
    """What the step from ``old`` (None: nothing applied yet) to ``new`` changes on each node
    of ``new``, from the renders of both; unchanged nodes are left out."""
    new_placement = place(new)
    old_placement = place(old) if old is not None else None
    old_names = {n.name for n in old.nodes} if old is not None else set()
    out = []
    for node in sorted(n.name for n in new.nodes):
        after = _render(new, new_placement, node)
        before: dict[str, File] = {}
        if old is not None and old_placement is not None and node in old_names:
            before = _render(old, old_placement, node)
        paths = _changed_paths(before, after)
        if not paths:
            continue
        restarts, gateway = _classify(paths, before, after)
        had = set(old_placement.models_for(node)) if old_placement else set()
        has = set(new_placement.models_for(node))
        out.append(
            NodeChange(
                node,
                paths,
                restarts,
                gateway,
                tuple(sorted(has - had)),
                tuple(sorted(had - has)),
            )
        )
    return tuple(out)


def _rank(commit: str, node: str) -> bytes:
    return hashlib.sha256(f"{commit}\0{node}".encode()).digest()


def plan_rollout(old: Spec | None, new: Spec, commit: str) -> RolloutPlan:
    """The waves of ``commit`` (whose spec is ``new``) after ``old``."""
    changes = node_changes(old, new)
    changed = [c.node for c in changes]
    new_placement = place(new)
    old_placement = place(old) if old is not None else None
    everywhere = {m.key for m in new.models if m.nodes == "all"}
    if old is not None:
        everywhere |= {m.key for m in old.models if m.nodes == "all"}

    holders: dict[str, set[str]] = {}
    for p in (old_placement, new_placement):
        for a in p.assignments if p is not None else ():
            holders.setdefault(a.model, set()).update(a.nodes)
    changed_set = set(changed)
    # Replicas that may not share a wave, and the `nodes: all` models with their cap per wave.
    apart: dict[str, set[str]] = {n: set() for n in changed}
    capped: dict[str, tuple[int, set[str]]] = {}
    for model, nodes in holders.items():
        members = nodes & changed_set
        if model in everywhere:
            capped[model] = (max(1, len(nodes) // 2), members)
            continue
        for n in members:
            apart[n] |= members - {n}

    waves = _colour(changed, apart, capped, commit)
    # The nodes this step leaves alone come after, coloured the same way among themselves: a
    # node that lags (it is on an older commit than the parent) may still change, and waits
    # for every wave of the step before it; the others report "unchanged" there at once.
    rest = sorted({n.name for n in new.nodes} - changed_set)
    rest_apart: dict[str, set[str]] = {n: set() for n in rest}
    for model, nodes in holders.items():
        members = nodes & set(rest)
        if model in everywhere:
            continue
        for n in members:
            rest_apart[n] |= members - {n}
    rest_capped = {m: (cap, set(rest) & holders[m]) for m, (cap, _) in capped.items()}
    later = _colour(rest, rest_apart, rest_capped, commit)

    unavailable = []
    for c in changes:
        if not c.restarts or len(new.node(c.node).instances) != 1:
            continue
        for model in new_placement.models_for(c.node):
            if new_placement.nodes_for(model) == (c.node,):
                unavailable.append((model, c.node))
    unchanged = tuple(sorted({n.name for n in new.nodes} - changed_set))
    return RolloutPlan(
        commit,
        tuple(tuple(sorted(w)) for w in waves),
        changes,
        unchanged,
        tuple(sorted(unavailable)),
        tuple(tuple(sorted(w)) for w in later),
    )


def _colour(
    nodes: list[str],
    apart: Mapping[str, set[str]],
    capped: Mapping[str, tuple[int, set[str]]],
    commit: str,
) -> list[list[str]]:
    """Greedy colouring: the most constrained first, ties by the commit's hash of the node."""
    order = sorted(nodes, key=lambda n: (-len(apart[n]), _rank(commit, n)))
    waves: list[list[str]] = []
    wave_of: dict[str, int] = {}
    for node in order:
        k = 0
        while True:
            if k == len(waves):
                waves.append([])
                break
            clash = any(wave_of.get(other) == k for other in apart[node])
            full = any(
                node in members and sum(1 for n in waves[k] if n in members) >= cap
                for cap, members in capped.values()
            )
            if not clash and not full:
                break
            k += 1
        waves[k].append(node)
        wave_of[node] = k
    return waves
