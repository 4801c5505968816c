"""Which nodes hold which models: a pure function of the spec.

Every node computes the same placement from the same commit, so nodes agree without talking.
Models with `replicas` go to the highest-scoring eligible nodes under rendezvous
(highest-random-weight) hashing: each (model, node) pair gets a score from a hash, and a model
takes the top N. Adding or removing a node moves only the models whose top N changed, about
1/(nodes+1) of placements.

Eligible means: the node has instances, its labels match the model's `selector`, its
`capacity.vram_gb` fits the model's `size_gb`, and its `capacity.disk_gb` still has room once
the models placed before are counted. Models are placed in a fixed order (exact placements first,
then larger models first) so the result does not depend on the order of the spec.
"""

from __future__ import annotations

import functools
import hashlib
import weakref
from dataclasses import dataclass

from olladist.errors import Loc, Problem, SpecError
from olladist.spec import Model, Node, Spec


@dataclass(frozen=True)
class Assignment:
    model: str  # canonical model key
    nodes: tuple[str, ...]  # in score order (best first)
    reason: str


@dataclass(frozen=True)
class Placement:
    assignments: tuple[Assignment, ...]  # sorted by model key

    @functools.cached_property
    def _by_model(self) -> dict[str, tuple[str, ...]]:
        return {a.model: a.nodes for a in self.assignments}

    @functools.cached_property
    def _by_node(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {}
        for a in self.assignments:
            for n in a.nodes:
                out.setdefault(n, []).append(a.model)
        return {n: tuple(ms) for n, ms in out.items()}

    def nodes_for(self, model_key: str) -> tuple[str, ...]:
        return self._by_model.get(model_key, ())

    def models_for(self, node: str) -> tuple[str, ...]:
        return self._by_node.get(node, ())

    def to_dict(self) -> dict[str, object]:
        return {
            "models": [
                {"model": a.model, "nodes": list(a.nodes), "reason": a.reason}
                for a in self.assignments
            ]
        }


def score(model_key: str, node_name: str) -> int:
    digest = hashlib.sha256(f"{model_key}\0{node_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _order(item: tuple[int, Model]) -> tuple[int, float, str]:
    _, m = item
    exact = 0 if m.nodes is not None else 1
    return (exact, -(m.size_gb or 0.0), m.key)


# The last spec placed and its result: loading a spec checks that it can be placed, and the
# caller then places the same object (a frozen model) again; a 1,000-node spec took 0.1 s.
# A weak reference, so the cache keeps no spec alive.
_last: tuple[weakref.ref[Spec], tuple[Placement, list[tuple[Loc, str]]]] | None = None


def _compute(spec: Spec) -> tuple[Placement, list[tuple[Loc, str]]]:
    global _last  # noqa: PLW0603 - the one-entry cache above
    last = _last
    if last is not None and last[0]() is spec:
        return last[1][0], list(last[1][1])
    result = _compute_uncached(spec)
    _last = (weakref.ref(spec), (result[0], list(result[1])))
    return result


def _compute_uncached(spec: Spec) -> tuple[Placement, list[tuple[Loc, str]]]:
    problems: list[tuple[Loc, str]] = []
    disk_left = {n.name: n.capacity.disk_gb for n in spec.nodes}
    by_name = {n.name: n for n in spec.nodes}
    out: list[Assignment] = []

    def fits_vram(node: Node, m: Model) -> bool:
        vram = node.capacity.vram_gb
        return vram is None or m.size_gb is None or m.size_gb <= vram

    def fits_disk(node: Node, m: Model) -> bool:
        left = disk_left[node.name]
        return left is None or m.size_gb is None or m.size_gb <= left

    def take(node: Node, m: Model) -> None:
        left = disk_left[node.name]
        if left is not None and m.size_gb is not None:
            disk_left[node.name] = left - m.size_gb

    for i, m in sorted(enumerate(spec.models), key=_order):
        here: Loc = ("models", i)
        if isinstance(m.nodes, list):
            chosen: list[Node] = []
            for k, name in enumerate(m.nodes):
                node = by_name[name]
                if not node.instances:
                    problems.append((here + ("nodes", k), f"node {name!r} has no instances"))
                elif not fits_vram(node, m):
                    problems.append(
                        (
                            here + ("nodes", k),
                            f"capacity overflow: {m.size_gb} GB does not fit node {name!r} "
                            f"(vram_gb {node.capacity.vram_gb})",
                        )
                    )
                elif not fits_disk(node, m):
                    problems.append(
                        (
                            here + ("nodes", k),
                            f"capacity overflow: node {name!r} has no disk_gb left for "
                            f"{m.size_gb} GB",
                        )
                    )
                else:
                    chosen.append(node)
            for node in chosen:
                take(node, m)
            out.append(Assignment(m.key, tuple(n.name for n in chosen), "pinned by `nodes`"))
            continue

        candidates = [n for n in spec.nodes if n.instances]
        why = "nodes with instances"
        if m.selector:
            sel = m.selector
            candidates = [
                n for n in candidates if all(n.labels.get(k) == v for k, v in sel.items())
            ]
            why = "selector " + ",".join(f"{k}={v}" for k, v in sorted(sel.items()))
            if not candidates:
                problems.append((here + ("selector",), f"selector {sel} matches no node"))
                continue
        sized = [n for n in candidates if fits_vram(n, m)]
        if not sized:
            problems.append(
                (here + ("size_gb",), f"capacity overflow: {m.size_gb} GB fits no node's vram_gb")
            )
            continue
        want = len(sized) if m.nodes == "all" else (m.replicas or 1)
        if want > len(sized):
            problems.append(
                (
                    here + ("replicas",),
                    f"replicas {want} but only {len(sized)} eligible node(s) ({why})",
                )
            )
            continue
        ranked = sorted(sized, key=lambda n: (-score(m.key, n.name), n.name))
        chosen = []
        for node in ranked:
            if len(chosen) == want:
                break
            if fits_disk(node, m):
                chosen.append(node)
        if len(chosen) < want:
            problems.append(
                (
                    here + ("size_gb",),
                    f"capacity overflow: {want} replica(s) of {m.size_gb} GB do not fit the "
                    f"disk_gb left on eligible nodes",
                )
            )
            continue
        for node in chosen:
            take(node, m)
        reason = (
            "all " + why
            if m.nodes == "all"
            else f"top {want} of {len(sized)} by rendezvous ({why})"
        )
        out.append(Assignment(m.key, tuple(n.name for n in chosen), reason))
    return Placement(tuple(sorted(out, key=lambda a: a.model))), problems


def place(spec: Spec) -> Placement:
    placement, problems = _compute(spec)
    if problems:
        raise SpecError(
            [Problem("cluster.yaml", 0, ".".join(map(str, loc)), msg) for loc, msg in problems]
        )
    return placement


def placement_problems(spec: Spec) -> list[tuple[Loc, str]]:
    """What keeps ``spec`` from being placed, each at its place in the spec document (the
    loader turns those into file:line problems)."""
    return _compute(spec)[1]
