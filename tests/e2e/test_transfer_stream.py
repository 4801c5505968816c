"""Streaming from a seeder while it downloads, end to end: a fresh three-node cluster whose
first commit gives a model to every node. A node with nothing applied yet does not wait at the
wave gate, so the three fetch the model at once: the seeder of each blob fetches it from the
test registry (limited to a WAN-like rate) and the others stream it from the seeder's peer
port as it arrives (docs/models.md)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from olladist.names import parse_model_name as parse
from olladist.peers import PEER_HEADER, Credentials
from olladist.registry import Store
from olladist.sim.process import SimProcess, start_registry
from olladist.transfer import GROWING_HEADER
from tests.e2e.cluster import Cluster, start_cluster
from tests.e2e.test_transfer import (
    BlobWatch,
    blobs_of,
    generate_everywhere,
    peer_port,
    registry_bytes,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RATE = 10_000_000  # bytes/s: the 50 MB weights take 5 s to arrive at the seeder


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[SimProcess]:
    reg = start_registry(tmp_path / "reg", models=["stream=50MB"])
    try:
        httpx.post(f"{reg.url}/_registry/faults", json={"rate": RATE}).raise_for_status()
        yield reg
    finally:
        reg.stop()


def growing_at(cluster: Cluster, k: int, digest: str) -> bool:
    """Node k's peer port answers the blob as one it is fetching from upstream (its seeder)."""
    url = f"http://{cluster.nodes[k].addr}:{peer_port(cluster)}/olladist/v1/blobs/{digest}"
    secret = Credentials.load(cluster.nodes[0].layout).secret or ""
    src = cluster.nodes[(k + 1) % len(cluster.nodes)].addr  # the peer port answers peers only
    transport = httpx.HTTPTransport(local_address=src)
    with httpx.Client(transport=transport, timeout=5, trust_env=False) as client:
        try:
            r = client.head(url, headers={PEER_HEADER: secret})
        except httpx.HTTPError:
            return False
    return r.status_code == 200 and r.headers.get(GROWING_HEADER) == "growing"


def test_the_seeder_killed_while_the_others_stream_from_it_they_resume_and_finish_verified(
    tmp_path: Path, registry: SimProcess
) -> None:
    """The others stream the weights from the seeder while it downloads them; the seeder is
    killed mid-blob: the others resume (one becomes the seeder and continues from upstream with
    a Range request, the last streams from it), finish with verified blobs, and no partial or
    corrupt blob is ever under any node's blobs/. Upstream carries the model less than twice."""
    env = f"    OLLADIST_SIM_REGISTRY: {registry.url}\n"

    def with_env(repo: Path) -> None:
        path = repo / "cluster.yaml"
        path.write_text(path.read_text().replace("  env:\n", "  env:\n" + env, 1))

    weights = max(blobs_of(registry, "stream:latest").items(), key=lambda kv: kv[1])[0]
    hexd = weights.removeprefix("sha256:")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OLLADIST_REGISTRY", registry.url)
        cluster = start_cluster(
            tmp_path / "c",
            instances=1,
            interval=1.0,
            models="  - {name: stream, nodes: all}\n",
            before_first_commit=with_env,
            wait=False,
        )
    try:
        stores = [Store(n.root / "var/lib/olladist/models") for n in cluster.nodes]
        watch = BlobWatch(stores)
        try:

            def seeding() -> int | None:
                return next((k for k in range(3) if growing_at(cluster, k, weights)), None)

            cluster.wait(lambda: seeding() is not None, 120, f"a node seeding {weights[:19]}")
            first = seeding()
            assert first is not None
            victim = cluster.nodes[first]
            others = [k for k in range(3) if k != first]

            def receiving() -> bool:
                return any(
                    p.stat().st_size > 0
                    for k in others
                    for p in stores[k].partial_dir.glob(f"sha256-{hexd}-*")
                )

            cluster.wait(receiving, 60, "a node streaming the blob from its seeder")
            # Still arriving at the seeder: what the others have came as it arrived.
            assert growing_at(cluster, first, weights)
            assert victim.proc is not None
            victim.proc.kill()  # SIGKILL, mid-blob: its streams are cut
            victim.proc.wait()
            for k in others:
                cluster.wait(
                    lambda k=k: stores[k].manifest(parse("stream")) is not None,
                    180,
                    f"stream on {cluster.nodes[k].name} without its seeder",
                )
            with pytest.MonkeyPatch.context() as mp:  # as systemd's Restart= would
                mp.setenv("OLLADIST_REGISTRY", registry.url)
                cluster.start_node(victim)
            cluster.wait(lambda: cluster.converged(cluster.head()), 180, "every node")
        finally:
            bad = watch.stop()
        assert bad == []
        # A receiver was streaming from the seeder when it died, and resumed elsewhere.
        logs = [
            (cluster.base / f"{cluster.nodes[k].name}.log").read_text("utf-8", "replace")
            for k in others
        ]
        assert any(f"blob {hexd[:12]} from {victim.name} stopped at" in t for t in logs), logs
        size = sum(blobs_of(registry, "stream:latest").values())
        for store in stores:
            manifest = store.manifest(parse("stream"))
            assert manifest is not None
            for blob in manifest.blobs:
                data = store.blob_path(blob.digest).read_bytes()
                assert hashlib.sha256(data).hexdigest() == blob.hex
            assert not any(store.partial_dir.iterdir())
        # The killed seeder's part, then the rest (resumed with Range, not from byte 0).
        assert size <= registry_bytes(registry) < 2 * size
        generate_everywhere(cluster, "stream")
    finally:
        cluster.close()
