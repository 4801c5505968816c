"""Pure parts of the loop: restart slots across nodes, the drift-storm back-off, and planned
waits that keep the watchdog fed."""

from __future__ import annotations

import itertools
import json
import threading
import time

import pytest

from olladist.daemon import DRIFT_STORM_FREE, DRIFT_STORM_WINDOW, Daemon, _DriftGuard
from olladist.placement import place
from olladist.reconcile import restart_slot
from olladist.spec import Spec
from tests.conftest import HASH_SEEDS, python_with_hash_seed


def spec(n_nodes: int, models: list[dict[str, object]]) -> Spec:
    return Spec.model_validate(
        {
            "cluster": "c",
            "nodes": [
                {
                    "name": f"n{i}",
                    "address": f"10.0.0.{i + 1}",
                    "instances": [{"name": "gpu0", "port": 11435}],
                }
                for i in range(n_nodes)
            ],
            "models": models,
        }
    )


def test_nodes_sharing_a_model_never_share_a_restart_slot() -> None:
    s = spec(8, [{"name": f"m{j}", "replicas": 2} for j in range(12)])
    p = place(s)
    for commit in ("a" * 40, "b" * 40, "c" * 40):
        slots = {n.name: restart_slot(s, p, n.name, commit) for n in s.nodes}
        for a in p.assignments:
            held = [slots[n] for n in a.nodes]
            assert len(set(held)) == len(held), (a.model, held)


SLOTS = """
import json, sys
from olladist.placement import place
from olladist.reconcile import restart_slot
from olladist.spec import Spec
from tests.conftest import HASH_SEEDS, python_with_hash_seed
s = Spec.model_validate(json.loads(sys.argv[1]))
print(json.dumps([restart_slot(s, place(s), n.name, "1" * 40) for n in s.nodes]))
"""


def test_slots_are_the_same_on_every_node_and_change_with_the_commit() -> None:
    s = spec(6, [{"name": f"m{j}", "replicas": 2} for j in range(6)])
    p = place(s)
    first = [restart_slot(s, p, n.name, "1" * 40) for n in s.nodes]
    # Every node computes the slots in its own process: other hash seeds, same slots.
    data = json.dumps(s.model_dump(mode="json"))
    elsewhere = {python_with_hash_seed(SLOTS, data, seed=seed) for seed in HASH_SEEDS}
    assert [json.loads(out) for out in elsewhere] == [first]
    orders = {tuple(restart_slot(s, p, n.name, c * 40) for n in s.nodes) for c in "23456789"}
    assert len(orders) > 1  # who goes first rotates with the commit


def test_a_model_on_every_node_puts_every_node_in_its_own_slot() -> None:
    s = spec(4, [{"name": "embed", "nodes": "all"}])
    p = place(s)
    assert sorted(restart_slot(s, p, n.name, "f" * 40) for n in s.nodes) == [0, 1, 2, 3]


def test_drift_guard_backs_off_only_when_the_same_drift_keeps_returning() -> None:
    guard = _DriftGuard()
    clock = itertools.count(0.0, 1.0)
    delays = [guard.delay("write:/etc/olladist/haproxy.cfg", next(clock)) for _ in range(6)]
    assert delays[:DRIFT_STORM_FREE] == [0.0] * DRIFT_STORM_FREE
    assert delays[DRIFT_STORM_FREE:] == [2.0, 4.0, 8.0]
    # Other drift starts afresh, and so does the same drift after a quiet window.
    assert guard.delay("write:/etc/systemd/system/x", 10.0) == 0.0
    assert guard.delay("write:/etc/systemd/system/x", 10.0 + DRIFT_STORM_WINDOW + 1) == 0.0


def test_a_planned_wait_keeps_the_watchdog_fed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The restart stagger and the drift back-off can last longer than WatchdogSec: the
    heartbeat (the same thread systemd hears) keeps pinging through them."""
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # pings every 0.1 s while alive in 0.2 s
    d = Daemon.__new__(Daemon)
    d.stopping = threading.Event()
    d.alive_at = time.monotonic()
    pings: list[float] = []
    d.notify = lambda message: pings.append(time.monotonic()) if message == "WATCHDOG=1" else None
    beat = threading.Thread(target=d._heartbeat, daemon=True)
    beat.start()
    started = time.monotonic()
    try:
        assert d._sleep(1.5) is False
    finally:
        d.stopping.set()
        beat.join(5)
    # A plain wait would stop the pings 0.2 s in; the planned wait pings to its end.
    assert any(t - started > 1.0 for t in pings), [round(t - started, 2) for t in pings]


def test_a_planned_wait_ends_when_the_daemon_stops() -> None:
    d = Daemon.__new__(Daemon)
    d.stopping = threading.Event()
    threading.Timer(0.2, d.stopping.set).start()
    assert d._sleep(60) is True
