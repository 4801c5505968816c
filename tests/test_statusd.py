"""The reconciler's status server on its real unix socket, the cluster view it builds, and the
JSON Schema that documents it (docs/schema/cluster-view.schema.json)."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from olladist import clusterview
from olladist.files import write_tree
from olladist.layout import GATEWAY_RUN_DIR, STATUS_SOCKET, Layout
from olladist.nodeconfig import write_peer_secret
from olladist.nodelocal import NodeLocal, NodeTLS
from olladist.ollama import Progress
from olladist.peers import Peers
from olladist.placement import place
from olladist.reconcile import Desired
from olladist.render import render_node
from olladist.specload import load_spec
from olladist.state import State
from olladist.status import Status
from olladist.statusd import REDACTED, StatusServer, Transfers, get, scrub
from tests.conftest import EXAMPLE_SPEC, REPO, need, node_secrets
from tests.e2e.cluster import DEFAULT_MODELS, cluster_yaml
from tests.gateway.certs import make_ca, make_node_cert
from tests.harness.ports import free_port

SCHEMA = json.loads((REPO / "docs/schema/cluster-view.schema.json").read_text())


@dataclass
class FakeDaemon:
    """The attributes of olladist.daemon.Daemon the server reads; a plain value, no behaviour."""

    node: str
    layout: Layout
    local: NodeLocal = field(default_factory=NodeLocal)
    transfers: Transfers = field(default_factory=Transfers)
    desired: Desired | None = None
    activity: tuple[str, float] | None = None


@pytest.fixture
def daemon(short_root: Path) -> Iterator[FakeDaemon]:
    d = FakeDaemon("gpu-a", Layout(short_root))
    server = StatusServer(d).start()
    try:
        yield d
    finally:
        server.close()
    assert not d.layout.real(STATUS_SOCKET).exists()  # close() removes the socket


def _get(d: FakeDaemon, path: str) -> tuple[int, Any]:
    code, body = get(d.layout.real(STATUS_SOCKET), path)
    return code, json.loads(body) if body.startswith(b"{") else body


def test_status_is_the_saved_status_plus_what_the_daemon_knows(daemon: FakeDaemon) -> None:
    s = Status("gpu-a", applied_commit="a" * 40, runs=3, ok=True)
    s.save(State(daemon.layout))
    daemon.activity = ("SIGHUP", 1.5)
    daemon.transfers.update("llama3:latest", Progress("pulling abc", "abc", 1000, 250))
    code, data = _get(daemon, "/olladist/v1/status")
    assert code == 200
    assert data["applied_commit"] == "a" * 40 and data["runs"] == 3
    assert data["daemon"]["busy"] == {"reason": "SIGHUP", "since": 1.5}
    [t] = data["transfers"]
    assert (t["model"], t["completed"], t["total"]) == ("llama3:latest", 250, 1000)
    assert data["observed"]["error"] == "no spec loaded yet"


def test_no_secret_leaves_the_server(daemon: FakeDaemon) -> None:
    secret = write_peer_secret(daemon.layout).read_text().split()[1]
    s = Status("gpu-a")
    s.error(f"git fetch https://deploy:tok3n@git.example.com/x.git failed; header {secret}", None)
    s.save(State(daemon.layout))
    for path in ("/olladist/v1/status", "/olladist/v1/cluster"):
        _, body = get(daemon.layout.real(STATUS_SOCKET), path)
        text = body.decode()
        assert secret not in text and "tok3n" not in text, path
    _, data = _get(daemon, "/olladist/v1/status")
    assert data["errors"][0]["message"] == (
        f"git fetch https://{REDACTED}@git.example.com/x.git failed; header {REDACTED}"
    )


def test_scrub_leaves_plain_urls_alone() -> None:
    assert scrub("see http://127.0.0.1:8404/ and s3cr3t", ["s3cr3t"]) == (
        f"see http://127.0.0.1:8404/ and {REDACTED}"
    )


def test_page_is_served_with_a_strict_content_security_policy(daemon: FakeDaemon) -> None:
    path = daemon.layout.real(STATUS_SOCKET)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        s.sendall(b"GET /olladist/ HTTP/1.0\r\n\r\n")
        raw = b"".join(iter(lambda: s.recv(65536), b""))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    assert b"Content-Security-Policy: default-src 'none'; script-src 'self'" in head
    assert b'<script src="/olladist/page.js"' in body and b"<script>" not in body
    for asset in ("/olladist/page.js", "/olladist/page.css"):
        assert get(path, asset)[0] == 200


def test_unknown_paths_and_writes_are_refused_in_ollamas_error_shape(daemon: FakeDaemon) -> None:
    code, data = _get(daemon, "/olladist/v1/nope")
    assert code == 404 and data == {"error": "no such olladist endpoint: /olladist/v1/nope"}
    path = daemon.layout.real(STATUS_SOCKET)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        s.sendall(b"POST /olladist/v1/status HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        raw = b"".join(iter(lambda: s.recv(65536), b""))
    assert b" 405 " in raw.split(b"\r\n")[0] and b'"error"' in raw


def test_cluster_view_before_any_spec_is_valid(daemon: FakeDaemon) -> None:
    code, view = _get(daemon, "/olladist/v1/cluster")
    assert code == 200
    jsonschema.validate(view, SCHEMA)
    assert [n["name"] for n in view["nodes"]] == ["gpu-a"]
    assert view["nodes"][0]["state"] == "starting"


def _status(node: str, **kw: Any) -> dict[str, Any]:
    s = Status(node, applied_commit="b" * 40, attempted_commit="b" * 40, runs=2, ok=True).to_dict()
    s["health"] = [
        {
            "kind": "instance",
            "name": "gpu0",
            "status": "UP",
            "sessions": 1,
            "queued": 0,
            "check": "L7OK",
        }
    ]
    s["observed"] = {"present": [], "loaded": {}, "error": None, "observed_at": 1.0}
    s.update(kw)
    return s


def test_cluster_view_of_the_example_spec_with_one_node_down() -> None:
    spec = load_spec(EXAMPLE_SPEC)
    placement = place(spec)
    a, b, c = (n.name for n in spec.nodes)
    model = spec.models[0].key
    holders = placement.nodes_for(model)
    statuses = {
        a: clusterview.Fetched(
            _status(
                a,
                observed={"present": [model], "loaded": {"gpu0": [model]}, "error": None},
                rollout={"wave": 1, "state": "waiting for wave 0"},
            )
        ),
        b: clusterview.Fetched(
            _status(b, drift=[{"kind": "pull", "target": model, "reason": "missing"}])
        ),
        c: clusterview.Fetched(error="cannot connect", last_seen=100.0),
    }
    view = clusterview.build(
        viewer=a,
        spec=spec,
        placement=placement,
        commit="b" * 40,
        statuses=statuses,
        lives={},
        now=200.0,
    )
    jsonschema.validate(view, SCHEMA)
    states = {n["name"]: (n["state"], n["reachable"], n["last_seen"]) for n in view["nodes"]}
    assert states == {
        a: ("ok", True, None),
        b: ("drift", True, None),
        c: ("unreachable", False, 100.0),
    }
    assert view["summary"]["unreachable"] == 1 and view["drift"][0]["node"] == b
    row = next(m for m in view["models"] if m["name"] == model)
    for name in (a, b, c):
        assert row["nodes"][name]["placed"] == (name in holders)
    assert row["nodes"][a]["loaded"] is True
    assert row["nodes"][c] == {
        "placed": c in holders,
        "present": None,
        "loaded": None,
        "serving": None,
    }
    assert view["nodes"][0]["rollout"] == {"wave": 1, "state": "waiting for wave 0"}


def test_transfers_report_bytes_and_rate_and_forget_a_finished_pull() -> None:
    t = Transfers()
    t.update("m:latest", Progress("pulling manifest"))
    t.update("m:latest", Progress("pulling a", "a", 100, 10))
    t.update("m:latest", Progress("pulling b", "b", 50, 50))
    [snap] = t.snapshot()
    assert (snap["completed"], snap["total"], snap["status"]) == (60, 150, "pulling b")
    assert snap["rate_bps"] >= 0
    t.update("m:latest", Progress("success"))
    assert t.snapshot() == []


@dataclass
class Gateway:
    """Node n1's real HAProxy with its rendered config, and the spec it was rendered from."""

    spec: Any
    layout: Layout
    addrs: list[str]
    proc: subprocess.Popen[bytes]


@contextlib.contextmanager
def gateway(root: Path, tmp: Path, tls: NodeTLS | None = None) -> Iterator[Gateway]:
    a, b = random.randint(100, 250), random.randint(1, 250)
    nodes = [
        {"name": f"n{k}", "addr": f"127.{a}.{b}.{k + 1}", "ports": [free_port()]} for k in (1, 2)
    ]
    (tmp / "cluster.yaml").write_text(cluster_yaml(nodes, DEFAULT_MODELS))
    spec = load_spec(tmp)
    layout = node_secrets(Layout(root), spec)
    write_tree(render_node(spec, "n1", layout=layout, tls=tls), root)
    layout.real(GATEWAY_RUN_DIR).mkdir(parents=True)  # the unit's RuntimeDirectory
    log_path = tmp / "haproxy.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [need("haproxy"), "-db", "-f", str(root / "etc/olladist/haproxy.cfg")],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        addr = str(nodes[0]["addr"])
        while True:  # until HAProxy listens
            with socket.socket() as sock:
                if sock.connect_ex((addr, 8404)) == 0:
                    break
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.05)
        yield Gateway(spec, layout, [str(n["addr"]) for n in nodes], proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.integration
def test_gateway_answers_503_in_ollamas_shape_until_the_reconciler_serves(
    short_root: Path, tmp_path: Path
) -> None:
    """A real HAProxy with the rendered config: the stats listener routes /olladist/ to the
    status socket, and says in JSON why there is nothing when no reconciler listens."""
    with gateway(short_root, tmp_path) as gw, httpx.Client(timeout=5, trust_env=False) as client:
        stats = f"http://{gw.addrs[0]}:8404"
        url = f"{stats}/olladist/v1/status"
        r = client.get(url)
        assert r.status_code == 503
        assert r.json()["error"].startswith("the olladist reconciler of this node is not")
        server = StatusServer(FakeDaemon("n1", gw.layout)).start()
        try:
            r = client.get(url)
            assert r.status_code == 200 and r.json()["node"] == "n1"
            assert client.get(f"{stats}/olladist/").status_code == 200
            assert client.post(url).status_code == 405
        finally:
            server.close()
        # HAProxy's own stats page and metrics are where they were.
        assert "Statistics Report" in client.get(f"{stats}/").text
        assert client.get(f"{stats}/metrics").status_code == 200


@pytest.mark.integration
def test_a_peer_reads_the_status_over_mutual_tls_and_a_stranger_cannot(
    short_root: Path, tmp_path: Path
) -> None:
    ca_key, ca = make_ca(tmp_path)
    n1 = make_node_cert(tmp_path, "n1", ca_key, ca)
    n2 = make_node_cert(tmp_path, "n2", ca_key, ca)
    other = tmp_path / "other"
    other.mkdir()
    o_key, o_ca = make_ca(other)
    stranger = make_node_cert(other, "n2", o_key, o_ca)
    tls = NodeTLS(peer_cert=str(n1), peer_ca=str(ca))
    with gateway(short_root, tmp_path, tls) as gw:
        server = StatusServer(FakeDaemon("n1", gw.layout)).start()
        try:
            me = Layout(tmp_path / "n2-root")
            peers = Peers.of(gw.spec, "n2", me, NodeTLS(peer_cert=str(n2), peer_ca=str(ca)))
            got = peers.fetch("/olladist/v1/status", only=["n1"])["n1"]
            assert got.ok, got.error
            assert got.url.startswith("https://") and got.data["node"] == "n1"
            # The peer port serves nothing else of olladist's, even to a peer.
            assert "HTTP 404" in (
                peers.fetch("/olladist/v1/cluster", only=["n1"])["n1"].error or ""
            )
            bad = Peers.of(gw.spec, "n2", me, NodeTLS(peer_cert=str(stranger), peer_ca=str(o_ca)))
            refused = bad.fetch("/olladist/v1/status", only=["n1"])["n1"]
            assert not refused.ok and refused.last_seen is None
        finally:
            server.close()


def test_the_gateways_live_view_wins_over_the_reconcilers_look_when_it_answers() -> None:
    """The live view (docs/gateway.md) lists store entries and {instance, entry} loaded; a
    node whose gateway answers in that shape is drawn from it, the others from ``observed``."""
    spec = load_spec(EXAMPLE_SPEC)
    a, b, c = (n.name for n in spec.nodes)
    model = spec.models[0].key
    live = {
        "version": 1,
        "node": a,
        "instances": [{"name": "gpu0", "health": "UP", "ready": True, "in_flight": 3}],
        "models": [{"name": model, "entry": {"name": model, "model": model}}],
        "loaded": [{"instance": "gpu0", "entry": {"name": model, "model": model}}],
    }
    view = clusterview.build(
        viewer=a,
        spec=spec,
        placement=place(spec),
        commit="b" * 40,
        statuses={n: clusterview.Fetched(_status(n)) for n in (a, b, c)},
        lives={a: clusterview.Fetched(live), b: clusterview.Fetched(error="HTTP 404")},
        now=1.0,
    )
    jsonschema.validate(view, SCHEMA)
    row = next(m for m in view["models"] if m["name"] == model)
    assert (row["nodes"][a]["present"], row["nodes"][a]["loaded"]) == (True, True)
    assert (row["nodes"][b]["present"], row["nodes"][b]["loaded"]) == (False, False)
    nodes = {n["name"]: n for n in view["nodes"]}
    assert nodes[a]["live"] == live and nodes[b]["live_error"] == "HTTP 404"


# -- the model store, to peers (olladist.transfer; docs/models.md) ------------------------------


def _raw(d: FakeDaemon, request: str) -> tuple[int, dict[str, str], bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(d.layout.real(STATUS_SOCKET)))
        s.sendall(request.encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_store_serves_verified_blobs_ranged_and_manifests_and_nothing_else(
    daemon: FakeDaemon,
) -> None:
    import hashlib

    from olladist.names import parse_model_name
    from olladist.registry import Store

    spec = load_spec(EXAMPLE_SPEC)
    daemon.desired = Desired("c0", spec, "gpu-a", place(spec), {})
    store = Store(daemon.layout.real(spec.ollama.models_dir))
    (store.root / "blobs").mkdir(parents=True)
    good = bytes(range(256)) * 1000
    good_hex = hashlib.sha256(good).hexdigest()
    store.blob_path(f"sha256:{good_hex}").write_bytes(good)
    liar_hex = hashlib.sha256(b"what the name says").hexdigest()
    store.blob_path(f"sha256:{liar_hex}").write_bytes(b"something else")
    name = parse_model_name("tiny")
    store.manifest_path(name).parent.mkdir(parents=True)
    store.manifest_path(name).write_bytes(b'{"layers": []}')

    code, body = _get(daemon, f"/olladist/v1/blobs/sha256:{good_hex}")
    assert (code, body) == (200, good)
    code, headers, body = _raw(
        daemon,
        f"GET /olladist/v1/blobs/sha256:{good_hex} HTTP/1.0\r\nRange: bytes=1000-\r\n\r\n",
    )
    assert code == 206 and body == good[1000:]
    assert headers["Content-Range"] == f"bytes 1000-{len(good) - 1}/{len(good)}"
    code, headers, body = _raw(
        daemon, f"HEAD /olladist/v1/blobs/sha256:{good_hex} HTTP/1.0\r\n\r\n"
    )
    assert (code, headers["Content-Length"], body) == (200, str(len(good)), b"")
    # A blob whose content is not its name is not served, nor one that is not there.
    assert _get(daemon, f"/olladist/v1/blobs/sha256:{liar_hex}")[0] == 404
    assert _get(daemon, "/olladist/v1/blobs/sha256:" + "0" * 64)[0] == 404
    assert _get(daemon, "/olladist/v1/blobs/sha256:nothex")[0] == 400
    code, body = _get(daemon, "/olladist/v1/manifests/registry.ollama.ai/library/tiny/latest")
    assert (code, body) == (200, {"layers": []})
    for bad in ("registry.ollama.ai/library/../../../etc/passwd", "x/y", "a/b/c/d/e"):
        assert _get(daemon, f"/olladist/v1/manifests/{bad}")[0] == 404, bad
    code, _, _ = _raw(daemon, f"PUT /olladist/v1/blobs/sha256:{good_hex} HTTP/1.0\r\n\r\n")
    assert code == 405
