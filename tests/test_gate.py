"""The wave gate's decision: peers' reports in, go / wait / stop out (olladist.gate)."""

from __future__ import annotations

from typing import Any

import pytest

from olladist.gate import Action, Report, decide

C = "c" * 40
OLD = "b" * 40
WAVES = [["n1"], ["n2", "n3"], ["n4"]]


def rec(commit: str = C, state: str = "healthy", **extra: Any) -> dict[str, Any]:
    return {"commit": commit, "state": state, **extra}


def reports(**by_node: dict[str, Any] | str) -> dict[str, Report]:
    """A dict value is a record read; a string is the error of a peer that was not read."""
    return {
        n: Report(n, None, v) if isinstance(v, str) else Report(n, v) for n, v in by_node.items()
    }


def run(node: str, got: dict[str, Report], **kw: Any) -> Any:
    kw.setdefault("waiting", None)
    kw.setdefault("now", 1000.0)
    kw.setdefault("timeout_s", 600.0)
    return decide(C, WAVES, node, got, **kw)


def test_the_first_wave_goes_at_once() -> None:
    assert run("n1", reports(n2=rec(OLD), n3="cannot connect")).action is Action.GO


def test_a_later_wave_goes_once_every_earlier_node_is_healthy_or_unchanged() -> None:
    got = reports(n1=rec(), n2=rec(state="unchanged"), n3=rec())
    assert run("n4", got).action is Action.GO
    assert run("n2", reports(n1=rec(), n3=rec(state="waiting"))).action is Action.GO


def test_an_unreachable_peer_is_not_healthy() -> None:
    v = run("n2", reports(n1="cannot connect: refused"))
    assert v.action is Action.WAIT and v.wave == 1 and v.nodes == ("n1",)
    assert "unreachable: cannot connect: refused" in v.reason


def test_a_peer_missing_from_the_reports_is_not_healthy() -> None:
    v = run("n2", {})
    assert (v.action, v.nodes) == (Action.WAIT, ("n1",))


@pytest.mark.parametrize("state", ["applying", "waiting", "stopped", None])
def test_a_peer_not_yet_healthy_holds_the_later_waves(state: str | None) -> None:
    v = run("n4", reports(n1=rec(), n2=rec(state=state or ""), n3=rec()))
    assert (v.action, v.wave, v.nodes) == (Action.WAIT, 2, ("n2",))


def test_healthy_on_another_commit_is_not_healthy_on_this_one() -> None:
    v = run("n2", reports(n1=rec(OLD)))
    assert v.action is Action.WAIT and f"on {OLD[:12]}" in v.reason


def test_the_first_wave_not_healthy_is_the_one_waited_on() -> None:
    v = run("n4", reports(n1="timed out", n2=rec(), n3=rec()))
    assert (v.wave, v.nodes) == (1, ("n1",))


def test_a_failed_report_from_any_node_stops_every_other() -> None:
    got = reports(n1=rec(state="failed", reason="olladist-ollama@i0 exited", failed={C: "x"}))
    for node in ("n2", "n3", "n4"):
        v = run(node, got)
        assert v.action is Action.STOP and v.nodes == ("n1",) and v.wave == 1
        assert "failed on n1: x" in v.reason
    # Even a peer that has moved on still reports the commit it rolled back from.
    moved_on = reports(n1=rec(OLD, failed={C: "broke"}), n2=rec(), n3=rec())
    assert run("n4", moved_on).action is Action.STOP
    # A node of the first wave stops too: it never applies a commit another node failed.
    assert run("n1", reports(n4=rec(failed={C: "late"}))).action is Action.STOP


def test_a_wave_that_does_not_report_within_the_timeout_stops_the_rollout() -> None:
    got = reports(n1=rec(), n2=rec(), n3="cannot connect")
    v = run("n4", got, waiting=(2, 400.0), now=1000.0, timeout_s=600.0)
    assert (v.action, v.wave, v.nodes) == (Action.STOP, 2, ("n3",))
    assert "wave 2 did not report healthy" in v.reason and "n3 (unreachable" in v.reason
    # Not yet: 599 s.
    assert run("n4", got, waiting=(2, 401.0), now=1000.0).action is Action.WAIT


def test_the_timeout_counts_from_when_the_wave_itself_began_to_be_waited_on() -> None:
    # This node waited long on wave 1; wave 2 is newly the one waited on: no stop yet.
    got = reports(n1=rec(), n2=rec(state="applying"), n3=rec())
    v = run("n4", got, waiting=(1, 0.0), now=1000.0, timeout_s=600.0)
    assert (v.action, v.wave) == (Action.WAIT, 2)


def test_nodes_without_a_peer_port_are_not_waited_on() -> None:
    got = reports(n1="no peer port: it has no instances")
    assert run("n2", got, exempt={"n1"}).action is Action.GO


def test_a_node_in_no_wave_goes() -> None:
    assert run("gw", {}).action is Action.GO
