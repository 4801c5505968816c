"""Which enabled units the plan may disable: only those olladist renders."""

from __future__ import annotations

from olladist.plan import Action, Kind, Observed, Plan, is_rendered_unit, plan
from olladist.report import format_unplanned
from olladist.units import dropin_unit, instance_dropin_path, instance_name, instance_unit


def test_only_rendered_units_are_disabled_never_the_reconciler() -> None:
    enabled = frozenset(
        {
            "olladist-reconcile.service",
            "olladist-gateway.service",
            "olladist-ollama@old.service",
            "olladist-other.service",
        }
    )
    p = plan("n1", {}, Observed({}, frozenset(), enabled))
    disabled = sorted(a.target for a in p.actions if a.kind is Kind.DISABLE)
    assert disabled == ["olladist-gateway.service", "olladist-ollama@old.service"]


def test_rendered_unit_names() -> None:
    assert is_rendered_unit("olladist-ollama@gpu0.service")
    assert is_rendered_unit("olladist-gateway.service")
    assert not is_rendered_unit("olladist-ollama@.service")
    assert not is_rendered_unit("olladist-reconcile.service")


def test_instance_unit_names_are_made_and_read_in_one_place() -> None:
    assert instance_unit("gpu0") == "olladist-ollama@gpu0.service"
    assert instance_name(instance_unit("gpu0")) == "gpu0"
    assert instance_name("olladist-ollama@.service") is None
    assert instance_name("olladist-gateway.service") is None
    dropin = instance_dropin_path("gpu0")
    assert dropin == "/etc/systemd/system/olladist-ollama@gpu0.service.d/10-olladist.conf"
    assert dropin_unit(dropin) == "olladist-ollama@gpu0.service"
    assert dropin_unit("/etc/systemd/system/olladist-gateway.service") is None
    assert dropin_unit("/etc/systemd/system/olladist-ollama@.service") is None
    assert dropin_unit("/etc/olladist/olladist-ollama@x.service.d/a.conf") is None


def test_apply_lists_the_model_actions_the_printed_plan_did_not_hold() -> None:
    pull = Action(Kind.PULL, "llama3.2:1b", "missing")
    preload = Action(Kind.PRELOAD, "llama3.2:1b@i0", "preload: true")
    restart = Action(Kind.RESTART, "olladist-ollama@i0.service", "its drop-in changed")
    p = Plan("n1", (restart, pull))
    assert format_unplanned(p, [restart, pull]) == ""
    text = format_unplanned(p, [restart, pull, preload])
    assert text.splitlines() == [
        "model actions planned once the instances answered (not in the plan above):",
        "  preload llama3.2:1b@i0 (preload: true)",
    ]


def test_a_package_upgrade_that_changes_only_the_shipped_lua_is_drift_and_reloads() -> None:
    # live.lua is shipped with the package, not rendered per node: a new version of it (the
    # node's settings unchanged) must still be written and make the gateway reload.
    from olladist.gateway.render import LIVE_LUA
    from olladist.render import render_node
    from olladist.specload import load_spec
    from olladist.units import GATEWAY_UNIT
    from tests.conftest import EXAMPLE_SPEC

    spec = load_spec(EXAMPLE_SPEC)
    node = spec.nodes[0].name
    desired = render_node(spec, node)
    on_disk = {p: (f.content, f.mode) for p, f in desired.items()}
    on_disk[LIVE_LUA] = ("-- the live.lua of the previous release\n", desired[LIVE_LUA].mode)
    enabled = frozenset(u for u in (GATEWAY_UNIT,))
    p = plan(node, desired, Observed(on_disk, frozenset(desired), enabled))
    writes = [a.target for a in p.actions if a.kind is Kind.WRITE]
    assert writes == [LIVE_LUA]
    assert Action(Kind.RELOAD, GATEWAY_UNIT, "its configuration changed") in p.actions
    assert p.drift
