"""The reconciler's read-only status server: the status page, its JSON, this node's status.

It runs in a thread of ``olladist reconcile`` on a unix socket (``STATUS_SOCKET``, in the unit's
RuntimeDirectory) and HAProxy routes to it (templates/haproxy.cfg.j2), so the page keeps being
served while the loop is busy pulling a model or draining an instance:

    stats listener (127.0.0.1:stats_port)    GET /olladist/            the page
                                             GET /olladist/v1/cluster  the cluster view (JSON)
                                             GET /olladist/v1/status   this node's status
    peer port (after peer authentication)    GET /olladist/v1/status
                                             GET /olladist/v1/blobs/sha256:<hex>
                                             GET /olladist/v1/manifests/<host>/<ns>/<m>/<tag>

The blobs and manifests are this node's model store, read-only and content-addressed, for peers
that fetch models from each other (olladist.transfer): a blob is answered when it is complete
and its sha256 is its name (hashed once per file version), or, while this node fetches it from
upstream, as it arrives (``send_blob``); the receiver verifies the whole blob either way.

``/olladist/v1/status`` is the dict of ``olladist status --json`` (the last reconcile, with the
gateway's current health), plus what only the running daemon knows: model transfers in
progress, what the loop is doing, and the models the node's instances hold and have loaded.
Every answer goes through ``scrub`` first: no peer secret, API key digest or URL credentials
leaves this server, whatever an error message happened to quote.
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from importlib import resources
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from olladist import __version__, clusterview
from olladist.layout import STATUS_SOCKET, Layout
from olladist.names import InvalidModelName, parse_model_name
from olladist.ollama import Progress
from olladist.peers import Credentials, PeerError, PeerResult, Peers, default_context
from olladist.registry import Store, StreamAborted, TransferError
from olladist.state import State
from olladist.status import Status, gateway_health
from olladist.transfer import BLOB_PATH, GROWING_HEADER, MANIFEST_PATH

if TYPE_CHECKING:
    from olladist.nodelocal import NodeLocal
    from olladist.reconcile import Desired

log = logging.getLogger("olladist.statusd")

# The page and JSON are cheap, but a browser tab per operator and every peer's page ask too:
# answers younger than this are shared instead of asking every peer again.
CACHE_S = 1.0
OBSERVE_TIMEOUT = 1.5
PEER_TIMEOUT = 2.0
# A blob served as it arrives is cut when no byte came for this long, so the receiver moves on
# before its own read timeout (olladist.transfer.READ_TIMEOUT) and resumes elsewhere.
STREAM_STALL_S = 20.0
GATEWAY_GROUP = "olladist"  # HAProxy's group under systemd: it must reach the socket

PAGE_FILES = {
    "/olladist/": ("index.html", "text/html; charset=utf-8"),
    "/olladist/page.css": ("page.css", "text/css; charset=utf-8"),
    "/olladist/page.js": ("page.js", "text/javascript; charset=utf-8"),
}
# The page loads nothing from elsewhere and runs no inline script.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_URL_CREDENTIALS = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@\"']+@")
REDACTED = "[redacted]"


class DaemonView(Protocol):
    """What the server reads from the running daemon (olladist.daemon.Daemon)."""

    node: str
    layout: Layout
    local: NodeLocal
    transfers: Transfers

    @property
    def desired(self) -> Desired | None: ...

    @property
    def activity(self) -> tuple[str, float] | None: ...


# -- transfers -------------------------------------------------------------------------------


@dataclass
class _Transfer:
    model: str
    started_at: float
    status: str = ""
    updated_at: float = 0.0
    layers: dict[str, tuple[int, int]] = field(default_factory=dict)
    first_completed: int | None = None


class Transfers:
    """Model pulls in progress, fed by the daemon's progress callback (any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now: dict[str, _Transfer] = {}

    def update(self, model: str, p: Progress) -> None:
        now = time.time()
        with self._lock:
            if p.status == "success":
                self._now.pop(model, None)
                return
            t = self._now.setdefault(model, _Transfer(model, now))
            t.status, t.updated_at = p.status, now
            if p.digest and p.total:
                t.layers[p.digest] = (p.completed, p.total)
                if t.first_completed is None:
                    t.first_completed = sum(c for c, _ in t.layers.values())

    def clear(self) -> None:
        with self._lock:
            self._now.clear()

    def snapshot(self) -> list[dict[str, Any]]:
        now = time.time()
        out = []
        with self._lock:
            for t in sorted(self._now.values(), key=lambda t: t.model):
                completed = sum(c for c, _ in t.layers.values())
                total = sum(n for _, n in t.layers.values())
                elapsed = max(now - t.started_at, 1e-3)
                done_here = completed - (t.first_completed or 0)
                out.append(
                    {
                        "model": t.model,
                        "status": t.status,
                        "completed": completed,
                        "total": total,
                        "rate_bps": round(done_here / elapsed),
                        "started_at": round(t.started_at, 3),
                        "updated_at": round(t.updated_at, 3),
                    }
                )
        return out


# -- secrets ---------------------------------------------------------------------------------


def secrets_of(layout: Layout, credentials: Credentials, desired: Desired | None) -> list[str]:
    """What must never be shown: the peer secret and the API key digests of this node."""
    out = list(credentials.secrets())
    keys_file = desired.spec.gateway.api_keys_file if desired else None
    if keys_file:
        with contextlib.suppress(OSError):
            text = layout.real(keys_file).read_text(encoding="utf-8")
            # The digest is a line's first word; the key's settings (weight=...) may follow.
            words = [ln.split()[0] for ln in text.splitlines() if ln.split()]
            out += [w for w in words if len(w) >= 16]
    return out


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every secret and every ``user:password@`` of a URL replaced."""
    for s in sorted(set(secrets), key=len, reverse=True):
        if s:
            text = text.replace(s, REDACTED)
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)


# -- the node's own status -------------------------------------------------------------------


class _Cached:
    """One value recomputed at most every ``ttl`` seconds; callers in between share it."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._at = -1e9
        self._value: Any = None

    def get(self, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                self._value = compute()
                self._at = time.monotonic()
            return self._value


def observe_store(desired: Desired | None) -> dict[str, Any]:
    """The models this node's store holds and each instance has loaded, asked right now."""
    import asyncio  # noqa: PLC0415

    at = round(time.time(), 3)
    if desired is None:
        return {"present": [], "loaded": {}, "error": "no spec loaded yet", "observed_at": at}
    node = desired.spec.node(desired.node)
    ports = {i.name: i.port for i in node.instances}
    present, loaded, error = asyncio.run(_observe(ports))
    return {"present": present, "loaded": loaded, "error": error, "observed_at": at}


async def _observe(ports: dict[str, int]) -> tuple[list[str], dict[str, list[str]], str | None]:
    """(store, loaded per instance, error): /api/tags of the first instance that answers (the
    store is shared by the node's instances) and /api/ps of each, all at once."""
    import asyncio  # noqa: PLC0415

    import httpx  # noqa: PLC0415

    from olladist.names import normalize_model  # noqa: PLC0415
    from olladist.ollama import instance_url  # noqa: PLC0415

    def names(data: Any) -> list[str]:
        models = data.get("models") if isinstance(data, dict) else None
        return sorted({normalize_model(m.get("model") or m["name"]) for m in models or []})

    async def get(client: httpx.AsyncClient, port: int, path: str) -> Any:
        try:
            resp = await asyncio.wait_for(client.get(instance_url(port) + path), OBSERVE_TIMEOUT)
            resp.raise_for_status()
            return resp.json()
        except (httpx.HTTPError, TimeoutError, ValueError) as exc:
            return exc

    if not ports:
        return [], {}, None
    async with httpx.AsyncClient(
        timeout=OBSERVE_TIMEOUT, trust_env=False, verify=default_context()
    ) as client:
        tags = await asyncio.gather(*(get(client, p, "/api/tags") for p in ports.values()))
        ps = await asyncio.gather(*(get(client, p, "/api/ps") for p in ports.values()))
    loaded = {
        inst: names(r) for inst, r in zip(ports, ps, strict=True) if not isinstance(r, Exception)
    }
    for r in tags:
        if not isinstance(r, Exception):
            return names(r), loaded, None
    why = "; ".join(f"instance {i}: {r}" for i, r in zip(ports, tags, strict=True))
    return [], loaded, f"no instance answered /api/tags: {why}"


class StatusService:
    """Builds the answers; separate from the HTTP plumbing so tests and bench call it."""

    def __init__(self, daemon: DaemonView, started_at: float | None = None) -> None:
        self.daemon = daemon
        self.started_at = started_at or time.time()
        self._observed = _Cached(CACHE_S)
        self._cluster = _Cached(CACHE_S)
        self._peers: Peers | None = None
        self._peers_key: tuple[Any, ...] = ()
        self._last_seen: dict[str, float] = {}
        self._peers_lock = threading.Lock()
        self._store: Store | None = None

    def store(self) -> Store | None:
        """This node's model store (``ollama.models_dir``), served to peers."""
        desired = self.daemon.desired
        if desired is None:
            return None
        root = self.daemon.layout.real(desired.spec.ollama.models_dir)
        with self._peers_lock:
            if self._store is None or self._store.root != root:
                self._store = Store.shared(root)
            return self._store

    # this node

    def status(self) -> dict[str, Any]:
        d = self.daemon
        data = State(d.layout).status() or Status(d.node).to_dict()
        health = gateway_health(d.layout)
        if health:
            data["health"] = health  # fresher than the last reconcile's
        activity = d.activity
        data["transfers"] = d.transfers.snapshot()
        data["observed"] = self._observed.get(lambda: observe_store(d.desired))
        data["daemon"] = {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": round(self.started_at, 3),
            "busy": None if activity is None else {"reason": activity[0], "since": activity[1]},
        }
        data["served_at"] = round(time.time(), 3)
        return data

    # the cluster

    def peers(self) -> Peers | None:
        desired = self.daemon.desired
        if desired is None:
            return None
        key = (desired.commit, self.daemon.local.tls)
        with self._peers_lock:
            if self._peers is None or key != self._peers_key:
                self._peers = Peers.of(
                    desired.spec,
                    desired.node,
                    self.daemon.layout,
                    self.daemon.local.tls,
                    timeout=PEER_TIMEOUT,
                    last_seen=self._last_seen,
                )
                self._peers_key = key
            return self._peers

    def secrets(self) -> list[str]:
        try:
            creds = Credentials.load(self.daemon.layout, self.daemon.local.tls)
        except PeerError:
            creds = Credentials()  # a secret this process cannot read, it cannot show either
        return secrets_of(self.daemon.layout, creds, self.daemon.desired)

    def cluster(self) -> dict[str, Any]:
        return dict(self._cluster.get(self._build_cluster))

    def _build_cluster(self) -> dict[str, Any]:
        import asyncio  # noqa: PLC0415

        started = time.monotonic()
        desired = self.daemon.desired
        node = self.daemon.node
        statuses: dict[str, clusterview.Fetched] = {}
        lives: dict[str, clusterview.Fetched] = {}
        try:
            peers = self.peers()
        except PeerError as exc:
            log.error("%s", exc.message)
            peers = None
            if desired is not None:
                for n in desired.spec.nodes:
                    statuses[n.name] = clusterview.Fetched(error=exc.message)
        if peers is None or desired is None:
            statuses[node] = clusterview.Fetched(data=self.status(), last_seen=time.time())
        else:

            async def everything() -> tuple[
                dict[str, Any], dict[str, PeerResult], dict[str, PeerResult], clusterview.Fetched
            ]:
                own, got_status, got_live, own_live = await asyncio.gather(
                    asyncio.to_thread(self.status),
                    peers.afetch("/olladist/v1/status"),
                    peers.afetch("/olladist/v1/live"),
                    _own_live(desired),
                )
                return own, got_status, got_live, own_live

            own, got_status, got_live, own_live = asyncio.run(everything())
            statuses[node] = clusterview.Fetched(data=own, last_seen=time.time())
            for name, r in got_status.items():
                statuses[name] = clusterview.Fetched(r.data, r.error, r.last_seen, r.elapsed_s)
            for name, r in got_live.items():
                lives[name] = clusterview.Fetched(r.data, r.error, r.last_seen, r.elapsed_s)
            lives[node] = own_live
        view = clusterview.build(
            viewer=node,
            spec=desired.spec if desired else None,
            placement=desired.placement if desired else None,
            commit=desired.commit if desired else "",
            statuses=statuses,
            lives=lives,
            now=time.time(),
        )
        view["started_at"] = round(self.started_at, 3)
        view["build_s"] = round(time.monotonic() - started, 3)
        return view


async def _own_live(desired: Desired) -> clusterview.Fetched:
    """This node's live view from its own stats listener (issue 11), when it serves one."""
    import httpx  # noqa: PLC0415

    from olladist.gateway.topology import hostport  # noqa: PLC0415

    node = desired.spec.node(desired.node)
    bind = node.listen if node.loopback else "127.0.0.1"
    url = f"http://{hostport(bind, desired.spec.gateway.stats_port)}/olladist/v1/live"
    started = time.monotonic()
    try:
        async with httpx.AsyncClient(
            timeout=PEER_TIMEOUT, trust_env=False, verify=default_context()
        ) as client:
            resp = await client.get(url)
    except httpx.HTTPError as exc:
        return clusterview.Fetched(error=f"{type(exc).__name__}: {exc}")
    elapsed = time.monotonic() - started
    if resp.status_code != 200:
        return clusterview.Fetched(error=f"HTTP {resp.status_code}", elapsed_s=elapsed)
    try:
        return clusterview.Fetched(resp.json(), None, time.time(), elapsed)
    except ValueError:
        return clusterview.Fetched(error="not JSON", elapsed_s=elapsed)


# -- HTTP ------------------------------------------------------------------------------------


def page_asset(name: str) -> bytes:
    return resources.files("olladist").joinpath("data", "page", name).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = f"olladist/{__version__}"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("status server: " + format, *args)

    def address_string(self) -> str:
        return "unix"

    def _send(
        self, code: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, data: Any) -> None:
        service = self.server.service
        text = json.dumps(data, sort_keys=True, default=str)
        body = scrub(text, service.secrets()).encode()
        self._send(code, body, "application/json")

    def _error(self, code: int, message: str) -> None:
        self._json(code, {"error": message})

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        service = self.server.service
        try:
            if path == "/olladist/v1/status":
                self._json(200, service.status())
            elif path == "/olladist/v1/cluster":
                self._json(200, service.cluster())
            elif path in PAGE_FILES:
                name, ctype = PAGE_FILES[path]
                extra = {"Content-Security-Policy": PAGE_CSP} if name.endswith(".html") else {}
                self._send(200, page_asset(name), ctype, extra)
            elif path == "/olladist":
                self._send(301, b"", "text/plain", {"Location": "/olladist/"})
            elif path.startswith((BLOB_PATH, MANIFEST_PATH)):
                self._store(path)
            else:
                self._error(404, f"no such olladist endpoint: {path[:100]}")
        except Exception as exc:  # a bug must not take the server down; it is reported
            log.exception("status server: %s failed", path)
            with contextlib.suppress(OSError):
                self._error(500, f"the status server failed: {type(exc).__name__}")

    # -- the model store, to peers (olladist.transfer; docs/models.md) --

    def _store(self, path: str) -> None:
        """A blob (complete and verified, or arriving from upstream) or a manifest of this
        node's store, read-only."""
        store = self.server.service.store()
        if store is None:
            self._error(503, "no spec loaded yet: the model store is not known")
            return
        if path.startswith(BLOB_PATH):
            try:
                send_blob(self, store, path.removeprefix(BLOB_PATH))
            except TransferError:
                self._error(400, "not a sha256 digest")
            return
        file = _manifest_file(store, path.removeprefix(MANIFEST_PATH))
        if file is None:
            self._error(404, "not in this node's store")
            return
        with file.open("rb") as f:
            _send_file(self, f, os.fstat(f.fileno()).st_size)

    def _refuse(self) -> None:
        self._error(405, "the olladist status server is read-only: GET only")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse


def send_blob(h: BaseHTTPRequestHandler, store: Store, digest: str) -> None:
    """Answer a peer's ``GET``/``HEAD`` of a blob (TransferError: not a digest).

    Complete and verified: the file, ranged. Being fetched from upstream by this node (it is
    the blob's seeder): ``X-Olladist-Blob: growing`` and the bytes as they arrive, with the
    whole blob's length; the last byte follows only once the blob is placed, verified here. A
    fetch that fails ends the answer short of its length (the connection is cut), so the
    receiver resumes from another source with ``Range``. Anything else: 404."""
    for _ in range(2):  # a growing blob may be placed between the two looks
        file = store.verified_path(digest)
        if file is not None:
            with file.open("rb") as f:
                _send_file(h, f, os.fstat(f.fileno()).st_size)
            return
        part = store.growing(digest)
        if part is None:
            break
        start = _range_start(h.headers.get("Range", ""), part.blob.size)
        try:
            chunks = part.follow(start, STREAM_STALL_S) if h.command != "HEAD" else iter(())
        except StreamAborted:
            continue
        _send_head(h, start, part.blob.size, {GROWING_HEADER: "growing"})
        try:
            for chunk in chunks:
                h.wfile.write(chunk)
        except OSError:
            h.close_connection = True  # the receiver went away; it resumes elsewhere
        except StreamAborted as exc:
            log.warning("blob %s served as it arrived: cut, %s", digest[7:19], exc)
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)  # short of Content-Length: a cut
        return
    body = b'{"error":"not in this node\'s store (or not verified)"}'
    h.send_response(404)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)


def _send_head(
    h: BaseHTTPRequestHandler, start: int, size: int, extra: dict[str, str] | None = None
) -> None:
    h.send_response(206 if start else 200)
    h.send_header("Content-Type", "application/octet-stream")
    h.send_header("Content-Length", str(size - start))
    h.send_header("Accept-Ranges", "bytes")
    if start:
        h.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
    for k, v in (extra or {}).items():
        h.send_header(k, v)
    h.end_headers()


def _send_file(h: BaseHTTPRequestHandler, f: IO[bytes], size: int) -> None:
    start = _range_start(h.headers.get("Range", ""), size)
    _send_head(h, start, size)
    if h.command == "HEAD":
        return
    f.seek(start)
    while chunk := f.read(1 << 20):
        h.wfile.write(chunk)


def _manifest_file(store: Store, rest: str) -> Path | None:
    """``<host>/<namespace>/<model>/<tag>``, checked as a model name (no path tricks)."""
    parts = rest.split("/")
    if len(parts) != 4:
        return None
    try:
        name = parse_model_name(f"{parts[0]}/{parts[1]}/{parts[2]}:{parts[3]}")
    except InvalidModelName:
        return None
    if name.path_parts != tuple(parts):
        return None
    file = store.manifest_path(name)
    return file if file.is_file() else None


def _range_start(header: str, size: int) -> int:
    """The start of ``bytes=N-`` (all a resuming peer asks), 0 for anything else."""
    m = re.fullmatch(r"bytes=(\d+)-", header.strip())
    return int(m.group(1)) if m and int(m.group(1)) < size else 0


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    service: StatusService


class StatusServer:
    """The server on its unix socket, serving from a thread until ``close()``."""

    def __init__(self, daemon: DaemonView) -> None:
        self.path = daemon.layout.real(STATUS_SOCKET)
        self.service = StatusService(daemon)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> StatusServer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket of a reconciler that died
        server = _Server(str(self.path), _Handler, bind_and_activate=True)
        server.service = self.service
        _allow_gateway(self.path)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="status-server"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info("status server on %s", self.path)
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _allow_gateway(path: Path) -> None:
    """HAProxy runs as the olladist user under systemd; the reconciler as root."""
    mode = 0o660
    try:
        gid = grp.getgrnam(GATEWAY_GROUP).gr_gid
    except KeyError:
        gid = None  # a dev machine or a test: HAProxy runs as the same user
    if gid is not None:
        with contextlib.suppress(PermissionError):
            os.chown(path, -1, gid)
    os.chmod(path, mode)


def get(path: Path, url_path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url_path`` from the server at socket ``path`` (tests, ``olladist`` tools)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(f"GET {url_path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), body
