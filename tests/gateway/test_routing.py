"""Routing through a real HAProxy: two gateways on 127.x addresses, fake Ollama instances.

Node n0 has instances i0 and i1; node n1 has instance i0. ``only-a`` lives on n0, ``only-b`` on
n1, ``both`` on both.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from olladist.gateway.topology import MAX_BODY
from olladist.names import normalize_model
from olladist.nodelocal import NodeTLS
from tests.gateway.certs import make_ca, make_node_cert
from tests.gateway.harness import Cluster, all_up, cluster, loopback_hosts, make_spec, wait_until

pytestmark = pytest.mark.integration

MODELS = [
    {"name": "only-a:1b", "nodes": ["n0"]},
    {"name": "only-b", "nodes": ["n1"]},
    {"name": "registry.ollama.ai/library/Both:7B", "nodes": ["n0", "n1"]},
    {"name": "team/affine:q4", "nodes": ["n0"], "strategy": "model-affinity"},
    {"name": "local-first:1b", "nodes": ["n0", "n1"], "strategy": "local-first"},
]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    hosts = loopback_hosts(2)
    spec = make_spec(hosts, {0: [2, 2], 1: [2]}, MODELS)
    with cluster(tmp_path_factory.mktemp("two"), spec) as c:
        for g in c.gateways.values():
            wait_until(lambda g=g: all_up(g))
        yield c


def client() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=30)


def post(c: Cluster, node: str, path: str, body: object, **kw: object) -> httpx.Response:
    with client() as h:
        return h.post(c.gw(node).url + path, json=body, **kw)  # type: ignore[arg-type]


def test_routes_by_model_to_the_nodes_that_hold_it(two_nodes: Cluster) -> None:
    seen = set()
    for _ in range(6):
        r = post(two_nodes, "n0", "/api/generate", {"model": "only-b", "prompt": "hi"})
        assert r.status_code == 200, r.text
        seen.add(r.json()["instance"])
        r = post(two_nodes, "n1", "/api/chat", {"model": "only-a:1b", "messages": []})
        assert r.status_code == 200, r.text
        assert r.json()["instance"].startswith("n0/")
    assert seen == {"n1/i0"}
    # The peer frontend strips the shared secret before the request reaches Ollama.
    assert r.json()["peer_header"] is None
    # Ollama on loopback refuses unknown Host headers: the gateway always says localhost.
    with client() as h:
        r = h.post(
            two_nodes.gw("n0").url + "/api/generate",
            json={"model": "only-a:1b"},
            headers={"Host": "llm.example.com"},
        )
    assert r.json()["host"] == "localhost"


def test_model_names_are_normalised_like_olladist_names(two_nodes: Cluster) -> None:
    for name in (
        "both:7b",
        "Both:7B",
        "library/both:7b",
        "registry.ollama.ai/library/both:7b",
        "only-b",
        "only-b:latest",
        "registry.ollama.ai/library/only-b",
    ):
        assert normalize_model(name) in {"both:7b", "only-b:latest"}
        r = post(two_nodes, "n0", "/api/embed", {"model": name, "input": "x"})
        assert r.status_code == 200, (name, r.text)
    for name in ("both", "registry.ollama.ai/both:7b", "other/both:7b"):
        r = post(two_nodes, "n0", "/api/embed", {"model": name, "input": "x"})
        assert r.status_code == 404, name


def test_openai_key_order_with_a_5_mib_body(two_nodes: Cluster) -> None:
    image = "A" * (5 * 1024 * 1024)
    body = (
        '{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":'
        f'"data:image/png;base64,{image}"'
        '}}]}],"model":"only-b","stream":false}'
    )
    with client() as h:
        r = h.post(
            two_nodes.gw("n0").url + "/v1/chat/completions",
            content=body,
            headers={"Content-Type": "application/json"},
        )
    assert r.status_code == 200, r.text
    assert r.json()["instance"] == "n1/i0"
    assert r.json()["body_len"] == len(body)


def test_a_body_too_large_to_find_the_model_is_413(two_nodes: Cluster) -> None:
    # Up to MAX_BODY (the limit docs/gateway.md promises) `model` may come last.
    head, tail = '{"messages":[{"content":"', '"}],"model":"only-b"}'
    body = head + "x" * (MAX_BODY - len(head) - len(tail)) + tail
    with client() as h:
        r = h.post(two_nodes.gw("n0").url + "/v1/chat/completions", content=body)
    assert r.status_code == 200, r.text
    assert r.json()["body_len"] == MAX_BODY
    body = '{"messages":[{"content":"' + "x" * (17 * 1024 * 1024) + '"}],"model":"only-b"}'
    with client() as h:
        r = h.post(
            two_nodes.gw("n0").url + "/v1/chat/completions",
            content=body,
            headers={"Content-Type": "application/json"},
        )
    assert r.status_code == 413
    assert "put `model` first" in r.json()["error"]
    # With `model` first the same size streams through: only the model must fit the buffer.
    body = '{"model":"only-b","messages":[{"content":"' + "x" * (17 * 1024 * 1024) + '"}]}'
    with client() as h:
        r = h.post(two_nodes.gw("n0").url + "/v1/chat/completions", content=body)
    assert r.status_code == 200
    assert r.json()["body_len"] == len(body)


def test_unknown_model_is_ollamas_404_and_missing_model_400(two_nodes: Cluster) -> None:
    r = post(two_nodes, "n0", "/api/generate", {"model": 'nope"x', "prompt": "hi"})
    assert r.status_code == 404
    assert r.json() == {"error": "model 'nope\"x' not found"}
    r = post(two_nodes, "n0", "/api/show", {"name": "only-b"})
    assert r.status_code == 200, r.text
    r = post(two_nodes, "n0", "/api/chat", {"messages": []})
    assert r.status_code == 400
    assert r.json() == {"error": "model is required"}
    with client() as h:
        # Answered from the live view (test_live.py), under the name asked.
        r = h.get(two_nodes.gw("n0").url + "/v1/models/only-b")
        assert r.status_code == 200
        assert r.json()["id"] == "only-b"
        assert h.get(two_nodes.gw("n0").url + "/v1/models/ghost").status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/pull"),
        ("POST", "/api/push"),
        ("POST", "/api/create"),
        ("POST", "/api/copy"),
        ("DELETE", "/api/delete"),
        ("POST", "/api/blobs/sha256:00"),
        ("POST", "/api/me"),
        ("POST", "/api/signout"),
        ("DELETE", "/api/user/keys/abc"),
        ("GET", "/api/experimental/x"),
        ("POST", "/api/%70ull"),
        ("POST", "//api//pull/"),
    ],
)
def test_admin_api_is_403_by_default(two_nodes: Cluster, method: str, path: str) -> None:
    with client() as h:
        r = h.request(method, two_nodes.gw("n0").url + path, json={"model": "only-a:1b"})
    assert r.status_code == 403
    assert "admin_api" in r.json()["error"]


def test_cluster_view_lists_every_model(two_nodes: Cluster) -> None:
    with client() as h:
        tags = h.get(two_nodes.gw("n1").url + "/api/tags").json()
        models = h.get(two_nodes.gw("n1").url + "/v1/models").json()
        head = h.head(two_nodes.gw("n1").url + "/api/tags")
    want = sorted(normalize_model(m["name"]) for m in MODELS)
    assert [m["name"] for m in tags["models"]] == want
    assert [m["id"] for m in models["data"]] == want
    assert head.status_code == 200
    assert head.content == b""


def test_ps_shows_the_whole_cluster_and_version_comes_from_this_node(two_nodes: Cluster) -> None:
    with client() as h:
        ps = h.get(two_nodes.gw("n1").url + "/api/ps").json()
        version = h.get(two_nodes.gw("n1").url + "/api/version").json()
        root = h.get(two_nodes.gw("n1").url + "/")
    # Every instance's loaded models (the fakes each load one of their own), with where.
    assert [(m["name"], m["loaded_on"]) for m in ps["models"]] == [
        ("n1/i0-loaded:latest", ["n1/i0"]),
        ("n0/i0-loaded:latest", ["n0/i0"]),
        ("n0/i1-loaded:latest", ["n0/i1"]),
    ]
    assert version["instance"] == "n1/i0"
    assert root.text == "Ollama is running"


def test_ps_lists_a_model_loaded_twice_once(gw_tmp: Path) -> None:
    spec = make_spec(loopback_hosts(2), {0: [1, 1], 1: [1]}, [{"name": "m", "nodes": ["n0"]}])
    with cluster(gw_tmp, spec) as c, client() as h:
        for fake in c.fakes.values():
            h.post(f"http://127.0.0.1:{fake.port}/fake/ps", json=["same:latest"])
        wait_until(lambda: len(h.get(c.gw("n1").url + "/api/ps").json()["models"]) == 1)
        ps = h.get(c.gw("n1").url + "/api/ps").json()
    assert [(m["name"], m["loaded_on"]) for m in ps["models"]] == [
        ("same:latest", ["n0/i0", "n0/i1", "n1/i0"])
    ]
    assert ps["models"][0]["size_vram"] == 1234


def test_stats_page_and_prometheus_metrics(two_nodes: Cluster) -> None:
    g = two_nodes.gw("n0")
    with client() as h:
        metrics = h.get(f"http://{g.host}:{g.stats_port}/metrics")
        page = h.get(f"http://{g.host}:{g.stats_port}/")
    assert metrics.status_code == 200
    assert 'haproxy_server_status{proxy="instances",server="i0",state="UP"} 1' in metrics.text
    assert page.status_code == 200 and "route.least-loaded.n0.n1" in page.text


def test_model_affinity_pins_a_model_to_one_instance(two_nodes: Cluster) -> None:
    seen = {
        post(two_nodes, "n0", "/api/generate", {"model": "team/affine:q4"}).json()["instance"]
        for _ in range(8)
    }
    assert len(seen) == 1


def test_local_first_stays_local(two_nodes: Cluster) -> None:
    for node in ("n0", "n1"):
        for _ in range(4):
            r = post(two_nodes, node, "/api/generate", {"model": "local-first:1b"})
            assert r.json()["instance"].startswith(node + "/")


def test_streaming_lines_arrive_one_by_one(two_nodes: Cluster) -> None:
    body = {"model": "only-b", "stream": True, "lines": 5, "delay": 0.2}
    arrivals = []
    with client() as h:
        t0 = time.monotonic()
        with h.stream("POST", two_nodes.gw("n0").url + "/api/generate", json=body) as r:
            assert r.headers["content-type"] == "application/x-ndjson"
            for line in r.iter_lines():
                if line:
                    arrivals.append(time.monotonic() - t0)
                    json.loads(line)
    assert len(arrivals) == 5
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert arrivals[0] < 0.15, arrivals
    assert all(g > 0.12 for g in gaps), gaps


def test_peer_port_refuses_strangers(two_nodes: Cluster) -> None:
    n1 = two_nodes.gw("n1")
    url = f"http://{n1.host}:{n1.peer_port}/api/generate"
    secret = (two_nodes.base / "etc/olladist/secrets/peer.map").read_text().split()[1]
    body = {"model": "only-b"}
    with client() as h:
        # From this test's own address (127.0.0.1), not a node's: refused whatever it sends.
        r = h.post(url, json=body, headers={"X-Olladist-Peer": secret})
        assert r.status_code == 403
    n0_host = two_nodes.gw("n0").host
    transport = httpx.HTTPTransport(local_address=n0_host)
    with httpx.Client(transport=transport, trust_env=False, timeout=10) as h:
        assert h.post(url, json=body).status_code == 403
        assert h.post(url, json=body, headers={"X-Olladist-Peer": ""}).status_code == 403
        assert h.post(url, json=body, headers={"X-Olladist-Peer": "x" * 64}).status_code == 403
        r = h.post(url, json=body, headers={"X-Olladist-Peer": secret})
        assert r.status_code == 200
        assert r.json()["instance"] == "n1/i0"
        # A peer routes only to its own instances: a model it lacks is 404, never forwarded.
        r = h.post(url, json={"model": "only-a:1b"}, headers={"X-Olladist-Peer": secret})
        assert r.status_code == 404


def test_least_loaded_queues_then_answers_503_json(gw_tmp: Path) -> None:
    hosts = loopback_hosts(1)
    spec = make_spec(
        hosts,
        {0: [1]},
        [{"name": "m", "nodes": ["n0"]}],
        gateway={"timeouts": {"queue": "500ms", "server": "30s", "connect": "1s"}},
    )
    with cluster(gw_tmp, spec) as c:
        wait_until(lambda: all_up(c.gw("n0")))
        slow = {"model": "m", "stream": True, "lines": 3, "delay": 0.5}
        results: list[int] = []

        def hold() -> None:
            results.append(post(c, "n0", "/api/generate", slow).status_code)

        t = threading.Thread(target=hold)
        t.start()
        time.sleep(0.2)
        t0 = time.monotonic()
        r = post(c, "n0", "/api/generate", {"model": "m"})
        waited = time.monotonic() - t0
        t.join()
    assert results == [200]
    assert r.status_code == 503
    assert r.json()["error"].startswith("server busy")
    assert 0.4 < waited < 3


def test_api_keys(gw_tmp: Path) -> None:
    good = "sk-test-0123456789"
    keys = "# sha256 of each key\n" + hashlib.sha256(good.encode()).hexdigest() + "\n"
    hosts = loopback_hosts(1)
    spec = make_spec(
        hosts,
        {0: [1]},
        [{"name": "m", "nodes": ["n0"]}],
        gateway={"api_keys_file": "/etc/olladist/api-keys", "admin_api": "allow"},
    )
    with cluster(gw_tmp, spec, local_files={"/etc/olladist/api-keys": keys}) as c:
        url = c.gw("n0").url
        with client() as h:
            r = h.post(url + "/api/generate", json={"model": "m"})
            assert r.status_code == 401
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert "API key" in r.json()["error"]
            bad = {"Authorization": "Bearer sk-test-wrong"}
            r = h.post(url + "/api/generate", json={"model": "m"}, headers=bad)
            assert r.status_code == 401
            ok = {"Authorization": f"Bearer {good}"}
            r = h.post(url + "/api/generate", json={"model": "m"}, headers=ok)
            assert r.status_code == 200
            # `/` stays open for load-balancer probes; it says nothing about the cluster.
            assert h.get(url + "/").status_code == 200
            # admin_api: allow sends the admin API to this node's own instances.
            r = h.post(url + "/api/pull", json={"model": "x"}, headers=ok)
            assert r.status_code == 200
            assert r.json()["instance"] == "n0/i0"


def test_public_tls(gw_tmp: Path) -> None:
    pki = gw_tmp / "pki"
    pki.mkdir()
    ca_key, ca = make_ca(pki)
    cert = make_node_cert(pki, "gateway", ca_key, ca)
    spec = make_spec(loopback_hosts(1), {0: [1]}, [{"name": "m", "nodes": ["n0"]}])
    with cluster(gw_tmp, spec, tls={"n0": NodeTLS(public_cert=str(cert))}) as c:
        g = c.gw("n0")
        # The certificate names no host: check the chain, not the name.
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.check_hostname = False
        with httpx.Client(verify=ctx, trust_env=False, timeout=10) as h:
            r = h.post(f"https://{g.host}:{g.port}/api/generate", json={"model": "m"})
            assert r.status_code == 200
            assert r.json()["instance"] == "n0/i0"
        with client() as h, pytest.raises(httpx.HTTPError):
            h.post(f"http://{g.host}:{g.port}/api/generate", json={"model": "m"})


def test_peer_mtls(gw_tmp: Path) -> None:
    pki = gw_tmp / "pki"
    pki.mkdir()
    ca_key, ca = make_ca(pki)
    tls = {
        name: NodeTLS(peer_cert=str(make_node_cert(pki, name, ca_key, ca)), peer_ca=str(ca))
        for name in ("n0", "n1")
    }
    spec = make_spec(loopback_hosts(2), {0: [1], 1: [1]}, MODELS)
    with cluster(gw_tmp, spec, tls=tls) as c:
        for g in c.gateways.values():
            wait_until(lambda g=g: all_up(g))
        r = post(c, "n0", "/api/generate", {"model": "only-b"})
        assert r.status_code == 200, r.text
        assert r.json()["instance"] == "n1/i0"
        n1 = c.gw("n1")
        # Plain HTTP, or TLS without a client certificate, does not get through.
        transport = httpx.HTTPTransport(local_address=c.gw("n0").host, verify=False)
        with httpx.Client(transport=transport, trust_env=False, timeout=5) as h:
            with pytest.raises(httpx.HTTPError):
                h.post(f"http://{n1.host}:{n1.peer_port}/api/generate", json={"model": "only-b"})
            with pytest.raises(httpx.HTTPError):
                h.post(f"https://{n1.host}:{n1.peer_port}/api/generate", json={"model": "only-b"})


def test_chunked_body_and_expect_100_continue(two_nodes: Cluster) -> None:
    payload = (
        '{"messages":[{"content":"' + "x" * (3 * 1024 * 1024) + '"}],"model":"only-b"}'
    ).encode()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(payload), 65536):
            yield payload[i : i + 65536]

    with client() as h:
        url = two_nodes.gw("n0").url + "/v1/chat/completions"
        r = h.post(url, content=chunks())  # no Content-Length: chunked
        assert r.status_code == 200, r.text
        assert r.json()["body_len"] == len(payload)
        r = h.post(url, content=payload, headers={"Expect": "100-continue"})
        assert r.status_code == 200, r.text


def test_a_dead_peer_leaves_rotation_and_local_instances_serve(gw_tmp: Path) -> None:
    spec = make_spec(loopback_hosts(2), {0: [1], 1: [1]}, [{"name": "m", "nodes": ["n0", "n1"]}])
    with cluster(gw_tmp, spec) as c:
        n0 = c.gw("n0")
        wait_until(lambda: all_up(n0))
        assert {
            post(c, "n0", "/api/generate", {"model": "m"}).json()["instance"] for _ in range(6)
        } == {
            "n0/i0",
            "n1/i0",
        }
        c.gw("n1").kill()
        # Requests that pick the dead peer before its checks fail are retried locally.
        for _ in range(6):
            r = post(c, "n0", "/api/generate", {"model": "m"})
            assert r.status_code == 200 and r.json()["instance"] == "n0/i0"
        wait_until(
            lambda: not next(s for s in n0.runtime.servers_state() if s.backend == "peers").serving
        )


def test_model_affinity_picks_one_instance_whichever_gateway_a_request_enters(
    gw_tmp: Path,
) -> None:
    """What HAProxy actually picks: every gateway (holders and not) sends a model-affinity
    model to the same instance, so its cache is warm wherever clients come in."""
    models = [
        {"name": f"affine{k}:1b", "nodes": ["n0", "n1"], "strategy": "model-affinity"}
        for k in range(4)
    ]
    spec = make_spec(loopback_hosts(3), {0: [2, 2], 1: [2, 2], 2: [2]}, models)
    with cluster(gw_tmp, spec) as c:
        for g in c.gateways.values():
            wait_until(lambda g=g: all_up(g))
        for m in models:
            picked = {
                post(c, node, "/api/generate", {"model": m["name"]}).json()["instance"]
                for node in ("n0", "n1", "n2")
                for _ in range(3)
            }
            assert len(picked) == 1, (m["name"], picked)
            assert picked.pop().split("/")[0] in ("n0", "n1")


def test_local_first_fails_over_to_the_peer_when_its_instance_dies(gw_tmp: Path) -> None:
    """local-first keeps requests on the node while its instance is up; once the checks see
    it down, the peer (a backup server) answers, and the peer's own gateway stays local."""
    model = {"name": "lf:1b", "nodes": ["n0", "n1"], "strategy": "local-first"}
    spec = make_spec(loopback_hosts(2), {0: [2], 1: [2]}, [model])
    with cluster(gw_tmp, spec) as c:
        for g in c.gateways.values():
            wait_until(lambda g=g: all_up(g))
        body = {"model": "lf:1b"}
        assert {post(c, "n0", "/api/generate", body).json()["instance"] for _ in range(4)} == {
            "n0/i0"
        }
        c.fakes["n0/i0"].kill()
        n0 = c.gw("n0").runtime
        wait_until(
            lambda: (
                not next(
                    s for s in n0.servers_state() if s.backend == "instances" and s.server == "i0"
                ).serving
            )
        )
        answers = [post(c, "n0", "/api/generate", body) for _ in range(4)]
        assert [(r.status_code, r.json()["instance"]) for r in answers] == [(200, "n1/i0")] * 4
        assert {post(c, "n1", "/api/generate", body).json()["instance"] for _ in range(4)} == {
            "n1/i0"
        }
