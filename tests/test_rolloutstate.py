"""The rollout record of a node's status, and where the check after apply reaches the gateway."""

from __future__ import annotations

from olladist.errors import OlladistError
from olladist.gate import Action, Verdict
from olladist.nodelocal import NodeTLS
from olladist.placement import place
from olladist.reconcile import Desired
from olladist.rollout import plan_rollout
from olladist.rolloutstate import (
    begin,
    diff_view,
    failed_reason,
    lines,
    settle,
    stopped,
    stopped_reason,
    through,
    waiting,
)
from olladist.selfcheck import gateway_url
from olladist.spec import Spec

A, B = "a" * 40, "b" * 40


def spec(env: str = "10m", listen: str = "127.0.0.2") -> Spec:
    return Spec.model_validate(
        {
            "cluster": "c",
            "ollama": {"env": {"OLLAMA_KEEP_ALIVE": env}},
            "nodes": [
                {
                    "name": f"n{k}",
                    "address": f"127.0.0.{k + 2}",
                    "listen": listen,
                    "instances": [{"name": "i0", "port": 11500 + k}],
                }
                for k in range(3)
            ],
            "models": [{"name": "llama3.2:1b", "replicas": 2}, {"name": "qwen2.5:0.5b"}],
        }
    )


def test_begin_settle_and_the_failed_list() -> None:
    plan = plan_rollout(spec(), spec("11m"), B)
    record = begin({}, plan, "n0", A)
    assert record["commit"] == B and record["from"] == A and record["state"] == "applying"
    assert record["wave"] == (plan.wave_of("n0") or 0) + 1
    healthy = settle(record, [])
    assert (healthy["state"], healthy["reason"], healthy["failed"]) == ("healthy", None, {})
    assert (record["applied"], healthy["applied"]) == (A, B)
    failed = settle(record, ["olladist-ollama@i0.service is not running", "model x: gone"])
    assert (failed["state"], failed["applied"]) == ("failed", A)
    assert failed_reason(failed, B) == "olladist-ollama@i0.service is not running; model x: gone"
    assert failed_reason(failed, A) is None
    # A later commit keeps the list of commits this node rolled back from.
    later = begin(failed, plan_rollout(spec("11m"), spec("12m"), "c" * 40), "n0", A)
    assert failed_reason(later, B) is not None and later["state"] == "applying"
    text = "\n".join(lines(later))
    assert f"rolled back from {B[:12]}" in text and "waves:" in text


def test_a_node_the_commit_leaves_alone_is_unchanged() -> None:
    old = spec()
    new = old.model_copy(update={"models": [*old.models]})  # the same spec
    plan = plan_rollout(old, new, B)
    record = begin({}, plan, "n1", A)
    # Still in a wave (after those of the changed nodes, none here): it reports at its turn.
    assert record["wave"] == (plan.gate_wave_of("n1") or 0) + 1 and record["changed_waves"] == 0
    assert (record["state"], record["applied"]) == ("applying", A)
    settled = settle(record, [], unchanged=True)
    assert (settled["state"], settled["applied"]) == ("unchanged", B)
    assert "no change in the commit here" in lines(settled)[0]


def test_waiting_at_the_gate_survives_a_restart_and_stopping_keeps_the_old_commit() -> None:
    plan = plan_rollout(spec(), spec("11m"), B)
    record = begin({}, plan, "n0", A)
    first = waiting(record, Verdict(Action.WAIT, "waiting for wave 1", 1, ("n1",)))
    assert first["state"] == "waiting" and first["gate"]["wave"] == 1
    since = first["gate"]["since"]
    again = waiting(first, Verdict(Action.WAIT, "still", 1, ("n1",)))
    assert again["gate"]["since"] == since  # the same wave: the wait goes on
    # A restarted reconciler begins the same commit again: the wait resumes where it was.
    resumed = begin(again, plan, "n0", A)
    assert resumed["state"] == "waiting" and resumed["gate"]["since"] == since
    assert "gate:" in "\n".join(lines(resumed))
    assert "gate" not in through(resumed) and through(resumed)["state"] == "applying"
    stop = stopped(resumed, Verdict(Action.STOP, "commit failed on n1: broke", 1, ("n1",)))
    assert (stop["state"], stop["applied"], stop["stopped"]["nodes"]) == ("stopped", A, ["n1"])
    assert stopped_reason(stop, B) == "commit failed on n1: broke"
    assert stopped_reason(stop, A) is None
    assert "stopped:  commit failed on n1: broke" in "\n".join(lines(stop))
    text, data = diff_view(
        stop, "n0", commit=B, applied=A, spec_of={A: spec(), B: spec("11m")}.__getitem__
    )
    assert f"rollout: {B[:12]} stopped before this node: commit failed on n1: broke" in text
    assert data["state"]["stopped"] == {"wave": 1, "nodes": ["n1"], "reason": stop["reason"]}
    # A newer commit starts afresh.
    assert begin(stop, plan_rollout(spec("11m"), spec("12m"), A), "n0", B)["state"] == "applying"


def test_diff_view_shows_the_tip_rollout_and_a_rollback() -> None:
    specs = {A: spec(), B: spec("11m")}
    record = settle(begin({}, plan_rollout(specs[A], specs[B], B), "n0", A), ["it broke"])
    text, data = diff_view(record, "n0", commit=B, applied=A, spec_of=specs.__getitem__)
    assert text[0] == f"rollout: this node rolled back from {B[:12]}: it broke"
    assert any("qwen2.5:0.5b is held by" in line for line in text)  # one node, one instance
    assert data["plan"]["waves"] and data["state"]["failed"] == {B: "it broke"}
    # The tip applied: only the record.
    text, data = diff_view(record, "n0", commit=A, applied=A, spec_of=specs.__getitem__)
    assert data["plan"] is None and text[0].startswith(f"rollout:    {B[:12]}")

    def missing(commit: str) -> Spec:
        if commit == A:
            raise OlladistError("commit gone from the mirror")
        return specs[commit]

    text, _ = diff_view({}, "n0", commit=B, applied=A, spec_of=missing)
    assert text[0].startswith(f"rollout: cannot load the applied commit {A[:12]}")


def test_gateway_url_is_the_nodes_own_listen_address() -> None:
    for listen, host in (("127.0.0.2", "127.0.0.2"), ("0.0.0.0", "127.0.0.1"), ("::", "[::1]")):
        s = spec(listen=listen)
        desired = Desired("", s, "n0", place(s), {})
        assert gateway_url(desired) == f"http://{host}:11434"
    tls = NodeTLS(public_cert="/etc/olladist/gateway.pem")
    assert gateway_url(desired, tls) == "https://[::1]:11434"
