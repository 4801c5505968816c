"""Which enabled units the plan may disable: only those olladist renders."""

from __future__ import annotations

from olladist.plan import Kind, Observed, is_rendered_unit, plan


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
