"""Peers first, upstream once, end to end: three reconcilers, their HAProxy peer frontends and
status servers, olladist-sim instances and the test registry (docs/models.md)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator

import httpx
import pytest

from olladist.names import parse_model_name as parse
from olladist.peers import PEER_HEADER, Credentials
from olladist.registry import Store
from olladist.sim.process import SimProcess, start_registry
from olladist.specload import load_spec
from tests.e2e.cluster import Cluster, start_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = "  - {name: qwen2.5:0.5b, replicas: 1}\n"
# What the cluster holds after the seeder-killed test; the tests after it add to it.
HELD = (
    SMALL + "  - {name: tiny, nodes: all}\n  - {name: other, nodes: all}\n"
    "  - {name: lie, nodes: [n1, n2]}\n  - {name: wan, nodes: all}\n"
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    reg = start_registry(
        tmp_path_factory.mktemp("reg"),
        models=["tiny=50MB", "other=20MB", "wan=50MB", "lie=10MB"],
    )
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, registry: SimProcess) -> Iterator[Cluster]:
    mp = pytest.MonkeyPatch()
    # The reconcilers' upstream (node-local, from their environment) is the test registry.
    mp.setenv("OLLADIST_REGISTRY", registry.url)
    try:
        c = start_cluster(tmp_path_factory.mktemp("transfer"), instances=1, models=SMALL)
    finally:
        mp.undo()
    try:
        yield c
    finally:
        c.close()


def registry_bytes(reg: SimProcess) -> int:
    return int(httpx.get(f"{reg.url}/_registry/stats").json()["bytes_sent"])


def transfer_size(reg: SimProcess, name: str) -> int:
    models = httpx.get(f"{reg.url}/_registry/models").json()["models"]
    return int(next(m["transfer_size"] for m in models if m["name"] == name))


def blobs_of(reg: SimProcess, name: str) -> dict[str, int]:
    models = httpx.get(f"{reg.url}/_registry/models").json()["models"]
    blobs = next(m["blobs"] for m in models if m["name"] == name)
    return {b["digest"]: int(b["size"]) for b in blobs}


def store_of(cluster: Cluster, k: int) -> Store:
    return Store(cluster.nodes[k].root / "var/lib/olladist/models")


def blob_digests(store: Store) -> dict[str, str]:
    """Every file under blobs/: name -> sha256 of its content."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((store.root / "blobs").iterdir())
    }


def spec_with(cluster: Cluster, models: str, policy: str = "", env: str = "") -> None:
    cluster.write_spec(models, policy)
    if env:
        path = cluster.repo / "cluster.yaml"
        text = path.read_text()
        path.write_text(text.replace("  env:\n", f"  env:\n{env}", 1))


def generate_everywhere(cluster: Cluster, model: str) -> None:
    with httpx.Client(timeout=30, trust_env=False) as client:
        for k in range(len(cluster.nodes)):
            r = client.post(
                f"{cluster.gateway(k)}/api/generate",
                json={"model": model, "prompt": "hi", "stream": False},
            )
            assert r.status_code == 200, (k, r.text)
            assert r.json()["done"] is True


def test_nodes_all_model_crosses_the_wan_once_and_every_node_holds_it_verified(
    cluster: Cluster, registry: SimProcess
) -> None:
    httpx.delete(f"{registry.url}/_registry/stats")
    spec_with(cluster, SMALL + "  - {name: tiny, nodes: all}\n")
    head = cluster.commit("tiny on every node, peers first (the default)")
    cluster.wait_converged(head, timeout=180)
    assert registry_bytes(registry) == transfer_size(registry, "tiny:latest")
    digests = [blob_digests(store_of(cluster, k)) for k in range(3)]
    tiny = store_of(cluster, 0).manifest(parse("tiny"))
    assert tiny is not None
    for d in digests:
        for blob in tiny.blobs:
            assert d[f"sha256-{blob.hex}"] == blob.hex  # present, and its content is its name
    # Identical blobs of tiny everywhere (qwen2.5, one replica, is on one node only).
    names = {f"sha256-{b.hex}" for b in tiny.blobs}
    only_tiny = [{k: v for k, v in d.items() if k in names} for d in digests]
    assert only_tiny[0] == only_tiny[1] == only_tiny[2]
    assert len(only_tiny[0]) == len(names)
    for k in range(3):
        assert store_of(cluster, k).manifest(parse("tiny")) == tiny
        assert not any(store_of(cluster, k).partial_dir.iterdir())
    generate_everywhere(cluster, "tiny")


def test_peer_port_serves_verified_blobs_only_and_only_to_peers(cluster: Cluster) -> None:
    store = store_of(cluster, 1)
    tiny = store.manifest(parse("tiny"))
    assert tiny is not None
    blob = max(tiny.blobs, key=lambda b: b.size)
    base = f"http://{cluster.nodes[1].addr}:{peer_port(cluster)}/olladist/v1/blobs/"
    creds = Credentials.load(cluster.nodes[0].layout)
    assert creds.secret
    src = cluster.nodes[0].addr
    transport = httpx.HTTPTransport(local_address=src)
    with httpx.Client(transport=transport, timeout=30, trust_env=False) as client:
        assert client.get(base + blob.digest).status_code == 403  # no peer secret
        ok = client.get(base + blob.digest, headers={PEER_HEADER: creds.secret})
        assert ok.status_code == 200
        assert hashlib.sha256(ok.content).hexdigest() == blob.hex
        missing = "sha256:" + "0" * 64
        assert client.get(base + missing, headers={PEER_HEADER: creds.secret}).status_code == 404
        put = client.put(base + blob.digest, headers={PEER_HEADER: creds.secret}, content=b"x")
        assert put.status_code == 405
        # A blob whose bytes changed on disk (bit rot, a hand edit) is not served.
        path = store.blob_path(blob.digest)
        data = bytearray(path.read_bytes())
        data[0] ^= 0xFF
        path.write_bytes(bytes(data))
        try:
            bad = client.get(base + blob.digest, headers={PEER_HEADER: creds.secret})
            assert bad.status_code == 404
        finally:
            data[0] ^= 0xFF
            path.write_bytes(bytes(data))


def test_upstream_mode_pulls_through_ollama_on_every_node(
    cluster: Cluster, registry: SimProcess
) -> None:
    httpx.delete(f"{registry.url}/_registry/stats")
    spec_with(
        cluster,
        SMALL + "  - {name: tiny, nodes: all}\n  - {name: other, nodes: all}\n",
        policy=", models_transfer: upstream",
        env=f"    OLLADIST_SIM_REGISTRY: {registry.url}\n",
    )
    head = cluster.commit("other on every node, each pulling from upstream")
    cluster.wait_converged(head, timeout=180)
    # Three full pulls, less the blobs each node already had from tiny (Ollama skips those).
    new = blobs_of(registry, "other:latest").items() - blobs_of(registry, "tiny:latest").items()
    assert registry_bytes(registry) == 3 * sum(size for _, size in new)
    for k in range(3):
        assert store_of(cluster, k).manifest(parse("other")) is not None
    generate_everywhere(cluster, "other")


def peer_port(cluster: Cluster) -> int:
    return load_spec(cluster.repo).gateway.peer_port


def test_a_peer_serving_bad_bytes_is_rejected_reported_and_another_source_used(
    cluster: Cluster, registry: SimProcess
) -> None:
    both = SMALL + "  - {name: tiny, nodes: all}\n  - {name: other, nodes: all}\n"
    env = f"    OLLADIST_SIM_REGISTRY: {registry.url}\n"
    n1, n2 = cluster.nodes[0], cluster.nodes[1]
    spec_with(cluster, both + "  - {name: lie, nodes: [n1]}\n", env=env)
    head = cluster.commit("lie on n1 only")
    cluster.wait_converged(head, timeout=120)
    store = store_of(cluster, 0)
    lie = store.manifest(parse("lie"))
    assert lie is not None
    weights = max(lie.blobs, key=lambda b: b.size)
    # n1's status server checks a blob once per file version (inode, size, mtime): flip a byte
    # in place after that check and restore the mtime, and n1 serves bad bytes (bit rot).
    url = f"http://{n1.addr}:{peer_port(cluster)}/olladist/v1/blobs/{weights.digest}"
    secret = Credentials.load(n1.layout).secret or ""
    transport = httpx.HTTPTransport(local_address=n2.addr)
    with httpx.Client(transport=transport, timeout=30, trust_env=False) as client:
        assert client.head(url, headers={PEER_HEADER: secret}).status_code == 200
    path = store.blob_path(weights.digest)
    st = path.stat()
    with path.open("r+b") as f:
        f.seek(weights.size // 2)
        byte = f.read(1)
        f.seek(weights.size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    httpx.delete(f"{registry.url}/_registry/stats")
    watch = BlobWatch([store_of(cluster, 1)])
    try:
        spec_with(cluster, both + "  - {name: lie, nodes: [n1, n2]}\n", env=env)
        head = cluster.commit("lie on n1 and n2")
        cluster.wait(
            lambda: store_of(cluster, 1).manifest(parse("lie")) is not None, 120, "lie on n2"
        )
    finally:
        bad = watch.stop()
    assert bad == []

    def reported() -> bool:
        errors = n2.status().get("errors", [])
        return any("model lie:latest (peer n1): peer n1 served" in e["message"] for e in errors)

    cluster.wait(reported, 30, "n2's status reporting the bad peer n1")
    log = (cluster.base / "n2.log").read_text(errors="replace")
    assert f"peer n1 served blob {weights.hex[:12]} that fails its digest" in log
    n2_store = store_of(cluster, 1)
    assert all(n2_store.verified(b) for b in lie.blobs)
    # n1 was passed over: the weights came from upstream once more (n2 seeded them itself).
    assert registry_bytes(registry) >= weights.size
    with path.open("r+b") as f:  # n1 healed, for the tests after this one
        f.seek(weights.size // 2)
        f.write(byte)


class BlobWatch:
    """Hashes every new version of every file under each node's blobs/ while a test runs."""

    def __init__(self, stores: list[Store]) -> None:
        self.stores = stores
        self.bad: list[str] = []
        self.seen: set[tuple[str, int, int, int]] = set()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            for store in self.stores:
                for path in list((store.root / "blobs").glob("*")):
                    try:
                        st = path.stat()
                        key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
                        if key in self.seen:
                            continue
                        digest = hashlib.sha256(path.read_bytes()).hexdigest()
                    except FileNotFoundError:
                        continue
                    self.seen.add(key)
                    if f"sha256-{digest}" != path.name:
                        self.bad.append(str(path))
            self.done.wait(0.05)

    def stop(self) -> list[str]:
        self.done.set()
        self.thread.join(30)
        return self.bad


def test_the_seeder_killed_mid_transfer_and_restarted_every_node_finishes_verified(
    cluster: Cluster, registry: SimProcess
) -> None:
    """The seeder is in the rollout's first wave; the later waves wait at the gate until it is
    healthy, so they do not fetch meanwhile. Killed mid-transfer, its restarted reconciler
    fetches again (at most one more upstream copy), the later waves then fetch from peers, and
    no partial or corrupt blob is ever visible under any node's blobs/."""
    httpx.post(f"{registry.url}/_registry/faults", json={"rate": 20_000_000}).raise_for_status()
    httpx.delete(f"{registry.url}/_registry/stats")
    watch = BlobWatch([store_of(cluster, k) for k in range(3)])
    try:
        spec_with(
            cluster,
            SMALL + "  - {name: tiny, nodes: all}\n  - {name: other, nodes: all}\n"
            "  - {name: lie, nodes: [n1, n2]}\n  - {name: wan, nodes: all}\n",
            env=f"    OLLADIST_SIM_REGISTRY: {registry.url}\n",
        )
        head = cluster.commit("wan on every node, peers first")
        weights = max(blobs_of(registry, "wan:latest").items(), key=lambda kv: kv[1])[0]
        hexd = weights.removeprefix("sha256:")
        partials = {
            n.name: Store(n.root / "var/lib/olladist/models").partial_dir for n in cluster.nodes
        }

        def seeding() -> str | None:
            """The node fetching the blob from upstream: one with a partial copy of it."""
            for name, partial in partials.items():
                if any(p.stat().st_size > 0 for p in partial.glob(f"sha256-{hexd}-*")):
                    return name
            return None

        cluster.wait(lambda: seeding() is not None, 120, f"a node fetching {weights[:19]}")
        first = seeding()
        victim = next(n for n in cluster.nodes if n.name == first)
        assert victim.proc is not None
        victim.proc.kill()  # SIGKILL: no goodbye; its gateway answers 503 for the store now
        victim.proc.wait()
        others = [n for n in cluster.nodes if n is not victim]
        assert not any(cluster.converged(head, [n]) for n in others)  # they wait at the gate
        with pytest.MonkeyPatch.context() as mp:  # as systemd's Restart= would, same env
            mp.setenv("OLLADIST_REGISTRY", registry.url)
            cluster.start_node(victim)
        cluster.wait(lambda: cluster.converged(head), 180, "every node")
    finally:
        bad = watch.stop()
        httpx.delete(f"{registry.url}/_registry/faults")
    assert bad == []
    size = sum(blobs_of(registry, "wan:latest").values())
    for n in cluster.nodes:
        store = Store(n.root / "var/lib/olladist/models")
        manifest = store.manifest(parse("wan"))
        assert manifest is not None and all(store.verified(b) for b in manifest.blobs)
    # The killed seeder's partial fetch, then at most one more full fetch.
    assert size <= registry_bytes(registry) < 2 * size


def test_with_upstream_unreachable_a_node_takes_the_manifest_and_blobs_from_a_peer(
    cluster: Cluster, registry: SimProcess
) -> None:
    """Last in this module: it stops the registry. n3 is given lie, which n1 and n2 hold: the
    manifest comes from a peer (upstream refuses connections), the blobs too, all verified."""
    held = store_of(cluster, 0).manifest(parse("lie"))
    assert held is not None
    assert store_of(cluster, 2).manifest(parse("lie")) is None
    registry.stop()
    spec_with(
        cluster,
        HELD.replace("{name: lie, nodes: [n1, n2]}", "{name: lie, nodes: all}"),
        env=f"    OLLADIST_SIM_REGISTRY: {registry.url}\n",
    )
    head = cluster.commit("lie on every node, upstream down")
    cluster.wait_converged(head, timeout=120)
    n3 = store_of(cluster, 2)
    assert n3.manifest(parse("lie")) == held  # byte for byte: the model's digest is the same
    assert all(n3.verified(b) for b in held.blobs)
    assert not any(n3.partial_dir.iterdir())
    log = (cluster.base / "n3.log").read_text(errors="replace")
    assert "; the manifest from n" in log  # n1's or n2's copy, upstream being unreachable
    generate_everywhere(cluster, "lie")
