"""Rollout waves: pure, deterministic, replicas apart, every changed node in exactly one wave."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from olladist.placement import place
from olladist.rollout import node_changes, plan_rollout
from olladist.spec import Spec

MODEL_NAMES = ["llama3.2:1b", "qwen2.5:0.5b", "gemma2:2b", "mistral:7b", "phi3:mini", "embed"]


def node(k: int, instances: int = 1, env: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": f"n{k}",
        "address": f"10.0.0.{k + 1}",
        "instances": [
            {"name": f"i{j}", "port": 11435 + j, "env": dict(env or {})} for j in range(instances)
        ],
    }


def spec(nodes: list[dict[str, Any]], models: list[dict[str, Any]], **top: Any) -> Spec:
    return Spec.model_validate({"cluster": "c", "nodes": nodes, "models": models, **top})


@st.composite
def spec_pairs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any], str]:
    """An applied spec, the next commit's spec (some instances' env, a model, the global env
    changed), and the commit id."""
    n = draw(st.integers(2, 7))
    nodes = [node(k, draw(st.integers(1, 2))) for k in range(n)]
    models = []
    for name in draw(st.lists(st.sampled_from(MODEL_NAMES), min_size=1, max_size=5, unique=True)):
        how = draw(st.sampled_from(["replicas", "all", "list"]))
        if how == "replicas":
            models.append({"name": name, "replicas": draw(st.integers(1, n))})
        elif how == "all":
            models.append({"name": name, "nodes": "all"})
        else:
            chosen = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
            models.append({"name": name, "nodes": [f"n{k}" for k in sorted(chosen)]})
    old = {"cluster": "c", "nodes": nodes, "models": models}
    new = copy.deepcopy(old)
    for k in range(n):
        if draw(st.booleans()):
            new["nodes"][k]["instances"][0]["env"] = {"OLLAMA_FLASH_ATTENTION": "1"}
    if draw(st.booleans()):
        new["ollama"] = {"env": {"OLLAMA_KEEP_ALIVE": "11m"}}
    if draw(st.booleans()) and new["models"][0].get("replicas"):
        new["models"][0]["replicas"] = draw(st.integers(1, n))
    commit = draw(st.binary(min_size=20, max_size=20)).hex()
    return old, new, commit


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(spec_pairs())
def test_every_changed_node_is_in_exactly_one_wave(
    pair: tuple[dict[str, Any], dict[str, Any], str],
) -> None:
    old, new = Spec.model_validate(pair[0]), Spec.model_validate(pair[1])
    plan = plan_rollout(old, new, pair[2])
    changed = {c.node for c in node_changes(old, new)}
    in_waves = [n for wave in plan.waves for n in wave]
    assert sorted(in_waves) == sorted(changed)  # each once, and only the changed ones
    assert set(plan.unchanged) == {n.name for n in new.nodes} - changed
    assert all(plan.waves)  # no empty wave


@SETTINGS
@given(spec_pairs())
def test_replicas_never_share_a_wave(pair: tuple[dict[str, Any], dict[str, Any], str]) -> None:
    old, new = Spec.model_validate(pair[0]), Spec.model_validate(pair[1])
    plan = plan_rollout(old, new, pair[2])
    everywhere = {m.key for m in new.models if m.nodes == "all"}
    for placement in (place(old), place(new)):
        for a in placement.assignments:
            for wave in plan.waves:
                together = set(a.nodes) & set(wave)
                if a.model in everywhere:
                    # `nodes: all`: at most half of its holders (at least one) at a time.
                    assert len(together) <= max(1, len(a.nodes) // 2), (a, wave)
                else:
                    assert len(together) <= 1, (a.model, a.nodes, wave)


def test_a_nodes_all_model_does_not_give_every_node_its_own_wave() -> None:
    nodes = [node(k) for k in range(6)]
    models = [{"name": "nomic-embed-text", "nodes": "all"}]
    old = spec(nodes, models)
    new = spec(nodes, models, ollama={"env": {"OLLAMA_KEEP_ALIVE": "11m"}})
    plan = plan_rollout(old, new, "a" * 40)
    assert len(plan.waves) == 2
    assert sorted(len(w) for w in plan.waves) == [3, 3]


def test_only_the_nodes_a_commit_changes_take_part() -> None:
    nodes = [node(k, 2) for k in range(3)]
    models = [{"name": "llama3.2:1b", "replicas": 2}, {"name": "gemma2:2b", "replicas": 1}]
    old = spec(nodes, models)
    changed = copy.deepcopy(nodes)
    changed[1]["instances"][0]["env"] = {"OLLADIST_SIM_FAULTS": "exit_at_start"}
    plan = plan_rollout(old, spec(changed, models), "b" * 40)
    assert plan.waves == (("n1",),)
    assert plan.unchanged == ("n0", "n2")
    # The unchanged nodes come after, still apart where they share a model, so a node that
    # lags behind the parent commit also waits for its turn.
    assert plan.gate_waves[0] == ("n1",)
    assert sorted(n for w in plan.later for n in w) == ["n0", "n2"]
    assert plan.gate_wave_of("n1") == 0 and (plan.gate_wave_of("n0") or 0) >= 1
    c = plan.change_of("n1")
    assert c is not None and c.restarts == ("olladist-ollama@i0.service",) and c.gateway == ""
    assert plan_rollout(old, old, "c" * 40).waves == ()


def test_first_commit_changes_every_node() -> None:
    nodes = [node(k) for k in range(3)]
    plan = plan_rollout(None, spec(nodes, [{"name": "llama3.2:1b", "replicas": 3}]), "d" * 40)
    assert sorted(len(w) for w in plan.waves) == [1, 1, 1]


def test_a_model_held_by_one_single_instance_node_is_named_unavailable() -> None:
    nodes = [node(0), node(1), node(2, instances=2)]
    models = [
        {"name": "llama3.2:1b", "nodes": ["n0", "n1"]},
        {"name": "qwen2.5:0.5b", "nodes": ["n0"]},
        {"name": "gemma2:2b", "nodes": ["n2"]},  # two instances restart one at a time
    ]
    old = spec(nodes, models)
    new = spec(nodes, models, ollama={"env": {"OLLAMA_KEEP_ALIVE": "11m"}})
    plan = plan_rollout(old, new, "e" * 40)
    assert plan.unavailable == (("qwen2.5:0.5b", "n0"),)
    notes = plan.notes("n0")
    assert any("qwen2.5:0.5b is held by n0 only" in line for line in notes)
    assert plan.wave_of("n0") != plan.wave_of("n1")


def test_a_gateway_only_change_is_a_reload() -> None:
    nodes = [node(k) for k in range(2)]
    old = spec(nodes, [{"name": "llama3.2:1b", "nodes": ["n0"]}])
    new = spec(nodes, [{"name": "llama3.2:1b", "nodes": ["n0"]}, {"name": "x", "nodes": ["n1"]}])
    plan = plan_rollout(old, new, "f" * 40)
    for name in ("n0", "n1"):
        c = plan.change_of(name)
        assert c is not None and c.gateway == "reload" and c.restarts == ()
    n1 = plan.change_of("n1")
    assert n1 is not None and n1.models_added == ("x:latest",)


_CHILD = """
import json, sys
from olladist.rollout import plan_rollout
from olladist.spec import Spec
out = []
for old, new, commit in json.load(sys.stdin):
    out.append(plan_rollout(Spec.model_validate(old), Spec.model_validate(new), commit).to_dict())
print(json.dumps(out))
"""


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(spec_pairs(), min_size=8, max_size=8))
def test_same_input_gives_the_same_waves_in_any_process(
    cases: list[tuple[dict[str, Any], dict[str, Any], str]],
) -> None:
    """Other processes, other hash seeds: the same waves, so nodes agree without talking."""
    here = [
        plan_rollout(Spec.model_validate(o), Spec.model_validate(n), c).to_dict()
        for o, n, c in cases
    ]
    for seed in ("1", "4242"):
        result = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=json.dumps(cases),
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert json.loads(result.stdout) == here


@pytest.mark.parametrize("commit", ["0" * 40, "f" * 40])
def test_waves_depend_only_on_specs_and_commit(commit: str) -> None:
    nodes = [node(k) for k in range(5)]
    models = [{"name": "llama3.2:1b", "replicas": 2}, {"name": "gemma2:2b", "replicas": 3}]
    old = spec(nodes, models)
    new = spec(nodes, models, ollama={"env": {"OLLAMA_KEEP_ALIVE": "11m"}})
    # Node order in the spec does not matter.
    shuffled = spec(list(reversed(nodes)), list(reversed(models)))
    shuffled_new = spec(
        list(reversed(nodes)), list(reversed(models)), ollama={"env": {"OLLAMA_KEEP_ALIVE": "11m"}}
    )
    assert plan_rollout(old, new, commit) == plan_rollout(shuffled, shuffled_new, commit)
