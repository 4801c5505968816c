"""Property: any valid spec, however hostile its legal names and values, renders files that
pass haproxy -c and systemd-analyze verify; illegal names never get past validation.

The generator draws every strategy (cluster-wide and per model), models on several nodes
(replicas up to the node count, `nodes: all`, pinned lists), and nodes without instances
(gateway-only), so every kind of backend the topology builds is validated."""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from olladist.gateway.render import node_local_files
from olladist.layout import Layout
from olladist.placement import place
from olladist.render import render_node
from olladist.spec import (
    ENV_KEY_PATTERN,
    LABEL_PATTERN,
    MODEL_PATTERN,
    NAME_PATTERN,
    RESERVED_ENV,
    Spec,
    Strategy,
)
from olladist.validators import validate_render
from tests.conftest import need, node_secrets

names = st.from_regex(NAME_PATTERN, fullmatch=True)
labels = st.from_regex(LABEL_PATTERN, fullmatch=True)
model_names = st.from_regex(MODEL_PATTERN, fullmatch=True).filter(lambda s: len(s) <= 200)
strategies = st.sampled_from([str(s) for s in Strategy])
env_keys = st.from_regex(ENV_KEY_PATTERN, fullmatch=True).filter(lambda k: k not in RESERVED_ENV)
# Anything printable, including quotes, backslashes, %, $, ;, # and non-ASCII.
env_values = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x7f"), max_size=40
)


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    node_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    ports = iter(range(20000, 30000))
    nodes = []
    # The first node always has instances, so every model has somewhere to go; the others
    # mostly do (sampled_from favours its first value), so models get several holders.
    for i, name in enumerate(node_names):
        gateway_only = i > 0 and draw(st.sampled_from([False, False, True]))
        inst_names = (
            [] if gateway_only else draw(st.lists(names, min_size=1, max_size=3, unique=True))
        )
        nodes.append(
            {
                "name": name,
                "address": f"10.9.{i}.1",
                "labels": draw(st.dictionaries(labels, labels, max_size=2)),
                "instances": [
                    {
                        "name": inst,
                        "port": next(ports),
                        "gpus": [str(j)],
                        "num_parallel": draw(st.integers(1, 16)),
                        "env": draw(st.dictionaries(env_keys, env_values, max_size=2)),
                    }
                    for j, inst in enumerate(inst_names)
                ],
            }
        )
    holders = [n["name"] for n in nodes if n["instances"]]
    models = []
    for m in draw(st.lists(model_names, max_size=4, unique_by=lambda m: m.lower())):
        model: dict[str, Any] = {"name": m}
        where = draw(st.sampled_from(["all", "replicas", "pinned"]))
        if where == "replicas":
            model["replicas"] = draw(st.integers(1, len(holders)))
        elif where == "all":
            model["nodes"] = "all"
        else:
            model["nodes"] = draw(st.lists(st.sampled_from(holders), min_size=1, unique=True))
        model["strategy"] = draw(st.none() | strategies)
        models.append(model)
    return {
        "cluster": draw(names),
        "gateway": {"strategy": draw(strategies)},
        "ollama": {
            "binary": sys.executable,
            "env": draw(st.dictionaries(env_keys, env_values, max_size=3)),
        },
        "nodes": nodes,
        "models": models,
    }


@pytest.mark.integration
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(specs())
def test_hostile_but_legal_specs_render_valid_files(raw: dict[str, Any]) -> None:
    need("haproxy")
    spec = Spec.model_validate(raw)
    placement = place(spec)
    with tempfile.TemporaryDirectory(prefix="od-live-") as live_dir:
        live = node_secrets(Layout(Path(live_dir)), spec)
        for node in spec.nodes:
            validate_render(
                lambda layout, n=node.name: render_node(spec, n, placement, layout),
                live=live,
                node_local=node_local_files(spec, node.name, placement),
            )


@pytest.mark.parametrize("strategy", list(Strategy))
def test_the_generator_reaches_every_strategy_on_a_model_with_several_holders(
    strategy: Strategy,
) -> None:
    """The property above is only as wide as its generator: it must make, for every strategy,
    a model that several nodes hold (the backends where strategies differ). It takes a few
    dozen examples; the bound of 2000 only makes a miss impossible in practice."""

    def shared_with(raw: dict[str, Any]) -> bool:
        spec = Spec.model_validate(raw)
        p = place(spec)
        return any(
            spec.strategy_for(m) == strategy and len(p.nodes_for(m.key)) > 1 for m in spec.models
        )

    # Generate only: the first example found is enough, shrinking it would be slow.
    quick = settings(max_examples=2000, database=None, phases=[Phase.generate], deadline=None)
    assert shared_with(find(specs(), shared_with, settings=quick))


ILLEGAL = ["a b", "a\nb", "a#b", 'a"b', "a'b", "a;b", "a%b", "a{b}", "a$b", "a\\b", "A", "-a", ""]


@pytest.mark.parametrize("bad", ILLEGAL)
def test_illegal_node_names_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        Spec.model_validate({"cluster": "c", "nodes": [{"name": bad, "address": "10.0.0.1"}]})


@given(st.text(min_size=1, max_size=30).filter(lambda s: not re.fullmatch(MODEL_PATTERN, s)))
def test_illegal_model_names_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        Spec.model_validate(
            {
                "cluster": "c",
                "nodes": [{"name": "n", "address": "10.0.0.1"}],
                "models": [{"name": bad}],
            }
        )
