"""Gateway render: golden files, `haproxy -c` on every golden case, and the topology rules.

Regenerate the golden files on purpose with OLLADIST_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from olladist.errors import RenderError
from olladist.files import write_atomic
from olladist.gateway.render import gateway_files, node_local_files
from olladist.gateway.topology import PeerAuth, build
from olladist.layout import PEER_SECRET_FILE, ROOT, Layout
from olladist.nodeconfig import write_peer_secret
from olladist.nodelocal import NodeTLS, node_tls_from_env
from olladist.placement import place
from olladist.spec import Spec, Strategy
from olladist.specload import load_spec
from tests.conftest import EXAMPLE_SPEC, SPECS, assert_golden
from tests.gateway.certs import make_ca, make_node_cert

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "gateway"
TLS_PATHS = NodeTLS(
    peer_cert="/etc/olladist/tls/node.pem",
    peer_ca="/etc/olladist/tls/ca.pem",
    public_cert="/etc/olladist/tls/public.pem",
)
SPEC_DIRS = {"example": EXAMPLE_SPEC, "large": SPECS / "large", "tls": EXAMPLE_SPEC}


def cases() -> list[tuple[str, str]]:
    out = []
    for case, spec_dir in SPEC_DIRS.items():
        out += [(case, n.name) for n in load_spec(spec_dir).nodes]
    return out


def render_case(case: str, node: str, layout: Layout = ROOT, tls: NodeTLS | None = None):  # type: ignore[no-untyped-def]
    spec = load_spec(SPEC_DIRS[case])
    if case == "tls" and tls is None:
        tls = TLS_PATHS
    return spec, gateway_files(spec, node, place(spec), layout, tls)


# The example and large specs' gateway files have their goldens with the whole node's
# (tests/test_render.py); here only what that test does not render: the TLS variant.
@pytest.mark.parametrize(("case", "node"), [c for c in cases() if c[0] == "tls"])
def test_golden(case: str, node: str) -> None:
    _, files = render_case(case, node)
    assert_golden(GOLDEN / case / node, files)


@pytest.fixture(scope="module")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> NodeTLS:
    d = tmp_path_factory.mktemp("tls")
    ca_key, ca = make_ca(d)
    node = make_node_cert(d, "node", ca_key, ca)
    return NodeTLS(peer_cert=str(node), peer_ca=str(ca), public_cert=str(node))


@pytest.mark.parametrize(("case", "node"), cases())
def test_every_golden_case_passes_haproxy_check(
    case: str, node: str, gw_tmp: Path, tls_material: NodeTLS
) -> None:
    layout = Layout(gw_tmp)
    spec, files = render_case(case, node, layout, tls_material if case == "tls" else None)
    for path, f in files.items():
        write_atomic(layout.real(path), f.content.encode(), f.mode)
    for path in node_local_files(spec, node, place(spec)):
        if path == PEER_SECRET_FILE:
            write_peer_secret(layout)
        else:
            write_atomic(layout.real(path), b"# no keys\n", 0o600)
    cfg = gw_tmp / "etc/olladist/haproxy.cfg"
    proc = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Warnings we accept: the server state file exists only after the first reload.
    warnings = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if "WARNING" in line and "server state file" not in line
    ]
    assert warnings == []


def test_haproxy_refuses_to_start_without_the_peer_secret(gw_tmp: Path) -> None:
    layout = Layout(gw_tmp)
    spec, files = render_case("example", "gpu-a", layout)
    for path, f in files.items():
        write_atomic(layout.real(path), f.content.encode(), f.mode)
    assert node_local_files(spec, "gpu-a", place(spec)) == (PEER_SECRET_FILE,)
    proc = subprocess.run(
        ["haproxy", "-c", "-f", str(gw_tmp / "etc/olladist/haproxy.cfg")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "peer.map" in proc.stdout + proc.stderr


def test_no_secret_is_ever_rendered(gw_tmp: Path) -> None:
    layout = Layout(gw_tmp)
    secret = write_peer_secret(layout).read_text().split()[1]
    _, files = render_case("example", "gpu-a", layout)
    assert all(secret not in f.content for f in files.values())
    assert PEER_SECRET_FILE not in files


def spec_of(
    models: list[dict[str, object]],
    nodes: list[dict[str, object]],
    strategy: str = "least-loaded",
) -> Spec:
    # The default strategy is loaded-first; these tests were written for least-loaded.
    gateway = {"strategy": strategy}
    return Spec.model_validate(
        {"cluster": "t", "gateway": gateway, "nodes": nodes, "models": models}
    )


def node(name: str, host: str, *par: int, listen: str | None = None) -> dict[str, object]:
    base = 20000 + 100 * int(host.rsplit(".", 1)[1])
    return {
        "name": name,
        "address": host,
        "listen": listen or host,
        "instances": [
            {"name": f"g{i}", "port": base + i, "num_parallel": p} for i, p in enumerate(par)
        ],
    }


NODES = [node("a", "10.0.0.1", 4, 2), node("b", "10.0.0.2", 3), node("c", "10.0.0.3", 1)]


def topo(spec: Spec, name: str = "a"):  # type: ignore[no-untyped-def]
    return build(spec, name, place(spec), ROOT)


def test_models_with_the_same_holders_and_strategy_share_a_backend() -> None:
    spec = spec_of(
        [
            {"name": "m1", "nodes": ["a", "b"]},
            {"name": "m2", "nodes": ["b", "a"]},
            {"name": "m3", "nodes": ["a", "b"], "strategy": "round-robin"},
            {"name": "m4", "nodes": ["c"]},
        ],
        NODES,
    )
    t = topo(spec)
    routes = {r.model: r.backend for r in t.routes}
    assert routes["m1:latest"] == routes["m2:latest"] == "route.least-loaded.a.b"
    assert routes["m3:latest"] == "route.round-robin.a.b"
    assert routes["m4:latest"] == "route.least-loaded.c"
    assert {r.model for r in t.local_routes} == {"m1:latest", "m2:latest", "m3:latest"}
    ll = next(b for b in t.routes_backends if b.name == "route.least-loaded.a.b")
    # least-loaded: an instance takes num_parallel at once, a peer the sum of its instances'.
    assert [(s.name, s.maxconn, s.track) for s in ll.servers] == [
        ("g0", 4, "instances/g0"),
        ("g1", 2, "instances/g1"),
        ("peer.b", 3, "peers/peer.b"),
    ]
    rr = next(b for b in t.routes_backends if b.name == "route.round-robin.a.b")
    assert all(s.maxconn is None for s in rr.servers)
    # The checked backends never queue: /api/version and /api/ps go there.
    assert all(s.maxconn is None for s in t.instances.servers)


def test_local_first_makes_peers_backups_only_when_this_node_holds_the_model() -> None:
    spec = spec_of(
        [
            {"name": "x", "nodes": ["a", "b"], "strategy": "local-first"},
            {"name": "y", "nodes": ["b", "c"], "strategy": "local-first"},
        ],
        NODES,
    )
    t = topo(spec)
    by = {b.name: b for b in t.routes_backends}
    x = by["route.local-first.a.b"]
    assert [(s.name, s.backup) for s in x.servers] == [
        ("g0", False),
        ("g1", False),
        ("peer.b", True),
    ]
    assert x.has_backups
    y = by["route.local-first.b.c"]
    assert not any(s.backup for s in y.servers)


def test_model_affinity_hashes_the_model() -> None:
    spec = spec_of([{"name": "x", "nodes": ["a"], "strategy": "model-affinity"}], NODES)
    (b,) = topo(spec).routes_backends
    assert b.strategy == Strategy.MODEL_AFFINITY
    assert b.balance == "hash var(txn.model)"


def test_peers_allowlist_and_source() -> None:
    nodes = [node("a", "10.0.0.1", 1, listen="0.0.0.0"), node("b", "10.0.0.2", 1)]
    spec = spec_of([{"name": "x", "nodes": ["a", "b"]}], nodes)
    ta, tb = topo(spec, "a"), topo(spec, "b")
    assert ta.allowlist == ("10.0.0.2",)
    assert tb.allowlist == ("10.0.0.1",)
    assert ta.peer_source is None  # listens on every address: let the kernel pick
    assert tb.peer_source == "10.0.0.2"
    assert ta.has_peer_frontend and ta.needs_peer_secret


def test_single_node_has_no_peer_port_and_needs_no_secret() -> None:
    spec = spec_of([{"name": "x", "nodes": ["a"]}], [NODES[0]])
    t = topo(spec)
    assert not t.has_peer_frontend
    assert not t.needs_peer_secret
    assert node_local_files(spec, "a", place(spec)) == ()


def test_gateway_only_node_routes_everything_to_peers() -> None:
    nodes = [*NODES[:2], {"name": "edge", "address": "10.0.0.9", "listen": "10.0.0.9"}]
    spec = spec_of([{"name": "x", "nodes": ["a", "b"]}], nodes)
    t = topo(spec, "edge")
    assert t.default_backend == "peers"
    assert not t.has_peer_frontend
    cfg = gateway_files(spec, "edge", place(spec))["/etc/olladist/haproxy.cfg"].content
    # Without instances of its own, the live view comes from the peers alone.
    assert "use-service lua.olladist_ps if { path /api/ps }" in cfg
    assert "frontend peer" not in cfg
    lua = gateway_files(spec, "edge", place(spec))["/etc/olladist/gateway/live-config.lua"].content
    assert '["instances"] = {}' in lua and '["node"] = "a"' in lua


def test_mutual_tls_replaces_the_secret() -> None:
    spec = spec_of([{"name": "x", "nodes": ["a", "b"]}], NODES)
    t = build(spec, "a", place(spec), ROOT, TLS_PATHS)
    assert t.peer_auth == PeerAuth.TLS and not t.needs_peer_secret
    cfg = gateway_files(spec, "a", place(spec), ROOT, TLS_PATHS)["/etc/olladist/haproxy.cfg"]
    assert 'X-Olladist-Peer "%[' not in cfg.content
    assert "verify required" in cfg.content


def test_node_tls_from_env() -> None:
    assert node_tls_from_env({}) == NodeTLS()
    env = {"OLLADIST_PEER_CERT": "/a.pem", "OLLADIST_PEER_CA": "/ca.pem"}
    assert node_tls_from_env(env).peer_cert == "/a.pem"
    with pytest.raises(RenderError, match="both"):
        node_tls_from_env({"OLLADIST_PEER_CERT": "/a.pem"})


def test_unsafe_root_paths_are_refused() -> None:
    spec = spec_of([{"name": "x", "nodes": ["a"]}], [NODES[0]])
    with pytest.raises(RenderError, match="cannot carry safely"):
        build(spec, "a", place(spec), Layout(Path("/tmp/a b,c")))
    with pytest.raises(RenderError):
        build(spec, "a", place(spec), ROOT, NodeTLS(public_cert="/etc/x(1).pem"))


def test_long_backend_names_are_hashed() -> None:
    names = [f"node-{'x' * 40}-{i}" for i in range(3)]
    nodes = [node(n, f"10.0.1.{i + 1}", 1) for i, n in enumerate(names)]
    spec = spec_of([{"name": "x", "nodes": names}], nodes)
    (b,) = topo(spec, names[0]).routes_backends
    digest = hashlib.sha256("\0".join(sorted(names)).encode()).hexdigest()[:12]
    assert b.name == f"route.least-loaded.3-nodes.{digest}"


def test_unplaced_models_are_absent_from_the_cluster_view() -> None:
    spec = spec_of([{"name": "x", "nodes": ["a"]}, {"name": "y:1b", "nodes": ["b"]}], NODES)
    files = gateway_files(spec, "c", place(spec))
    lua = files["/etc/olladist/gateway/live-config.lua"].content
    # Only placed models are in the live view's table (it lists those a holder has).
    assert '["x:latest"] = {' in lua and '["y:1b"] = {' in lua
    assert "x:latest route.least-loaded.a\n" in files["/etc/olladist/gateway/models.map"].content
    assert files["/etc/olladist/gateway/local.map"].content.count("\n") == 1  # header only


def test_a_socket_path_haproxy_would_refuse_is_a_render_error() -> None:
    spec = spec_of([{"name": "x", "nodes": ["a"]}], [NODES[0]])
    with pytest.raises(RenderError, match="allows 97"):
        build(spec, "a", place(spec), Layout(Path("/tmp/" + "d" * 80)))


def test_ipv6_addresses_pass_haproxy_check(gw_tmp: Path) -> None:
    inst = [{"name": "g", "port": 1}]
    nodes = [
        {"name": "a", "address": "fd00::1", "listen": "::", "instances": inst},
        {"name": "b", "address": "fd00::2", "listen": "fd00::2", "instances": inst},
    ]
    spec = spec_of([{"name": "m", "nodes": ["a", "b"]}], nodes)
    for name in ("a", "b"):
        layout = Layout(gw_tmp / name)
        for path, f in gateway_files(spec, name, place(spec), layout).items():
            write_atomic(layout.real(path), f.content.encode(), f.mode)
        write_peer_secret(layout)
        cfg = layout.real("/etc/olladist/haproxy.cfg")
        proc = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    text = cfg.read_text()
    assert "bind [fd00::2]:" in text
    assert "server peer.a [fd00::1]:11400 check source [fd00::2]" in text


def test_model_affinity_is_the_same_list_on_every_gateway() -> None:
    """Every gateway hashes a model over the same servers (one peer frontend per holder, its
    own included), so the model lands on the same node whichever gateway it entered."""
    nodes = [node(n, f"10.0.0.{k + 1}", 2) for k, n in enumerate("abc")]
    spec = spec_of([{"name": "x", "nodes": ["a", "b", "c"], "strategy": "model-affinity"}], nodes)
    lists = set()
    for n in "abc":
        t = topo(spec, n)
        (b,) = t.routes_backends
        lists.add(tuple((s.name, s.addr) for s in b.servers))
        assert f"peer.{n}" in {s.name for s in t.peers.servers}  # its own frontend is checked
        assert f"10.0.0.{'abc'.index(n) + 1}" in t.allowlist  # and lets it in
    assert lists == {
        (("peer.a", "10.0.0.1:11400"), ("peer.b", "10.0.0.2:11400"), ("peer.c", "10.0.0.3:11400"))
    }


def test_gateway_threads_render_and_pass_haproxy_check(gw_tmp: Path) -> None:
    base = spec_of([{"name": "m", "nodes": ["a"]}], [NODES[0]]).model_dump(mode="json")
    assert base["gateway"]["limits"]["threads"] == 1  # the default (docs/gateway.md)
    base["gateway"]["limits"]["threads"] = 4
    spec = Spec.model_validate(base)
    layout = Layout(gw_tmp / "a")
    for path, f in gateway_files(spec, "a", place(spec), layout).items():
        write_atomic(layout.real(path), f.content.encode(), f.mode)
    cfg = layout.real("/etc/olladist/haproxy.cfg")
    assert "\n    nbthread 4\n" in cfg.read_text()
    proc = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    base["gateway"]["limits"]["threads"] = 0
    with pytest.raises(ValueError, match="threads"):
        Spec.model_validate(base)
