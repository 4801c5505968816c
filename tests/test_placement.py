"""Placement: deterministic, respects selectors and capacity, moves little when nodes change."""

from __future__ import annotations

import random
from typing import Any

from olladist.placement import place
from olladist.spec import Spec


def make_spec(n_nodes: int, n_models: int, replicas: int = 2, **extra: Any) -> Spec:
    nodes = [
        {
            "name": f"node-{i:03d}",
            "address": f"10.0.{i // 250}.{i % 250 + 1}",
            "labels": {"gpu": "big" if i % 4 == 0 else "small"},
            "capacity": {"vram_gb": 80 if i % 4 == 0 else 24},
            "instances": [{"name": "gpu0", "port": 11435}],
        }
        for i in range(n_nodes)
    ]
    models = [{"name": f"model-{j}:7b", "replicas": replicas} for j in range(n_models)]
    return Spec.model_validate({"cluster": "c", "nodes": nodes, "models": models, **extra})


def test_same_spec_same_placement_whatever_the_order() -> None:
    spec = make_spec(12, 40)
    shuffled = spec.model_copy(
        update={
            "nodes": random.Random(1).sample(spec.nodes, len(spec.nodes)),
            "models": random.Random(2).sample(spec.models, len(spec.models)),
        }
    )
    assert place(spec) == place(shuffled)


def test_adding_a_node_moves_about_one_in_n_plus_one() -> None:
    before = place(make_spec(20, 500))
    after = place(make_spec(21, 500))
    total = sum(len(a.nodes) for a in before.assignments)
    moved = sum(len(set(a.nodes) - set(after.nodes_for(a.model))) for a in before.assignments)
    # Expected share: 1/21 of placements (about 47 of 1000); allow sampling noise.
    assert 0.6 / 21 < moved / total < 1.5 / 21, (moved, total)
    # Whatever moved went to the new node, nowhere else.
    for a in after.assignments:
        gained = set(a.nodes) - set(before.nodes_for(a.model))
        assert gained <= {"node-020"}


def test_removing_a_node_moves_only_its_models() -> None:
    full = make_spec(20, 300)
    smaller = full.model_copy(update={"nodes": [n for n in full.nodes if n.name != "node-007"]})
    a, b = place(full), place(smaller)
    for x in a.assignments:
        if "node-007" not in x.nodes:
            assert b.nodes_for(x.model) == x.nodes


def test_selector_and_vram_are_respected() -> None:
    spec = make_spec(
        8,
        0,
    ).model_copy(update={"models": []})
    spec = Spec.model_validate(
        {
            **spec.model_dump(),
            "models": [
                {"name": "big:70b", "selector": {"gpu": "big"}, "replicas": 2, "size_gb": 40},
                {"name": "any:70b", "replicas": 2, "size_gb": 40},
                {"name": "embed", "nodes": "all"},
            ],
        }
    )
    p = place(spec)
    big = {n.name for n in spec.nodes if n.labels["gpu"] == "big"}
    assert set(p.nodes_for("big:70b")) <= big
    # 40 GB does not fit 24 GB nodes, so the unlabelled model also lands on big nodes.
    assert set(p.nodes_for("any:70b")) <= big
    assert len(p.nodes_for("embed:latest")) == 8


def test_disk_capacity_spreads_models() -> None:
    nodes = [
        {
            "name": f"n{i}",
            "address": f"10.0.0.{i + 1}",
            "capacity": {"disk_gb": 10},
            "instances": [{"name": "i", "port": 11435}],
        }
        for i in range(3)
    ]
    models = [{"name": f"m{j}", "size_gb": 4} for j in range(6)]
    p = place(Spec.model_validate({"cluster": "c", "nodes": nodes, "models": models}))
    for n in ("n0", "n1", "n2"):
        assert len(p.models_for(n)) == 2
