"""The live view (live.lua) in a real HAProxy, in front of fake instances whose model store the
tests change: what is listed, readiness waits and their 503, duplicate keys, the live report.

Nodes: n0 has instances i0 and i1, n1 has i0 alone, n2 has i0. ``solo`` lives on n1 only (its
only instance), ``both`` on n0 and n2, ``mine`` on n0.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import ollama
import pytest

from olladist.drain import drain_instance, set_ready
from olladist.gateway.pulls import PullBoard
from olladist.layout import Layout
from olladist.ollama import Progress
from tests.gateway.harness import (
    Cluster,
    Fake,
    cluster,
    live,
    loopback_hosts,
    make_spec,
    start_fake,
    wait_port,
    wait_until,
)

pytestmark = pytest.mark.integration

MODELS = [
    {"name": "solo", "nodes": ["n1"]},
    {"name": "both", "nodes": ["n0", "n2"]},
    {"name": "mine", "nodes": ["n0"]},
]
INTERVAL = 0.3  # make_spec's health interval


@pytest.fixture
def three(gw_tmp: Path) -> Iterator[Cluster]:
    spec = make_spec(
        loopback_hosts(3),
        {0: [2, 2], 1: [2], 2: [2]},
        MODELS,
        gateway={"timeouts": {"queue": "3s", "server": "30s", "client": "30s", "connect": "1s"}},
    )
    with cluster(gw_tmp, spec) as c:
        yield c


def http() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=30)


def tags(c: Cluster, node: str) -> list[str]:
    with http() as h:
        return [m["name"] for m in h.get(c.gw(node).url + "/api/tags").json()["models"]]


def gen(c: Cluster, node: str, model: str) -> httpx.Response:
    with http() as h:
        return h.post(c.gw(node).url + "/api/generate", json={"model": model, "prompt": "hi"})


def set_store(fake: Fake, models: list[str]) -> None:
    with http() as h:
        h.post(f"http://127.0.0.1:{fake.port}/fake/tags", json=models).raise_for_status()


def reloads(c: Cluster, node: str) -> int:
    return c.gw(node).runtime.processes().reloads


def test_tags_entries_are_the_holders_own(three: Cluster) -> None:
    with http() as h:
        own = h.get(f"http://127.0.0.1:{three.fakes['n1/i0'].port}/api/tags").json()["models"]
        at_n0 = h.get(three.gw("n0").url + "/api/tags").json()["models"]
        v1 = h.get(three.gw("n2").url + "/v1/models").json()["data"]
    (solo,) = [m for m in at_n0 if m["name"] == "solo:latest"]
    assert solo == own[0]
    # Read with the official client's types: every field Ollama gives, as the holder gave it.
    with ollama.Client(host=three.gw("n2").url, trust_env=False) as client:
        listed = client.list()
    (entry,) = [m for m in listed.models if m.model == "solo:latest"]
    theirs = ollama.ListResponse.model_validate({"models": own}).models[0]
    assert entry == theirs
    assert (entry.size, entry.digest, entry.details) == (theirs.size, theirs.digest, theirs.details)
    assert entry.details is not None and entry.details.family == "fake"
    assert {m["id"] for m in v1} == {"solo:latest", "both:latest", "mine:latest"}
    # `created` is the holder's modified_at in Unix seconds, as Ollama gives it.
    created = datetime.fromisoformat("2026-11-30T10:00:00+01:00").timestamp()
    assert {m["created"] for m in v1} == {int(created)}


def test_a_placed_model_is_listed_only_once_a_holder_has_it(three: Cluster) -> None:
    before = reloads(three, "n0")
    set_store(three.fakes["n1/i0"], [])
    wait_until(lambda: "solo:latest" not in tags(three, "n0"), timeout=2 * 4 * INTERVAL + 2)
    assert "solo:latest" not in tags(three, "n1")
    # A request meanwhile waits for the pull, and is served once it lands.
    result: list[httpx.Response] = []
    t = threading.Thread(target=lambda: result.append(gen(three, "n0", "solo")))
    t0 = time.monotonic()
    t.start()
    time.sleep(0.5)
    assert not result, "the request should be waiting for a holder"
    set_store(three.fakes["n1/i0"], ["solo:latest"])
    t.join(10)
    waited = time.monotonic() - t0
    assert result[0].status_code == 200, result[0].text
    assert result[0].json()["instance"] == "n1/i0"
    print(f"request sent 0.5 s before the model landed answered after {waited:.2f}s")
    assert waited < 3  # released when the model landed, not at the queue timeout
    wait_until(lambda: "solo:latest" in tags(three, "n0"))
    assert reloads(three, "n0") == before


def test_v1_models_name_answers_from_the_live_view(three: Cluster) -> None:
    with http() as h:
        r = h.get(three.gw("n0").url + "/v1/models/Solo")
        assert r.status_code == 200, r.text
        assert r.json()["id"] == "Solo" and r.json()["object"] == "model"
        set_store(three.fakes["n1/i0"], [])
        wait_until(lambda: "solo:latest" not in tags(three, "n0"))
        r = h.get(three.gw("n0").url + "/v1/models/solo")
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": "model 'solo' not found",
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
    }


def test_a_model_not_ready_in_time_gets_a_503_that_says_why(three: Cluster) -> None:
    set_store(three.fakes["n1/i0"], [])
    wait_until(lambda: "solo:latest" not in tags(three, "n0"))
    r = gen(three, "n0", "solo")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "2"
    assert r.json() == {
        "error": "model 'solo' is not ready on any node: n1 not in its model store yet"
    }


def test_killing_a_models_only_instance(three: Cluster) -> None:
    """It leaves /api/tags within two check intervals (plus one poll); a request meanwhile
    waits, then gets the clear 503; restarted, it is listed and answers, with no reload. A
    replicated model answers throughout."""
    before = reloads(three, "n0")
    failed: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            r = gen(three, "n0", "both")
            if r.status_code != 200:
                failed.append(r.status_code)

    t = threading.Thread(target=hammer)
    t.start()
    try:
        solo = three.fakes["n1/i0"]
        solo.kill()
        killed = time.monotonic()
        wait_until(lambda: "solo:latest" not in tags(three, "n0"), timeout=5, step=0.02)
        gone = time.monotonic() - killed
        print(f"killed only instance left /api/tags after {gone:.2f}s")
        # Its first failed check, n1's next poll, n0's next poll of n1: bounded, not timed.
        assert gone < 4 * INTERVAL + 2
        # Meanwhile (not yet down: fall is 2 checks) a request waits, then is told why.
        r = gen(three, "n0", "solo")
        assert r.status_code == 503, r.text
        assert "server busy" not in r.text
        assert r.json()["error"].startswith("model 'solo' is not ready on ")
        wait_until(lambda: live(three.gw("n1"))["placed"]["solo:latest"]["state"] == "down")
        r = gen(three, "n0", "solo")
        assert r.status_code == 503
        assert r.json()["error"] == "model 'solo' is not ready on any node: n1 down"
        assert r.headers["retry-after"] == "10"
        three.fakes["n1/i0"] = start_fake("n1/i0", solo.port, models=["solo:latest"])
        wait_port("127.0.0.1", solo.port)
        wait_until(lambda: "solo:latest" in tags(three, "n0"), timeout=10)
        r = gen(three, "n0", "solo")
        assert r.status_code == 200 and r.json()["instance"] == "n1/i0"
    finally:
        stop.set()
        t.join(30)
    assert failed == []
    assert reloads(three, "n0") == before


def test_a_drained_instance_is_waited_for_and_the_other_serves(three: Cluster) -> None:
    rt = three.gw("n1").runtime
    drain_instance(rt, "i0", timeout=5)
    try:
        # n1's only instance is drained (a restart on a new commit): requests wait for it.
        wait_until(lambda: live(three.gw("n1"))["placed"]["solo:latest"]["state"] == "restarting")
        result: list[httpx.Response] = []
        t = threading.Thread(target=lambda: result.append(gen(three, "n0", "solo")))
        t.start()
        time.sleep(0.5)
        assert not result
    finally:
        set_ready(rt, "i0")
    t.join(10)
    assert result[0].status_code == 200
    # n0's own two instances: one drained, the other takes every request at once.
    drain_instance(three.gw("n0").runtime, "i1", timeout=5)
    assert {gen(three, "n0", "mine").json()["instance"] for _ in range(4)} == {"n0/i0"}


def test_ps_shows_every_node_once_per_model(three: Cluster) -> None:
    with http() as h:
        for name in ("n0/i0", "n2/i0"):
            h.post(f"http://127.0.0.1:{three.fakes[name].port}/fake/ps", json=["both:latest"])
        wait_until(
            lambda: any(
                m["name"] == "both:latest" and len(m["loaded_on"]) == 2
                for m in h.get(three.gw("n1").url + "/api/ps").json()["models"]
            )
        )
    with ollama.Client(host=three.gw("n1").url, trust_env=False) as client:
        ps = client.ps()
    names = [m.model for m in ps.models]
    assert names.count("both:latest") == 1
    (both,) = [m for m in ps.models if m.model == "both:latest"]
    assert both.size_vram == 1234
    assert both.model_dump().get("loaded_on") in (None, ["n0/i0", "n2/i0"])


def test_the_live_report(three: Cluster) -> None:
    n0 = three.gw("n0")
    report = live(n0)
    assert report["version"] == 1 and report["node"] == "n0"
    assert [i["name"] for i in report["instances"]] == ["i0", "i1"]
    assert all(i["ready"] and i["health"] == "UP" for i in report["instances"])
    assert {m["name"] for m in report["models"]} == {"both:latest", "mine:latest"}
    assert report["placed"]["mine:latest"] == {"state": "ready", "reason": "ready", "coming": True}
    assert {p["node"]: p["reachable"] for p in report["peers"]} == {"n1": True, "n2": True}
    assert sorted(report["ready"]) == ["both:latest", "mine:latest", "solo:latest"]
    with http() as h:
        # Not on the public port; on the peer port only with the peer's credentials.
        r = h.get(n0.url + "/olladist/v1/live")
        assert r.status_code == 404 and "error" in r.json()
        r = h.get(f"http://{n0.host}:{n0.peer_port}/olladist/v1/live")
        assert r.status_code == 403


def post_raw(c: Cluster, node: str, path: str, body: bytes) -> httpx.Response:
    with http() as h:
        return h.post(
            c.gw(node).url + path, content=body, headers={"Content-Type": "application/json"}
        )


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"mine","model":"solo"}',
        b'{"model":"mine","prompt":"x","MODEL":"solo"}',
        b'{"model":"mine","mod\\u0065l":"solo"}',
    ],
)
def test_a_body_with_model_twice_is_refused(three: Cluster, body: bytes) -> None:
    r = post_raw(three, "n0", "/api/generate", body)
    assert r.status_code == 400, r.text
    assert "more than once or spelled another way" in r.json()["error"]


def test_a_model_key_json_query_cannot_see_is_refused(three: Cluster) -> None:
    # Ollama would run "solo"; the gateway does not guess, it refuses (no route by accident).
    for body in (b'{"Model":"solo"}', b'{"mod\\u0065l":"solo"}'):
        r = post_raw(three, "n0", "/api/generate", body)
        assert r.status_code == 400, r.text


@pytest.mark.parametrize(
    "body",
    [
        # `model` inside a nested object or a string is not a second top-level key.
        b'{"model":"mine","tools":[{"model":"solo"}]}',
        b'{"model":"mine","prompt":"say \\"model\\": twice, \\"model\\":"}',
        b'{"model":"mine","prompt":"caf\\u00e9"}',
    ],
)
def test_bodies_that_only_look_like_duplicates_are_routed(three: Cluster, body: bytes) -> None:
    r = post_raw(three, "n0", "/api/generate", body)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "mine"


def test_show_with_name_twice_is_refused(three: Cluster) -> None:
    r = post_raw(three, "n0", "/api/show", b'{"name":"mine","name":"solo"}')
    assert r.status_code == 400
    r = post_raw(three, "n0", "/api/show", b'{"name":"mine"}')
    assert r.status_code == 200


def test_a_pull_in_progress_and_a_failed_one_are_named(three: Cluster) -> None:
    """The reconciler tells the gateway how its pulls go (gateway/pulls.py, the runtime
    socket); a failed pull is not coming, so the answer comes at once."""
    set_store(three.fakes["n1/i0"], [])
    wait_until(lambda: "solo:latest" not in tags(three, "n0"))
    board = PullBoard(Layout(three.gw("n1").root))
    board.progress("solo", Progress("pulling sha256:ab", total=200, completed=87))
    wait_until(lambda: live(three.gw("n1"))["placed"]["solo:latest"]["state"] == "pulling")
    r = gen(three, "n0", "solo")
    assert r.status_code == 503
    assert r.json() == {"error": "model 'solo' is not ready on any node: n1 pulling (43%)"}
    board.finished({"solo": "manifest unknown"})
    wait_until(lambda: live(three.gw("n1"))["placed"]["solo:latest"]["state"] == "failed")
    t0 = time.monotonic()
    r = gen(three, "n0", "solo")
    assert r.status_code == 503 and r.headers["retry-after"] == "10"
    assert r.json() == {"error": "model 'solo' is not ready on any node: n1 pull failed"}
    assert time.monotonic() - t0 < 2  # not coming: no wait for the queue timeout (3 s)
    set_store(three.fakes["n1/i0"], ["solo:latest"])
    board.finished({})
    wait_until(lambda: "solo:latest" in tags(three, "n0"))
    assert gen(three, "n0", "solo").status_code == 200
