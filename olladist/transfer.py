"""Peers first, upstream once: how a node gets a model's blobs (docs/models.md).

For each blob of the model's manifest that the node's store lacks:

1. ask every peer (over the peer port, with this node's peer authentication) whether it holds
   the blob complete and verified (``HEAD /olladist/v1/blobs/sha256:<hex>``, served by
   ``olladist.statusd``);
2. some do: fetch it from them, in an order drawn from (digest, peer) so receivers
   spread over the holders; a source that fails mid-way is resumed from (``Range``) by the next;
3. none does: the seeder is the node, among those given the model and answering, that ranks
   highest for the digest (rendezvous hashing): the same answer on every node, with no
   coordinator. The seeder fetches from upstream and serves the blob to its peers as it
   arrives (``Partial.follow``, answered by ``olladist.statusd.send_blob`` with
   ``X-Olladist-Blob: growing``); the others poll the peers until one holds the blob or is
   seeding it, and stream it from there, for at most ``wait_s``, then go upstream themselves.
   A seeder that stops answering drops out of the ranking and the next one takes over (from
   the byte its own copy reached), so a dead seeder costs at most one more upstream fetch,
   not a stuck cluster.

Every blob is hashed as it arrives and placed into ``blobs/`` only when its sha256 matches
(``olladist.registry.Partial``). A peer whose bytes fail the digest is reported and not asked
again in this transfer; the blob is fetched again from scratch from another source.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import httpx

from olladist.names import ModelName, parse_model_name
from olladist.ollama import Progress
from olladist.peers import PEER_HEADER, Peer, Peers, default_context
from olladist.registry import (
    CHUNK,
    MANIFEST_MEDIA,
    MAX_MANIFEST,
    UPSTREAM_ENV,
    Blob,
    Manifest,
    Partial,
    Store,
    TransferError,
    UpstreamUnavailable,
    blob_url,
    manifest_url,
    upstream_base,
)

log = logging.getLogger("olladist.transfer")

UPSTREAM = "upstream"
BLOB_PATH = "/olladist/v1/blobs/"
MANIFEST_PATH = "/olladist/v1/manifests/"
GROWING_HEADER = "X-Olladist-Blob"  # "growing": a seeder's blob, served as it arrives
PROBE_TIMEOUT = 2.0
POLL_S = 0.5
# How long a node waits for the seeder before fetching upstream itself: long enough for the
# seeder to fetch a large model over the WAN, short enough that a seeder stuck elsewhere
# (its loop busy on another model) does not hold the cluster for ever.
WAIT_S = 1800.0
# A peer is taken for down (out of the seeder ranking) after this many failed probes in a row:
# one lost probe while its gateway reloads must not make two nodes fetch upstream.
DOWN_AFTER = 3
ROUNDS = 8  # rounds over all sources before a blob is given up for this tick
READ_TIMEOUT = 30.0  # a stalled source is dropped after this (Ollama's stall detection)
PROGRESS_EVERY = 0.25


def rank(digest: str, node: str) -> bytes:
    """Rendezvous rank of a node for a blob. The digest alone, not the commit: during a rollout
    in waves (or a slow poll) nodes run different commits and must still agree on the seeder,
    or each would wait for the other. The digest already spreads blobs over the nodes."""
    return hashlib.sha256(f"{digest}\0{node}".encode()).digest()


def seeder(digest: str, candidates: Sequence[str], waves: Sequence[Sequence[str]] = ()) -> str:
    """The node that fetches ``digest`` from upstream when no peer holds it: the candidate in
    the earliest wave of the commit's rollout (``waves``, the same on every node), then the
    highest rendezvous rank. A node of a later wave waits at the gate until the earlier waves
    are healthy, so it must never be the seeder an earlier one waits for."""
    wave = {n: i for i, names in enumerate(waves) for n in names}
    return max(candidates, key=lambda n: (-wave.get(n, len(waves)), rank(digest, n)))


@dataclass
class TransferReport:
    upstream_bytes: int = 0
    peer_bytes: dict[str, int] = field(default_factory=dict)
    bad_peers: dict[str, str] = field(default_factory=dict)  # peer -> what it did


class PeerTransfer:
    """Fetches models into ``store``; one per reconcile tick (it remembers bad peers)."""

    def __init__(
        self,
        node: str,
        store: Store,
        peers: Peers,
        *,
        holders_of: Callable[[str], Sequence[str]],
        waves: Sequence[Sequence[str]] = (),
        on_progress: Callable[[str, Progress], None] | None = None,
        wait_s: float = WAIT_S,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.node = node
        self.store = store
        self.peers = peers
        self.holders_of = holders_of  # model key -> the nodes placement gives it to
        self.waves = waves  # the rollout's waves of the commit being applied, if any
        self.on_progress = on_progress
        self.wait_s = wait_s
        self.env = env
        self.bad: dict[str, str] = {}
        headers = {}
        if peers.credentials.secret:
            headers[PEER_HEADER] = peers.credentials.secret
        timeout = httpx.Timeout(PROBE_TIMEOUT, read=READ_TIMEOUT)
        self._peer_http = httpx.Client(
            transport=httpx.HTTPTransport(
                verify=peers.credentials.ssl_context() or default_context(),
                local_address=peers.source_address,
                retries=0,
            ),
            headers=headers,
            timeout=timeout,
            trust_env=False,
            follow_redirects=False,
        )
        # Upstream: the registry redirects blobs to its storage host, and a proxy from the
        # environment (HTTPS_PROXY) is how some sites reach the internet.
        self._upstream_http = httpx.Client(
            timeout=timeout, follow_redirects=True, verify=default_context()
        )

    def close(self) -> None:
        self._peer_http.close()
        self._upstream_http.close()

    def __enter__(self) -> PeerTransfer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the model ---------------------------------------------------------------------------

    def fetch(self, key: str) -> TransferReport:
        """Every blob of ``key`` verified in the store, then its manifest; raises
        TransferError when that cannot be done in this tick."""
        name = parse_model_name(key)
        # OLLADIST_REGISTRY=ollama: no transfer at all, the node's Ollama pulls (the catalogue
        # simulator's blobs are stand-ins smaller than their manifests say: not transferable).
        self._can_reach_upstream(name)
        report = TransferReport()
        manifest = self.manifest(name)
        candidates = sorted({self.node, *self.holders_of(key)})
        for blob in manifest.blobs:
            if not self.store.verified(blob):
                self._blob(key, name, blob, candidates, report)
        self.store.write_manifest(name, manifest)
        self._progress(key, Progress("success"))
        report.bad_peers.update(self.bad)
        return report

    def manifest(self, name: ModelName) -> Manifest:
        """Upstream's manifest: it says what the model is now. A peer's copy only when
        upstream cannot be reached (a pin, if any, is checked on what lands in the store)."""
        try:
            return self._upstream_manifest(name)
        except UpstreamUnavailable as exc:
            upstream_error = exc.message
        path = MANIFEST_PATH + "/".join(name.path_parts)
        for peer in self.peers.peers:
            try:
                resp = self._peer_http.get(self.peers.url(peer, path))
            except httpx.HTTPError:
                continue
            if resp.status_code == 200:
                log.warning("upstream: %s; the manifest from %s", upstream_error, peer.name)
                return _checked_manifest(resp.content, peer.name)
        raise UpstreamUnavailable(
            f"pull {name.short}: no manifest from upstream ({upstream_error}) nor any peer",
            hint=f"set {UPSTREAM_ENV} on the node if the registry is elsewhere",
        )

    def _upstream_manifest(self, name: ModelName) -> Manifest:
        url = manifest_url(name, upstream_base(name, self.env))
        try:
            resp = self._upstream_http.get(url, headers={"Accept": MANIFEST_MEDIA})
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"upstream {url}: {_describe(exc)}") from exc
        if resp.status_code == 200:
            return _checked_manifest(resp.content, url)
        if resp.status_code == 404:
            raise TransferError(
                f"pull {name.short}: {url} has no such model (HTTP 404)",
                hint="check the model's name and tag in the spec",
            )
        raise UpstreamUnavailable(f"upstream {url}: HTTP {resp.status_code}")

    # -- one blob ----------------------------------------------------------------------------

    def _blob(
        self, key: str, name: ModelName, blob: Blob, candidates: list[str], report: TransferReport
    ) -> None:
        deadline = time.monotonic() + self.wait_s
        fails: dict[str, int] = {}
        partial = self.store.partial(blob)
        used: list[str] = []
        try:
            for _ in range(ROUNDS):
                sources = self._sources(name, blob, candidates, fails, deadline)
                for source in sources:
                    before = partial.received
                    try:
                        self._stream(key, name, blob, source, partial)
                    except (httpx.HTTPError, TransferError) as exc:
                        log.warning(
                            "blob %s from %s stopped at %d of %d bytes: %s",
                            blob.hex[:12],
                            source,
                            partial.received,
                            blob.size,
                            exc.message if isinstance(exc, TransferError) else _describe(exc),
                        )
                    got = partial.received - before
                    if got > 0:
                        used.append(source)
                    if source == UPSTREAM:
                        report.upstream_bytes += max(got, 0)
                    else:
                        report.peer_bytes[source] = report.peer_bytes.get(source, 0) + max(got, 0)
                    if partial.complete:
                        break
                if not partial.complete:
                    continue
                if partial.place():
                    log.info(
                        "blob %s verified and placed (from %s)", blob.hex[:12], ", ".join(used)
                    )
                    return
                blamed = sorted({s for s in used if s != UPSTREAM})
                for peer in blamed:
                    self.bad[peer] = f"served blob {blob.digest[:19]} with a wrong sha256 digest"
                    log.error("peer %s served blob %s that fails its digest", peer, blob.hex[:12])
                if not blamed:
                    raise TransferError(
                        f"upstream served blob {blob.digest[:19]} with a wrong sha256 digest"
                    )
                partial = self.store.partial(blob)
                used = []
            raise TransferError(
                f"pull {key}: blob {blob.digest[:19]} not fetched after {ROUNDS} rounds over "
                "the peers and upstream",
                transient=True,
            )
        finally:
            partial.discard()

    def _can_reach_upstream(self, name: ModelName) -> None:
        upstream_base(name, self.env)  # raises UpstreamUnavailable with OLLADIST_REGISTRY=ollama

    def _sources(
        self,
        name: ModelName,
        blob: Blob,
        candidates: list[str],
        fails: dict[str, int],
        deadline: float,
    ) -> list[str]:
        """Peers that hold the blob, else upstream when this node is the seeder (or has waited
        long enough); waits while another node seeds."""
        while True:
            holders, growing, down = self._probe(blob, fails)
            if holders:
                # Complete copies first; a seeder's growing one streams as it arrives.
                return sorted(holders, key=lambda n: (n in growing, rank(blob.digest, n)))
            alive = [c for c in candidates if c not in down and c not in self.bad]
            chosen = seeder(blob.digest, alive or [self.node], self.waves)
            if chosen == self.node:
                self._can_reach_upstream(name)
                return [UPSTREAM]
            if time.monotonic() > deadline:
                log.warning(
                    "seeder %s has not got blob %s in time: upstream", chosen, blob.hex[:12]
                )
                self._can_reach_upstream(name)
                return [UPSTREAM]
            time.sleep(POLL_S)

    def _probe(self, blob: Blob, fails: dict[str, int]) -> tuple[list[str], set[str], set[str]]:
        """The peers that hold the blob, those of them still fetching it from upstream (they
        serve it as it arrives), and those taken for down."""
        holders = []
        growing = set()
        for peer in self.peers.peers:
            if peer.name in self.bad or not peer.reachable:
                fails[peer.name] = DOWN_AFTER
                continue
            try:
                resp = self._peer_http.head(self._blob_url(peer, blob), timeout=PROBE_TIMEOUT)
                code = resp.status_code
            except httpx.HTTPError:
                code = 0
            if code == 200:
                holders.append(peer.name)
                if resp.headers.get(GROWING_HEADER) == "growing":
                    growing.add(peer.name)
            fails[peer.name] = 0 if code in (200, 404) else fails.get(peer.name, 0) + 1
        return holders, growing, {n for n, k in fails.items() if k >= DOWN_AFTER}

    def _blob_url(self, peer: Peer, blob: Blob) -> str:
        return self.peers.url(peer, BLOB_PATH + blob.digest)

    def _stream(self, key: str, name: ModelName, blob: Blob, source: str, part: Partial) -> None:
        if source == UPSTREAM:
            client = self._upstream_http
            url = blob_url(name, upstream_base(name, self.env), blob)
        else:
            client = self._peer_http
            peer = next(p for p in self.peers.peers if p.name == source)
            url = self._blob_url(peer, blob)
        # What comes from upstream is offered to the peers as it arrives (this node is the
        # blob's seeder); what comes from a peer is not (see Partial.serve).
        part.serve(source == UPSTREAM)
        headers = {"Range": f"bytes={part.received}-"} if part.received else {}
        with client.stream("GET", url, headers=headers) as resp:
            if resp.status_code == 200 and part.received:
                part.restart()  # the source ignored the range: from the start
            elif resp.status_code not in (200, 206):
                raise TransferError(f"{source}: HTTP {resp.status_code}")
            part.write(self._counted(key, blob, part, resp.iter_bytes(CHUNK)))

    def _counted(
        self, key: str, blob: Blob, part: Partial, chunks: Iterator[bytes]
    ) -> Iterator[bytes]:
        last = 0.0
        for chunk in chunks:
            yield chunk
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY:
                last = now
                status = f"pulling {blob.hex[:12]}"
                self._progress(key, Progress(status, blob.digest, blob.size, part.received))

    def _progress(self, key: str, p: Progress) -> None:
        if self.on_progress:
            self.on_progress(key, p)


def _checked_manifest(raw: bytes, where: str) -> Manifest:
    if len(raw) > MAX_MANIFEST:
        raise TransferError(f"the manifest from {where} is over {MAX_MANIFEST} bytes")
    manifest = Manifest(raw)
    manifest.blobs  # noqa: B018  (raises TransferError when it is not a manifest)
    return manifest


def _describe(exc: httpx.HTTPError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
