"""PeerTransfer against the real test registry and real HTTP peers serving real stores.

The peers here are small HTTP servers over an ``olladist.registry.Store`` (what statusd serves
behind HAProxy, without the gateway): one can be made to lie (flip a byte), to cut its body
mid-way (a peer dying mid-transfer), or to hold nothing until told. The e2e test
(tests/e2e/test_transfer.py) runs the whole path through HAProxy's peer frontend.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from olladist.names import parse_model_name
from olladist.peers import PEER_HEADER, Credentials, Peer, Peers
from olladist.registry import Blob, Store
from olladist.sim.process import SimProcess, start_registry
from olladist.statusd import send_blob
from olladist.transfer import BLOB_PATH, PeerTransfer, seeder

pytestmark = pytest.mark.integration

SECRET = "s" * 40
MODEL = "tiny:latest"


class StoreServer:
    """A peer's store over HTTP: verified blobs only, unless told to lie or to cut."""

    def __init__(
        self,
        store: Store,
        *,
        corrupt: bool = False,
        cut_after: int | None = None,
        after: StoreServer | BlobServer | None = None,
    ) -> None:
        self.store = store
        self.corrupt = corrupt
        self.cut_after = cut_after
        self.after = after  # holds nothing until that one has sent a body
        self.bodies = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                assert self.headers.get(PEER_HEADER) == SECRET
                path = outer.store.verified_path(self.path.removeprefix(BLOB_PATH))
                if path is None or (outer.after is not None and not outer.after.bodies):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                start = 0
                rng = self.headers.get("Range", "")
                if rng.startswith("bytes="):
                    start = int(rng.removeprefix("bytes=").rstrip("-"))
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if self.command == "HEAD":
                    return
                outer.bodies += 1
                body = bytearray(data[start:])
                if outer.corrupt and body:
                    body[len(body) // 2] ^= 0xFF
                if outer.cut_after is not None:
                    body = body[: outer.cut_after]
                    self.wfile.write(bytes(body))
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(bytes(body))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    reg = start_registry(tmp_path_factory.mktemp("reg"), models=["tiny=6MB"])
    try:
        yield reg
    finally:
        reg.stop()


def upstream_bytes(reg: SimProcess) -> int:
    return int(httpx.get(f"{reg.url}/_registry/stats").json()["bytes_sent"])


def model_size(reg: SimProcess) -> int:
    models = httpx.get(f"{reg.url}/_registry/models").json()
    models = models.get("models", models) if isinstance(models, dict) else models
    (tiny,) = [m for m in models if m["name"].startswith("tiny")]
    return int(tiny["transfer_size"])


def transfer(
    node: str, store: Store, reg: SimProcess, peers: list[Peer], holders: list[str]
) -> PeerTransfer:
    return PeerTransfer(
        node,
        store,
        Peers(peers, Credentials(secret=SECRET)),
        holders_of=lambda _key: holders,
        env={"OLLADIST_REGISTRY": reg.url},
        wait_s=60,
    )


def seeded(tmp_path: Path, reg: SimProcess, name: str) -> Store:
    store = Store(tmp_path / name)
    with transfer(name, store, reg, [], [name]) as t:
        t.fetch(MODEL)
    return store


def assert_complete(store: Store) -> None:
    """The manifest is there and every file under blobs/ has its name's digest."""
    manifest = store.manifest(parse_model_name(MODEL))
    assert manifest is not None
    names = {f"sha256-{b.hex}" for b in manifest.blobs}
    files = {p.name: p for p in (store.root / "blobs").iterdir()}
    assert set(files) == names
    for name, path in files.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == name.removeprefix("sha256-")


def test_two_nodes_at_once_fetch_from_upstream_once(tmp_path: Path, registry: SimProcess) -> None:
    httpx.delete(f"{registry.url}/_registry/stats")
    stores = {n: Store(tmp_path / n) for n in ("a", "b")}
    servers = {n: StoreServer(s) for n, s in stores.items()}
    try:
        peers = {n: Peer(n, "127.0.0.1", servers[n].port) for n in stores}
        transfers = {
            n: transfer(n, stores[n], registry, [p for m, p in peers.items() if m != n], ["a", "b"])
            for n in stores
        }
        reports: dict[str, Any] = {}
        threads = [
            threading.Thread(target=lambda n=n: reports.__setitem__(n, transfers[n].fetch(MODEL)))
            for n in stores
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for t in transfers.values():
            t.close()
    finally:
        for s in servers.values():
            s.close()
    assert upstream_bytes(registry) == model_size(registry)
    assert sum(r.upstream_bytes for r in reports.values()) == model_size(registry)
    for store in stores.values():
        assert_complete(store)
    manifest = stores["a"].manifest(parse_model_name(MODEL))
    assert manifest is not None
    # Each blob came from upstream to its seeder and from that peer to the other node.
    for blob in manifest.blobs:
        first = seeder(blob.digest, ["a", "b"])
        assert reports[first].upstream_bytes > 0


def test_a_lying_peer_is_rejected_by_digest_reported_and_another_used(
    tmp_path: Path, registry: SimProcess
) -> None:
    liar = StoreServer(seeded(tmp_path, registry, "liar"), corrupt=True)
    # The liar is the only holder until it has lied once.
    honest = StoreServer(seeded(tmp_path, registry, "honest"), after=liar)
    httpx.delete(f"{registry.url}/_registry/stats")
    store = Store(tmp_path / "me")
    seen_bad: list[str] = []

    def watch() -> None:
        # Throughout the transfer, nothing under blobs/ fails its digest.
        while not done.is_set():
            for p in list((store.root / "blobs").glob("sha256-*")):
                try:
                    data = p.read_bytes()
                except FileNotFoundError:
                    continue
                if hashlib.sha256(data).hexdigest() != p.name.removeprefix("sha256-"):
                    seen_bad.append(p.name)
            done.wait(0.01)

    done = threading.Event()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        peers = [Peer("liar", "127.0.0.1", liar.port), Peer("honest", "127.0.0.1", honest.port)]
        with transfer("me", store, registry, peers, ["liar", "honest", "me"]) as t:
            report = t.fetch(MODEL)
    finally:
        done.set()
        watcher.join()
        liar.close()
        honest.close()
    assert liar.bodies >= 1
    assert set(report.bad_peers) == {"liar"}
    assert "wrong sha256 digest" in report.bad_peers["liar"]
    assert report.peer_bytes.get("honest", 0) > 0
    assert upstream_bytes(registry) == 0
    assert seen_bad == []
    assert_complete(store)


def test_a_peer_dying_mid_blob_is_resumed_from_another(
    tmp_path: Path, registry: SimProcess
) -> None:
    dying = StoreServer(seeded(tmp_path, registry, "dying"), cut_after=1 << 20)
    other = StoreServer(seeded(tmp_path, registry, "other"), after=dying)
    httpx.delete(f"{registry.url}/_registry/stats")
    store = Store(tmp_path / "me")
    try:
        peers = [Peer("dying", "127.0.0.1", dying.port), Peer("other", "127.0.0.1", other.port)]
        with transfer("me", store, registry, peers, ["dying", "other", "me"]) as t:
            report = t.fetch(MODEL)
    finally:
        dying.close()
        other.close()
    assert upstream_bytes(registry) == 0
    assert report.bad_peers == {}
    # The weights blob (over 1 MiB) was cut by the dying peer and finished by the other.
    assert report.peer_bytes["dying"] > 0 and report.peer_bytes["other"] > 0
    assert_complete(store)
    assert not list(store.partial_dir.iterdir())


def test_a_seeder_that_is_down_is_passed_over_and_upstream_used(
    tmp_path: Path, registry: SimProcess
) -> None:
    httpx.delete(f"{registry.url}/_registry/stats")
    store = Store(tmp_path / "me")
    # Port 9 on loopback: nothing listens, every probe fails; after DOWN_AFTER probes the dead
    # node is out of the ranking and this node seeds, whoever ranked first before.
    dead = Peer("dead", "127.0.0.1", 9)
    with transfer("me", store, registry, [dead], ["dead", "me"]) as t:
        report = t.fetch(MODEL)
    assert report.upstream_bytes == model_size(registry) == upstream_bytes(registry)
    assert_complete(store)


def test_upstream_is_the_names_host_or_what_olladist_registry_maps_it_to() -> None:
    import pytest as _pytest

    from olladist.registry import UpstreamUnavailable, upstream_base

    llama = parse_model_name("llama3.2:1b")
    other = parse_model_name("example.com/team/m:v1")
    plain = parse_model_name("http://127.0.0.1:5000/library/tiny")
    assert upstream_base(llama, {}) == "https://registry.ollama.ai"
    assert upstream_base(plain, {}) == "http://127.0.0.1:5000"
    env = {"OLLADIST_REGISTRY": "http://127.0.0.1:5000/, example.com=http://127.0.0.1:5001"}
    assert upstream_base(llama, env) == "http://127.0.0.1:5000"
    assert upstream_base(other, env) == "http://127.0.0.1:5001"
    with _pytest.raises(UpstreamUnavailable):
        upstream_base(llama, {"OLLADIST_REGISTRY": "ollama"})


def test_every_node_picks_the_same_seeder_whatever_the_order_and_blobs_spread() -> None:
    nodes = ["n1", "n2", "n3", "n4"]
    digests = [f"sha256:{hashlib.sha256(str(i).encode()).hexdigest()}" for i in range(40)]
    picks = [seeder(d, nodes) for d in digests]
    assert picks == [seeder(d, list(reversed(nodes))) for d in digests]
    assert set(picks) == set(nodes)  # 40 blobs land on every one of 4 nodes
    # A node dropping out moves only the blobs it seeded.
    for d, first in zip(digests, picks, strict=True):
        if first != "n2":
            assert seeder(d, ["n1", "n3", "n4"]) == first


def test_the_seeder_is_a_holder_of_the_earliest_wave() -> None:
    """A node of a later wave waits at the gate for the earlier ones: if it were the seeder
    they wait for, the rollout would stop on a blob nobody fetches."""
    nodes = ["n1", "n2", "n3", "n4"]
    digests = [f"sha256:{hashlib.sha256(str(i).encode()).hexdigest()}" for i in range(40)]
    waves = [["n3"], ["n1", "n4"], ["n2"]]
    assert {seeder(d, nodes, waves) for d in digests} == {"n3"}
    # Holders of the earliest wave they are in share the blobs by rendezvous rank.
    picks = {seeder(d, ["n1", "n2", "n4"], waves) for d in digests}
    assert picks == {"n1", "n4"}
    # No waves (a directory source, drift correction): rendezvous rank alone.
    assert [seeder(d, nodes, []) for d in digests] == [seeder(d, nodes) for d in digests]


class BlobServer:
    """A peer's store answered by the status server's own code (olladist.statusd.send_blob):
    complete blobs, and a blob this peer fetches from upstream as it arrives."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.bodies = 0  # GETs answered with a body (StoreServer's ``after`` reads it)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                assert self.headers.get(PEER_HEADER) == SECRET
                if self.command == "GET":
                    outer.bodies += 1
                send_blob(self, outer.store, self.path.removeprefix(BLOB_PATH))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def weights_of(store: Store) -> Blob:
    manifest = store.manifest(parse_model_name(MODEL))
    assert manifest is not None
    return manifest.blobs[0]  # the weights: the first layer, and nearly all of the size


def test_the_others_stream_a_blob_from_its_seeder_as_it_arrives(
    tmp_path: Path, registry: SimProcess
) -> None:
    """Two nodes at once, the registry slow (a WAN link): the seeder of the weights serves
    them to the other node while it downloads them, and upstream carries the model once."""
    size = model_size(registry)
    httpx.post(f"{registry.url}/_registry/faults", json={"rate": size // 2}).raise_for_status()
    httpx.delete(f"{registry.url}/_registry/stats")
    stores = {n: Store(tmp_path / n) for n in ("a", "b")}
    servers = {n: BlobServer(s) for n, s in stores.items()}
    reports: dict[str, Any] = {}
    try:
        peers = {n: Peer(n, "127.0.0.1", servers[n].port) for n in stores}
        transfers = {
            n: transfer(n, stores[n], registry, [p for m, p in peers.items() if m != n], ["a", "b"])
            for n in stores
        }
        threads = [
            threading.Thread(target=lambda n=n: reports.__setitem__(n, transfers[n].fetch(MODEL)))
            for n in stores
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for t in transfers.values():
            t.close()
    finally:
        httpx.delete(f"{registry.url}/_registry/faults")
        for s in servers.values():
            s.close()
    assert set(reports) == {"a", "b"}
    assert upstream_bytes(registry) == size
    for store in stores.values():
        assert_complete(store)
        assert not list(store.partial_dir.iterdir())
    weights = weights_of(stores["a"])
    first = seeder(weights.digest, ["a", "b"])
    other = "b" if first == "a" else "a"
    # The other node got the weights from the seeder, and bytes of them went out while the
    # seeder did not hold them whole yet: streamed, not copied after the download.
    assert reports[other].peer_bytes.get(first, 0) >= weights.size
    assert stores[first].streamed > 0


def test_a_seeder_whose_fetch_fails_mid_blob_cuts_its_stream_and_the_receiver_resumes(
    tmp_path: Path, registry: SimProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """The seeder serves half of the weights as they arrive, then its fetch fails (its bytes
    dropped): the receiver's stream is cut short of its length, and the receiver resumes from
    another holder with a Range request. Nothing partial is ever under its blobs/."""
    full = seeded(tmp_path, registry, "full")
    weights = weights_of(full)
    data = full.blob_path(weights.digest).read_bytes()
    half = weights.size // 2
    seeding = Store(tmp_path / "seeder")
    part = seeding.partial(weights)
    part.serve(True)  # as PeerTransfer does while upstream feeds it
    part.write([data[:half]])
    seeder_server = BlobServer(seeding)
    other = StoreServer(full, after=seeder_server)  # holds nothing until the seeder has sent
    store = Store(tmp_path / "me")
    httpx.delete(f"{registry.url}/_registry/stats")

    def fail_when_half_sent() -> None:
        while part.streamed < half and not stop.is_set():
            stop.wait(0.01)
        part.discard()  # the seeder's upstream fetch failed: its bytes are dropped

    stop = threading.Event()
    failer = threading.Thread(target=fail_when_half_sent)
    failer.start()
    try:
        peers = [
            Peer("seeder", "127.0.0.1", seeder_server.port),
            Peer("other", "127.0.0.1", other.port),
        ]
        with (
            caplog.at_level(logging.WARNING),
            transfer("me", store, registry, peers, ["seeder", "other", "me"]) as t,
        ):
            report = t.fetch(MODEL)
    finally:
        stop.set()
        failer.join()
        seeder_server.close()
        other.close()
    assert part.streamed == half  # all the seeder had, and not one byte more
    # What the receiver kept of the cut stream (whole chunks), then the rest from the other,
    # resumed at the byte it stopped at.
    got = report.peer_bytes["seeder"]
    assert 0 < got <= half
    assert report.peer_bytes["other"] >= weights.size - got
    assert report.bad_peers == {}
    assert upstream_bytes(registry) == 0
    assert f"blob {weights.hex[:12]} from seeder stopped at {got} of {weights.size}" in caplog.text
    assert_complete(store)
    assert not list(store.partial_dir.iterdir())


def test_a_dead_reconcilers_partial_files_are_swept_and_a_live_ones_kept(tmp_path: Path) -> None:
    """A reconciler killed mid-transfer leaves its partial file (named after its pid) outside
    blobs/; the next transfer in this store drops it, and keeps those of living processes."""
    store = Store(tmp_path / "s")
    store.partial_dir.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    hexd = "a" * 64
    stale = store.partial_dir / f"sha256-{hexd}-{dead.pid}-1"
    stale.write_bytes(b"half a blob")
    alive = store.partial_dir / f"sha256-{hexd}-1-1"  # pid 1 never dies
    alive.write_bytes(b"another process's")
    part = store.partial(Blob(f"sha256:{hexd}", 10))
    try:
        assert not stale.exists()
        assert alive.exists()
        assert part.path.exists()
    finally:
        part.discard()
