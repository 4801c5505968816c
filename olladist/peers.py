"""The peer client: ask every other node's gateway for ``/olladist/v1/*`` over the peer port.

Peers authenticate to each other exactly as gateway traffic does (docs/gateway.md): either the
shared secret of the node-local ``peer.map`` in the ``X-Olladist-Peer`` header, or mutual TLS
with ``OLLADIST_PEER_CERT``/``OLLADIST_PEER_CA``. Connections leave from this node's ``listen``
address when it has one, because the peer port only accepts the cluster's node addresses.

Every peer is asked at once and each answer is bounded by ``timeout`` (the whole exchange, not
one read), so one slow or dead peer delays nothing past that bound. The result for each peer is
its decoded JSON or an error, with the time it last answered (kept by this ``Peers`` object,
for as long as it lives).

    peers = Peers.of(spec, "gpu-a", layout, tls)
    for name, r in peers.fetch("/olladist/v1/status").items():
        print(name, r.data if r.ok else f"{r.error} (last seen {r.last_seen})")
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from olladist.errors import OlladistError
from olladist.gateway.topology import hostport
from olladist.layout import PEER_SECRET_FILE, Layout
from olladist.nodelocal import NodeTLS
from olladist.spec import Spec

PEER_HEADER = "X-Olladist-Peer"
DEFAULT_TIMEOUT = 2.0
# A peer's answer is status JSON; anything much larger is not what we asked for, and is not
# read past this.
MAX_BODY = 8 * 1024 * 1024
NO_PEER_PORT = "no peer port: it has no instances"


class PeerError(OlladistError):
    pass


@dataclass(frozen=True)
class Peer:
    name: str
    address: str  # where its peer frontend listens (the node's `address`)
    port: int
    # A node without instances has no peer frontend: there is nothing to ask.
    reachable: bool = True


@dataclass(frozen=True)
class Credentials:
    """How this node proves it is a peer: the shared secret, or a client certificate."""

    secret: str | None = None
    cert: str | None = None  # PEM holding this node's certificate and key
    ca: str | None = None  # PEM of the CA that signed every node's certificate

    @property
    def tls(self) -> bool:
        return self.cert is not None

    @classmethod
    def load(cls, layout: Layout, tls: NodeTLS | None = None) -> Credentials:
        """The node's credentials: mutual TLS when configured, else the secret file."""
        if tls is not None and tls.peer_cert and tls.peer_ca:
            return cls(cert=tls.peer_cert, ca=tls.peer_ca)
        path = layout.real(PEER_SECRET_FILE)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise PeerError(
                f"cannot read the peer secret {path}: {exc.strerror}",
                hint="it must be readable by the reconciler (root:olladist, mode 0640)",
            ) from exc
        for line in text.splitlines():
            key, _, value = line.strip().partition(" ")
            if key == "secret" and value.strip():
                return cls(secret=value.strip())
        return cls()

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.ca)
        # Peers are told apart by the CA that signed them, not by name (HAProxy does the
        # same: `verify required` without `verifyhost`), and addresses are rarely in certs.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        assert self.cert is not None
        ctx.load_cert_chain(self.cert)
        return ctx

    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in anything shown (see olladist.statusd)."""
        return (self.secret,) if self.secret else ()


@dataclass(frozen=True)
class PeerResult:
    node: str
    url: str
    data: Any = None  # the decoded JSON answer when ok
    error: str | None = None
    status_code: int | None = None
    elapsed_s: float = 0.0
    fetched_at: float = 0.0  # wall clock of this attempt
    last_seen: float | None = None  # wall clock of the last good answer, None: never

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "url": self.url,
            "ok": self.ok,
            "error": self.error,
            "status_code": self.status_code,
            "elapsed_s": round(self.elapsed_s, 3),
            "fetched_at": round(self.fetched_at, 3),
            "last_seen": None if self.last_seen is None else round(self.last_seen, 3),
        }


@functools.cache
def default_context() -> ssl.SSLContext:
    """One SSL context for plain-HTTP clients: httpx builds one per client otherwise, and
    loading the CA bundle costs ~0.1 s each time (more than asking every peer)."""
    return ssl.create_default_context()


def peers_of(spec: Spec, node: str) -> list[Peer]:
    """Every other node of the spec, in spec order."""
    return [
        Peer(n.name, n.address, spec.gateway.peer_port, reachable=bool(n.instances))
        for n in spec.nodes
        if n.name != node
    ]


def _source_address(spec: Spec, node: str) -> str | None:
    try:
        listen = spec.node(node).listen
    except KeyError:
        return None
    return None if ipaddress.ip_address(listen).is_unspecified else listen


class Peers:
    """Fetches paths from a fixed set of peers; remembers when each last answered."""

    def __init__(
        self,
        peers: Sequence[Peer],
        credentials: Credentials,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        source_address: str | None = None,
        clock: Callable[[], float] = time.time,
        last_seen: dict[str, float] | None = None,
    ) -> None:
        self.peers = tuple(peers)
        self.credentials = credentials
        self.timeout = timeout
        self.source_address = source_address
        self.clock = clock
        # Shared with an earlier Peers (the spec changed) so last-seen times survive it.
        self._last_seen = last_seen if last_seen is not None else {}
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None

    def _ssl(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = self.credentials.ssl_context() or default_context()
        return self._context

    @classmethod
    def of(
        cls,
        spec: Spec,
        node: str,
        layout: Layout,
        tls: NodeTLS | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        last_seen: dict[str, float] | None = None,
    ) -> Peers:
        return cls(
            peers_of(spec, node),
            Credentials.load(layout, tls),
            timeout=timeout,
            source_address=_source_address(spec, node),
            last_seen=last_seen,
        )

    def url(self, peer: Peer, path: str) -> str:
        scheme = "https" if self.credentials.tls else "http"
        return f"{scheme}://{hostport(peer.address, peer.port)}{path}"

    def last_seen(self, node: str) -> float | None:
        with self._lock:
            return self._last_seen.get(node)

    def fetch(self, path: str, only: Sequence[str] | None = None) -> dict[str, PeerResult]:
        """``path`` from every peer (or the ones named in ``only``), concurrently; keyed by
        node name, in the peers' order. Never raises for a peer's failure."""
        return asyncio.run(self.afetch(path, only))

    async def afetch(self, path: str, only: Sequence[str] | None = None) -> dict[str, PeerResult]:
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        targets = [p for p in self.peers if only is None or p.name in only]
        headers = {"Accept": "application/json"}
        if self.credentials.secret:
            headers[PEER_HEADER] = self.credentials.secret
        transport = httpx.AsyncHTTPTransport(
            verify=self._ssl(),
            local_address=self.source_address,
            retries=0,
        )
        async with httpx.AsyncClient(
            transport=transport,
            headers=headers,
            timeout=httpx.Timeout(self.timeout),
            trust_env=False,
            follow_redirects=False,
        ) as client:
            results = await asyncio.gather(*(self._one(client, p, path) for p in targets))
        return {r.node: r for r in results}

    async def _one(self, client: httpx.AsyncClient, peer: Peer, path: str) -> PeerResult:
        url = self.url(peer, path)
        started = time.monotonic()
        at = self.clock()
        if not peer.reachable:
            return self._result(peer, url, at, started, error=NO_PEER_PORT)
        try:
            resp = await asyncio.wait_for(_get(client, url), self.timeout)
        except TimeoutError:
            return self._result(peer, url, at, started, error=f"no answer in {self.timeout:g}s")
        except httpx.HTTPError as exc:
            return self._result(peer, url, at, started, error=_describe(exc))
        if resp is None:
            return self._result(peer, url, at, started, error=f"answer over {MAX_BODY} bytes")
        if resp.status_code != 200:
            return self._result(
                peer,
                url,
                at,
                started,
                error=f"HTTP {resp.status_code}: {_error_text(resp)}",
                code=resp.status_code,
            )
        try:
            data = resp.json()
        except ValueError:
            return self._result(peer, url, at, started, error="answer is not JSON", code=200)
        with self._lock:
            self._last_seen[peer.name] = at
        return self._result(peer, url, at, started, data=data, code=200)

    def _result(
        self,
        peer: Peer,
        url: str,
        at: float,
        started: float,
        *,
        data: Any = None,
        error: str | None = None,
        code: int | None = None,
    ) -> PeerResult:
        return PeerResult(
            node=peer.name,
            url=url,
            data=data,
            error=error,
            status_code=code,
            elapsed_s=time.monotonic() - started,
            fetched_at=at,
            last_seen=self.last_seen(peer.name),
        )


async def _get(client: httpx.AsyncClient, url: str) -> httpx.Response | None:
    """The response with its body read, or None when the body is larger than MAX_BODY."""
    async with client.stream("GET", url) as resp:
        body = bytearray()
        async for chunk in resp.aiter_bytes():
            body += chunk
            if len(body) > MAX_BODY:
                return None
    return httpx.Response(resp.status_code, headers=resp.headers, content=bytes(body))


def _describe(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect: {exc}" if str(exc) else "cannot connect"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _error_text(resp: httpx.Response) -> str:
    """Ollama's error shape {"error": "..."} (what the gateway answers), else the first bytes."""
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:200].strip() or resp.reason_phrase
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])[:300]
    return resp.reason_phrase
