"""Model sync against two real simulator instances sharing one model store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from olladist.check import check_tags
from olladist.models import (
    PRUNE_PER_TICK,
    ModelMemory,
    ModelPlan,
    ModelSync,
    observe_models,
    plan_models,
)
from olladist.placement import place
from olladist.plan import Kind
from olladist.sim.process import SimProcess, start_sim
from olladist.spec import Spec

pytestmark = pytest.mark.integration

MODELS = ["llama3.2:1b", "qwen2.5:0.5b", "nomic-embed-text"]


@dataclass
class Node:
    sims: list[SimProcess]

    def spec(self, models: list[dict[str, Any]], **policy: Any) -> Spec:
        return Spec.model_validate(
            {
                "cluster": "t",
                "policy": policy,
                "nodes": [
                    {
                        "name": "n1",
                        "address": "127.0.0.1",
                        "instances": [
                            {"name": f"i{k}", "port": s.port} for k, s in enumerate(self.sims)
                        ],
                    }
                ],
                "models": models,
            }
        )

    def stats(self) -> list[dict[str, Any]]:
        return [httpx.get(f"{s.url}/_sim/stats").json() for s in self.sims]

    def pulls(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for st in self.stats():
            for m, n in st["pulls_by_model"].items():
                out[m] = out.get(m, 0) + n
        return out


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    store = tmp_path / "models"
    env = {"OLLADIST_SIM_QUIET": "1", "OLLADIST_SIM_PULL_GBPS": "50"}
    sims = [start_sim(tmp_path / f"sim{k}", env, models_dir=store) for k in range(2)]
    try:
        yield Node(sims)
    finally:
        for s in sims:
            s.stop()


def converge(spec: Spec) -> tuple[list[Any], dict[str, str]]:
    actions, failed, _ = tick(spec, ModelMemory(), "c1")
    return actions, failed


def tick(
    spec: Spec, memory: ModelMemory, commit: str, timeout: float = 5.0
) -> tuple[list[Any], dict[str, str], ModelMemory]:
    """One reconcile tick of the model sync, as olladist.reconcile.execute runs it: observe,
    plan with what earlier ticks learnt, execute, remember."""
    n = spec.nodes[0]
    obs = observe_models(n, timeout=timeout)
    assert not isinstance(obs, str), obs
    mp = plan_models(spec, n, place(spec), obs, memory=memory, commit=commit)
    result = ModelSync(spec, n, backoff=0.01).execute([a for a in mp.actions if a.kind.is_model])
    return mp.actions, result.failed, memory.after(commit, result)


def model_plan(
    spec: Spec, memory: ModelMemory | None = None, commit: str = "c1", timeout: float = 5.0
) -> ModelPlan:
    obs = observe_models(spec.nodes[0], timeout=timeout)
    assert not isinstance(obs, str)
    return plan_models(spec, spec.nodes[0], place(spec), obs, memory=memory, commit=commit)


def drift(spec: Spec, errors: dict[str, str] | None = None) -> list[Any]:
    return model_plan(spec, ModelMemory(errors or {})).actions


def test_each_model_is_pulled_once_per_node_then_no_drift(node: Node) -> None:
    spec = node.spec([{"name": m, "nodes": "all"} for m in MODELS])
    actions, failed = converge(spec)
    assert failed == {}
    assert sorted(a.target for a in actions if a.kind is Kind.PULL) == sorted(
        ["llama3.2:1b", "qwen2.5:0.5b", "nomic-embed-text:latest"]
    )
    assert node.pulls() == {"llama3.2:1b": 1, "qwen2.5:0.5b": 1, "nomic-embed-text:latest": 1}
    # Both instances see the shared store.
    for s in node.sims:
        names = {m["name"] for m in httpx.get(f"{s.url}/api/tags").json()["models"]}
        assert {"llama3.2:1b", "qwen2.5:0.5b", "nomic-embed-text:latest"} <= names
    assert drift(spec) == []
    converge(spec)
    assert sum(node.pulls().values()) == 3  # idempotent: nothing pulled again


def test_extra_model_is_reported_and_pruned_only_with_prune_on(node: Node) -> None:
    converge(node.spec([{"name": m, "nodes": "all"} for m in MODELS]))
    smaller = [{"name": m, "nodes": "all"} for m in MODELS[:2]]
    report = drift(node.spec(smaller))
    assert [(a.kind, a.target) for a in report] == [(Kind.REPORT, "nomic-embed-text:latest")]
    assert "prune_models is off" in report[0].reason
    pruning = node.spec(smaller, prune_models=True)
    actions, failed = converge(pruning)
    assert [(a.kind, a.target) for a in actions] == [(Kind.DELETE_MODEL, "nomic-embed-text:latest")]
    assert failed == {}
    assert drift(pruning) == []


def test_prune_never_deletes_everything(node: Node) -> None:
    converge(node.spec([{"name": m, "nodes": "all"} for m in MODELS]))
    empty = node.spec([], prune_models=True)
    actions = drift(empty)
    assert {a.kind for a in actions} == {Kind.REPORT}
    assert all("never deletes every model" in a.reason for a in actions)


def test_prune_waits_for_a_loaded_model(node: Node) -> None:
    converge(node.spec([{"name": m, "nodes": "all"} for m in MODELS]))
    httpx.post(
        f"{node.sims[1].url}/api/generate",
        json={"model": "qwen2.5:0.5b", "stream": False},
        timeout=30,
    ).raise_for_status()
    actions = drift(node.spec([{"name": "llama3.2:1b", "nodes": "all"}], prune_models=True))
    by_target = {a.target: a for a in actions}
    assert by_target["qwen2.5:0.5b"].kind is Kind.REPORT
    assert "loaded on i1" in by_target["qwen2.5:0.5b"].reason
    assert by_target["nomic-embed-text:latest"].kind is Kind.DELETE_MODEL


def test_a_failed_pull_leaves_other_models_and_is_reported(node: Node) -> None:
    spec = node.spec([{"name": m, "nodes": "all"} for m in MODELS[:2]])
    converge(spec)
    for s in node.sims:
        httpx.post(f"{s.url}/_sim/faults", json={"disk_full": True}).raise_for_status()
    bigger = node.spec([{"name": m, "nodes": "all"} for m in [*MODELS[:2], "mistral:7b"]])
    _, failed = converge(bigger)
    assert list(failed) == ["mistral:7b"]
    assert "no space left on device" in failed["mistral:7b"]
    left = drift(bigger, failed)
    assert [(a.kind, a.target) for a in left] == [(Kind.PULL, "mistral:7b")]
    assert "last attempt failed" in left[0].reason
    names = {m["name"] for m in httpx.get(f"{node.sims[0].url}/api/tags").json()["models"]}
    assert {"llama3.2:1b", "qwen2.5:0.5b"} <= names


def test_unknown_model_fails_with_ollamas_error(node: Node) -> None:
    spec = node.spec([{"name": "no-such-model:1b", "nodes": "all"}])
    _, failed = converge(spec)
    # What Ollama says when the registry has no such model, passed on as it came.
    assert "pull model manifest: file does not exist" in failed["no-such-model:1b"]


def test_digest_pin_mismatch_keeps_the_previous_copy(node: Node) -> None:
    spec = node.spec([{"name": "llama3.2:1b", "nodes": "all"}])
    converge(spec)
    before = httpx.get(f"{node.sims[0].url}/api/tags").json()["models"][0]["digest"]
    pinned = node.spec([{"name": "llama3.2:1b", "nodes": "all", "digest": "sha256:" + "0" * 64}])
    actions = drift(pinned)
    assert [(a.kind, a.target) for a in actions] == [(Kind.PULL, "llama3.2:1b")]
    assert "differs from pin 000000000000" in actions[0].reason
    _, failed = converge(pinned)
    assert "spec pins 000000000000; kept the previous copy" in failed["llama3.2:1b"]
    tags = httpx.get(f"{node.sims[0].url}/api/tags").json()["models"]
    assert [(m["name"], m["digest"]) for m in tags] == [("llama3.2:1b", before)]


def loaded(node: Node) -> dict[str, list[str]]:
    out = {}
    for k, s in enumerate(node.sims):
        out[f"i{k}"] = [m["name"] for m in httpx.get(f"{s.url}/api/ps").json()["models"]]
    return out


@pytest.mark.parametrize("strategy", ["model-affinity", "least-loaded"])
def test_preload_loads_on_exactly_one_instance(node: Node, strategy: str) -> None:
    spec = node.spec(
        [{"name": "llama3.2:1b", "nodes": "all", "preload": True, "strategy": strategy}]
    )
    actions, failed = converge(spec)
    assert failed == {}
    preloads = [a.target for a in actions if a.kind is Kind.PRELOAD]
    assert len(preloads) == 1
    on = preloads[0].rpartition("@")[2]
    assert {i: m for i, m in loaded(node).items() if m} == {on: ["llama3.2:1b"]}
    assert drift(spec) == []


def test_preload_passes_keep_alive_and_is_not_repeated_after_an_eviction(node: Node) -> None:
    spec = node.spec([{"name": "llama3.2:1b", "nodes": "all", "preload": True, "keep_alive": "-1"}])
    actions, failed, memory = tick(spec, ModelMemory(), "c1")
    assert failed == {}
    (target,) = [a.target for a in actions if a.kind is Kind.PRELOAD]
    inst = int(target.rpartition("@")[2].removeprefix("i"))
    ps = httpx.get(f"{node.sims[inst].url}/api/ps").json()["models"]
    # keep_alive -1: Ollama keeps it forever and reports an expiry far in the future.
    assert ps[0]["expires_at"] > "2100"
    # Ollama evicts it (here: a client unloads it with keep_alive 0).
    httpx.post(
        f"{node.sims[inst].url}/api/generate",
        json={"model": "llama3.2:1b", "keep_alive": 0, "stream": False},
        timeout=30,
    ).raise_for_status()
    for _ in range(50):
        if not any(loaded(node).values()):
            break
        time.sleep(0.05)
    mp = model_plan(spec, memory, "c1")
    assert mp.actions == []
    assert any("has been unloaded since" in n for n in mp.notes), mp.notes
    # A new commit preloads again.
    assert [a.kind for a in model_plan(spec, memory, "c2").actions] == [Kind.PRELOAD]


def test_a_pin_the_registry_does_not_serve_is_pulled_once_per_commit(node: Node) -> None:
    pinned = node.spec([{"name": "llama3.2:1b", "nodes": "all", "digest": "sha256:" + "0" * 64}])
    memory = ModelMemory()
    for _ in range(10):  # ten reconcile intervals on one commit
        actions, _, memory = tick(pinned, memory, "c1")
    assert node.pulls() == {"llama3.2:1b": 1}
    (report,) = actions
    assert report.kind is Kind.REPORT
    assert "not the pin 000000000000" in report.reason
    assert "not pulled again until the commit or the pin changes" in report.reason
    # The next commit tries once more.
    for _ in range(2):
        _, _, memory = tick(pinned, memory, "c2")
    assert node.pulls() == {"llama3.2:1b": 2}


def test_prune_deletes_nothing_while_an_instance_is_unobservable(node: Node) -> None:
    converge(node.spec([{"name": m, "nodes": "all"} for m in MODELS]))
    smaller = node.spec([{"name": MODELS[0], "nodes": "all"}], prune_models=True)
    # Its /api/ps hangs: what it has loaded is unknown, so nothing may be deleted.
    httpx.post(f"{node.sims[1].url}/_sim/faults", json={"hang_all": True}).raise_for_status()
    actions = model_plan(smaller, timeout=1.0).actions
    assert {a.kind for a in actions} == {Kind.REPORT}
    assert all("cannot be observed" in a.reason for a in actions), actions
    # Killed: the same.
    node.sims[1].stop()
    actions, failed, _ = tick(smaller, ModelMemory(), "c1", timeout=1.0)
    assert failed == {}
    assert {a.kind for a in actions} == {Kind.REPORT}
    names = {m["name"] for m in httpx.get(f"{node.sims[0].url}/api/tags").json()["models"]}
    assert {"qwen2.5:0.5b", "nomic-embed-text:latest"} <= names


def test_prune_deletes_a_bounded_number_of_models_per_tick(node: Node) -> None:
    many = [*MODELS, "mistral:7b", "gemma2:2b"]
    converge(node.spec([{"name": m, "nodes": "all"} for m in many]))
    keep = node.spec([{"name": many[0], "nodes": "all"}], prune_models=True)
    memory = ModelMemory()
    deleted_per_tick = []
    for _ in range(4):
        actions, failed, memory = tick(keep, memory, "c1")
        assert failed == {}
        deleted_per_tick.append(sum(a.kind is Kind.DELETE_MODEL for a in actions))
    assert deleted_per_tick == [PRUNE_PER_TICK, PRUNE_PER_TICK, 0, 0]
    names = {m["name"] for m in httpx.get(f"{node.sims[0].url}/api/tags").json()["models"]}
    assert names == {"llama3.2:1b"}


def test_check_tags_passes_on_what_is_held_and_names_what_is_not(node: Node) -> None:
    """`olladist check`'s tags check, against a real (simulated) Ollama: it fails on a model
    the spec wants and the store lacks, which a list rendered from the spec never could."""
    held = node.spec([{"name": "llama3.2:1b", "nodes": "all"}])
    converge(held)
    wanted = node.spec([{"name": m, "nodes": "all"} for m in ("llama3.2:1b", "qwen2.5:0.5b")])
    with httpx.Client(trust_env=False, timeout=30) as client:
        ok = check_tags(client, node.sims[0].url, held)
        bad = check_tags(client, node.sims[0].url, wanted)
    assert ok.ok, ok.detail
    assert ok.detail == "/api/tags lists all 1 models of the spec, each held"
    assert not bad.ok
    assert bad.detail == "/api/tags lacks qwen2.5:0.5b"
