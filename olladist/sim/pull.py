"""``/api/pull`` over HTTP, the way ``ollama pull`` talks to a registry.

Read from Ollama's source (server/images.go PullModel, pullModelManifest, makeRequestWithRetry;
server/download.go; server/auth.go) and written anew:

- the manifest is ``GET {base}/v2/{ns}/{model}/manifests/{tag}`` with the Docker v2 manifest
  media type in ``Accept``; a 401 fetches a token from the ``WWW-Authenticate`` challenge's
  realm (which must be on the same host) and retries once; a 404 is "file does not exist";
- each layer, then the config, is skipped if ``blobs/sha256-<hex>`` exists (no digest check,
  as in Ollama); otherwise a HEAD gives its size, which is split into parts (size / 16, kept
  between 100 MB and 1,000 MB), a GET that does not follow a redirect to another host gives the
  direct URL (its ``Location``; a registry answering 200 without one fails as Ollama fails,
  ollama issue 7244), and each part is fetched with a ranged GET into ``<blob>-partial``, its
  progress kept in ``<blob>-partial-<n>`` (JSON) so that a later pull resumes it; a cut
  connection is retried after 1, 2, 4 ... s, six times at most;
- progress is a line every 60 ms per blob being fetched, none when it completes;
- one transfer per digest is shared by concurrent pulls, and cancelled when none waits on it.

One thing is stricter than Ollama, on purpose: Ollama renames the finished download into place
and then checks its sha256 (deleting it on a mismatch); here the check comes first, so a blob
with a wrong digest is never under its final name, even for a moment.

Connections go to loopback only (127.0.0.0/8, ::1, localhost); any other host is refused before
a socket is opened, so no test can reach the internet.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import secrets
import ssl
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp

from olladist.names import ModelName
from olladist.sim.catalogue import MEDIA_MANIFEST
from olladist.sim.store import ModelStore

NUM_PARTS = 16
MIN_PART = 100 * 1000 * 1000
MAX_PART = 1000 * 1000 * 1000
MAX_RETRIES = 6
PROGRESS_INTERVAL = 0.06
STALL_SECONDS = 30.0
_CHUNK = 64 << 10
_MAX_REDIRECTS = 10


class PullError(Exception):
    """A pull failed; the message is Ollama's wording where Ollama has one."""


class NotFound(PullError):
    def __init__(self) -> None:
        super().__init__("file does not exist")  # Go's os.ErrNotExist


class DigestMismatch(PullError):
    pass


def split_parts(total: int) -> list[tuple[int, int]]:
    """(offset, size) of each part, as Ollama splits a blob of ``total`` bytes."""
    size = min(max(total // NUM_PARTS, MIN_PART), MAX_PART)
    parts, offset = [], 0
    while offset < total:
        step = min(size, total - offset)
        parts.append((offset, step))
        offset += step
    return parts


def is_loopback_host(host: str) -> bool:
    """Whether a URL host (no port) is loopback, decided without any DNS lookup."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def registry_base(registries: dict[str, str], name: ModelName, insecure: bool) -> str | None:
    """Where the registry of ``name`` really is: a mapped URL, the loopback host itself, or
    None (the default registry, unmapped: the catalogue stands in for it)."""
    base = registries.get(name.host)
    if base is None:
        host = urlsplit(f"//{name.host}").hostname or ""
        if not is_loopback_host(host):
            return None
        # Ollama's server drops the scheme of the name (DisplayShortest) and uses https
        # unless the request says insecure.
        base = f"https://{name.host}"
    if insecure and base.startswith("https://"):
        base = "http://" + base.removeprefix("https://")
    return base


def _go_method(method: str) -> str:
    return method[0] + method[1:].lower()


def _transport_error(method: str, url: str, exc: BaseException) -> PullError:
    """An HTTP client failure in the words Go's net/http would use."""
    where = f'{_go_method(method)} "{url}"'
    cause = getattr(exc, "os_error", None) or exc.__cause__ or exc
    if isinstance(cause, ssl.SSLError) or isinstance(exc, aiohttp.ClientSSLError):
        return PullError(f"{where}: http: server gave HTTP response to HTTPS client")
    parts = urlsplit(url)
    if isinstance(cause, ConnectionRefusedError):
        return PullError(f"{where}: dial tcp {parts.netloc}: connect: connection refused")
    return PullError(f"{where}: {exc}")


@dataclass
class Part:
    n: int
    offset: int
    size: int
    completed: int = 0

    def to_json(self) -> bytes:
        body = {"N": self.n, "Offset": self.offset, "Size": self.size}
        return json.dumps({**body, "Completed": self.completed}).encode() + b"\n"


@dataclass(eq=False)
class BlobDownload:
    digest: str
    path: Path  # the final name; data goes to <path>-partial first
    total: int = 0
    completed: int = 0
    parts: list[Part] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    refs: int = 0

    @property
    def partial(self) -> Path:
        return Path(f"{self.path}-partial")

    def part_file(self, part: Part) -> Path:
        return Path(f"{self.path}-partial-{part.n}")

    def progress(self) -> dict[str, Any]:
        line: dict[str, Any] = {"status": f"pulling {self.digest[7:19]}", "digest": self.digest}
        # Ollama's ProgressResponse omits zero total and completed (omitempty).
        if self.total:
            line["total"] = self.total
        if self.completed:
            line["completed"] = self.completed
        return line


class Puller:
    """The HTTP side of pulls for one simulator: a client session and the running transfers."""

    def __init__(self, store: ModelStore, version: str) -> None:
        self.store = store
        self.user_agent = f"ollama/{version} (amd64 linux) olladist-sim"
        self.downloads: dict[str, BlobDownload] = {}
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        for download in list(self.downloads.values()):
            if download.task is not None:
                download.task.cancel()
        if self._session is not None:
            await self._session.close()

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=STALL_SECONDS),
            )
        return self._session

    # -- requests ------------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        follow: str,  # "all", "same-host" (Ollama's direct-URL rule) or "none"
    ) -> aiohttp.ClientResponse:
        """One request, following redirects by Ollama's rules; loopback hosts only."""
        first_host = urlsplit(url).hostname
        for _ in range(_MAX_REDIRECTS + 1):
            host = urlsplit(url).hostname or ""
            if not is_loopback_host(host):
                raise PullError(
                    f'{_go_method(method)} "{url}": olladist-sim connects to loopback only '
                    f"({host} is not); map the registry with OLLADIST_SIM_REGISTRY"
                )
            try:
                resp = await self.session().request(
                    method,
                    url,
                    headers={"User-Agent": self.user_agent, **headers},
                    allow_redirects=False,
                )
            except (aiohttp.ClientError, OSError) as exc:
                raise _transport_error(method, url, exc) from exc
            location = resp.headers.get("Location")
            if resp.status not in (301, 302, 303, 307, 308) or location is None or follow == "none":
                return resp
            target = urljoin(url, location)
            if follow == "same-host" and urlsplit(target).hostname != first_host:
                return resp
            resp.release()
            if urlsplit(target).hostname != host:
                headers = {k: v for k, v in headers.items() if k != "Authorization"}
            url = target
        raise PullError(f'{_go_method(method)} "{url}": stopped after 10 redirects')

    async def _request(
        self, method: str, url: str, headers: dict[str, str], auth: dict[str, str], follow: str
    ) -> aiohttp.ClientResponse:
        """makeRequestWithRetry: a 401 gets a token and one more try; 404 is "not found"."""
        for _ in range(2):
            sent = dict(headers)
            if auth.get("token"):
                sent["Authorization"] = f"Bearer {auth['token']}"
            resp = await self._send(method, url, sent, follow=follow)
            if resp.status == 401:
                challenge = resp.headers.get("WWW-Authenticate", "")
                resp.release()
                auth["token"] = await self._token(challenge, url)
                continue
            if resp.status == 404:
                resp.release()
                raise NotFound
            if resp.status >= 400:
                body = await resp.text(errors="replace")
                resp.release()
                raise PullError(f"{resp.status}: {body}")
            return resp
        raise PullError("unauthorized: access denied")

    async def _token(self, challenge: str, url: str) -> str:
        fields = _parse_challenge(challenge)
        realm = fields.get("realm", "")
        realm_host, original = urlsplit(realm).netloc, urlsplit(url).netloc
        if realm_host != original:
            raise PullError(f'realm host "{realm_host}" does not match original host "{original}"')
        query = [("service", fields.get("service", ""))]
        query += [("scope", s) for s in fields.get("scope", "").split(" ")]
        query += [("ts", str(int(time.time()))), ("nonce", secrets.token_urlsafe(16))]
        token_url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        # Ollama signs this request with its ed25519 key; the simulator has none to sign with.
        resp = await self._send("GET", token_url, {}, follow="all")
        body = await resp.read()
        resp.release()
        if resp.status >= 400:
            raise PullError(f"{resp.status}: {body.decode(errors='replace')}".rstrip(": "))
        try:
            return str(json.loads(body)["token"])
        except (ValueError, KeyError, TypeError) as exc:
            raise PullError(f"invalid token response: {exc}") from exc

    # -- manifest ------------------------------------------------------------------------------

    async def manifest(self, base: str, name: ModelName, auth: dict[str, str]) -> bytes:
        url = f"{base}/v2/{name.namespace}/{name.model}/manifests/{name.tag}"
        resp = await self._request("GET", url, {"Accept": MEDIA_MANIFEST}, auth, follow="all")
        try:
            return await resp.read()
        finally:
            resp.release()

    # -- blobs ---------------------------------------------------------------------------------

    async def blob(
        self,
        base: str,
        name: ModelName,
        digest: str,
        auth: dict[str, str],
        disk_full: bool = False,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Fetch one blob (or join its running transfer), yielding progress every 60 ms."""
        download = self.downloads.get(digest)
        if download is None:
            # Registered before any await, so concurrent pulls of one digest share it.
            download = BlobDownload(digest, self.store.blob_path(digest))
            self.downloads[digest] = download
            url = f"{base}/v2/{name.namespace}/{name.model}/blobs/{digest}"
            download.task = asyncio.get_running_loop().create_task(
                self._run(download, url, dict(auth), disk_full)
            )
        task = download.task
        assert task is not None
        download.refs += 1
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=PROGRESS_INTERVAL)
                if done:
                    break
                yield download.progress()
        finally:
            download.refs -= 1
            if download.refs == 0 and not task.done():
                task.cancel()  # nobody waits for it: keep the parts for a later pull
        exc = task.exception() if not task.cancelled() else None
        if task.cancelled():
            raise PullError("context canceled")
        if exc is not None:
            raise exc

    async def _prepare(self, download: BlobDownload, url: str, auth: dict[str, str]) -> None:
        """Resume from the part files of an earlier attempt, or HEAD the blob and split it."""
        parent = download.path.parent
        parent.mkdir(parents=True, exist_ok=True)
        for part_path in sorted(parent.glob(f"{download.path.name}-partial-*")):
            with contextlib.suppress(ValueError, KeyError, OSError):
                data = json.loads(part_path.read_text())
                part = Part(int(data["N"]), int(data["Offset"]), int(data["Size"]))
                part.completed = int(data["Completed"])
                download.parts.append(part)
                download.total += part.size
                download.completed += part.completed
        if download.parts:
            download.parts.sort(key=lambda p: p.n)
            return
        resp = await self._request("HEAD", url, {}, auth, follow="all")
        resp.release()
        download.total = int(resp.headers.get("Content-Length") or 0)
        for n, (offset, size) in enumerate(split_parts(download.total)):
            part = Part(n, offset, size)
            download.parts.append(part)
            download.part_file(part).write_bytes(part.to_json())

    async def _run(
        self, download: BlobDownload, url: str, auth: dict[str, str], disk_full: bool
    ) -> None:
        try:
            await self._prepare(download, url, auth)
            await self._transfer(download, url, auth, disk_full)
        finally:
            self.downloads.pop(download.digest, None)

    async def _transfer(
        self, download: BlobDownload, url: str, auth: dict[str, str], disk_full: bool
    ) -> None:
        partial = download.partial
        fd = os.open(partial, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.ftruncate(fd, download.total)
            resp = await self._request("GET", url, {}, auth, follow="same-host")
            resp.close()  # Ollama reads only the headers of this answer
            if resp.status not in (200, 307):
                raise PullError(f"unexpected status code {resp.status}")
            location = resp.headers.get("Location")
            if location is None:
                raise PullError("http: no Location header in response")
            direct = urljoin(url, location)
            jobs = [
                self._part(download, part, direct, fd, disk_full)
                for part in download.parts
                if part.completed < part.size
            ]
            results = await asyncio.gather(*jobs, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        finally:
            os.close(fd)
        for part in download.parts:
            download.part_file(part).unlink(missing_ok=True)
        try:
            got = await asyncio.to_thread(_sha256_file, partial)
        except FileNotFoundError:
            # Another simulator sharing this store finished the same blob first (Ollama's
            # transfers are per process too); its copy was verified before it was renamed.
            if download.path.is_file():
                return
            raise PullError(f"{partial} vanished during the download") from None
        if got != download.digest:
            partial.unlink(missing_ok=True)
            raise DigestMismatch(
                f"digest mismatch, file must be downloaded again: want {download.digest}, got {got}"
            )
        os.replace(partial, download.path)

    async def _part(
        self, download: BlobDownload, part: Part, url: str, fd: int, disk_full: bool
    ) -> None:
        tries = 0
        while True:
            try:
                await self._fetch_part(download, part, url, fd, disk_full)
                return
            except asyncio.CancelledError:
                download.part_file(part).write_bytes(part.to_json())
                raise
            except OSError as exc:
                if exc.errno == 28:  # ENOSPC: Ollama stops at once
                    raise PullError(f"write {download.partial}: no space left on device") from exc
                error: BaseException = exc
            except (aiohttp.ClientError, TimeoutError, PullError) as exc:
                error = exc
            download.part_file(part).write_bytes(part.to_json())
            if isinstance(error, TimeoutError):
                continue  # a stalled part is retried without counting a try, as in Ollama
            tries += 1
            if tries >= MAX_RETRIES:
                raise PullError(f"max retries exceeded: {error}")
            await asyncio.sleep(2 ** (tries - 1))

    async def _fetch_part(
        self, download: BlobDownload, part: Part, url: str, fd: int, disk_full: bool
    ) -> None:
        start, stop = part.offset + part.completed, part.offset + part.size
        headers = {"Range": f"bytes={start}-{stop - 1}"}
        resp = await self._send("GET", url, headers, follow="all")
        try:
            if resp.status >= 400:
                raise PullError(f"{resp.status}: {await resp.text(errors='replace')}")
            offset = start
            async for received in resp.content.iter_chunked(_CHUNK):
                chunk = received[: stop - offset]
                if disk_full:
                    raise OSError(28, "no space left on device")
                os.pwrite(fd, chunk, offset)
                offset += len(chunk)
                part.completed += len(chunk)
                download.completed += len(chunk)
                if offset >= stop:
                    break
            if offset < stop:
                raise PullError("unexpected EOF")
        finally:
            resp.close()


def _sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def _parse_challenge(header: str) -> dict[str, str]:
    """``Bearer realm="...",service="...",scope="..."`` to its fields."""
    text = header.removeprefix("Bearer ").strip()
    fields: dict[str, str] = {}
    for key in ("realm", "service", "scope"):
        marker = f'{key}="'
        start = text.find(marker)
        if start < 0:
            continue
        start += len(marker)
        end = text.find('"', start)
        fields[key] = text[start : end if end >= 0 else len(text)]
    return fields
