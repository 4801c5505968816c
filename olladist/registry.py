"""A model as the registry protocol carries it, and Ollama's store on disk (docs/models.md).

Two sides of one edge:

- the upstream registry (OCI distribution API, as ``ollama pull`` speaks it):
  ``GET /v2/<namespace>/<model>/manifests/<tag>`` with the Docker v2 manifest media type, then
  ``GET /v2/<namespace>/<model>/blobs/<digest>`` for each layer and the config, following the
  registry's redirect to its storage host, ranged so a cut connection resumes;
- the node's store (``ollama.models_dir``, Ollama's ``OLLAMA_MODELS``) in Ollama's layout:
  ``blobs/sha256-<hex>`` and ``manifests/<host>/<namespace>/<model>/<tag>``.

What Ollama may see is only ever complete and verified: a blob is written under
``.olladist-partial/`` (outside ``blobs/``, on the same filesystem), hashed while it arrives,
and renamed into ``blobs/`` only when its sha256 is the digest it was asked for; the manifest is
written last, the same way, so Ollama lists a model only once every blob it names is there.
A blob fetched from upstream can be read by peers while it arrives (``Partial.follow``): from
the partial file, never from ``blobs/``, its last byte only once it is placed.

Where upstream is: ``https://<host>`` of the model's name (``http://`` for an ``http://``
name), or what the node-local ``OLLADIST_REGISTRY`` maps the host to
(``registry.ollama.ai=http://127.0.0.1:5000,...``; a bare URL maps ``registry.ollama.ai``), as
``OLLADIST_SIM_REGISTRY`` does for the simulator. ``OLLADIST_REGISTRY=ollama``: olladist
neither contacts upstream nor transfers between peers; every node pulls through its Ollama (the
simulator's catalogue in development, whose blobs are stand-ins).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, ClassVar

from olladist.names import DEFAULT_REGISTRY, ModelName
from olladist.ollama import OllamaError

UPSTREAM_ENV = "OLLADIST_REGISTRY"
MANIFEST_MEDIA = "application/vnd.docker.distribution.manifest.v2+json"
PARTIAL_DIR = ".olladist-partial"
CHUNK = 1 << 20
MAX_MANIFEST = 4 * 1024 * 1024
_HEX = re.compile(r"^[0-9a-f]{64}$")


class TransferError(OllamaError):
    """An OllamaError, so model sync handles it as a failed pull (``transient``: retried)."""


@dataclass(frozen=True)
class Blob:
    digest: str  # sha256:<hex>
    size: int

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")


@dataclass(frozen=True)
class Manifest:
    raw: bytes  # byte for byte as served: its sha256 is the model's digest in /api/tags

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def blobs(self) -> list[Blob]:
        """The layers, then the config (the order ``ollama pull`` fetches them in)."""
        return parse_manifest(self.raw)

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blobs)


def parse_digest(text: str) -> str:
    """``sha256:<hex>`` or ``sha256-<hex>`` to ``<hex>``; TransferError when it is neither."""
    for prefix in ("sha256:", "sha256-"):
        if text.startswith(prefix) and _HEX.match(text[len(prefix) :]):
            return text[len(prefix) :]
    raise TransferError(f"not a sha256 digest: {text[:80]!r}")


def parse_manifest(raw: bytes) -> list[Blob]:
    """The blobs a manifest names; TransferError when it is not a Docker v2 manifest."""
    try:
        data = json.loads(raw)
        entries = [*data.get("layers", []), data["config"]]
        blobs = [Blob("sha256:" + parse_digest(e["digest"]), int(e["size"])) for e in entries]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TransferError(f"not a model manifest: {exc}") from exc
    if any(b.size < 0 for b in blobs):
        raise TransferError("a manifest layer has a negative size")
    return blobs


class UpstreamUnavailable(TransferError):
    """No manifest from upstream nor any peer, or upstream is the node's Ollama
    (``OLLADIST_REGISTRY=ollama``): model sync then pulls through Ollama instead."""


THROUGH_OLLAMA = "ollama"


def upstream_base(name: ModelName, env: Mapping[str, str] | None = None) -> str:
    """The base URL of the registry that serves ``name``; UpstreamUnavailable when the node
    says upstream is reached through its Ollama only."""
    text = (os.environ if env is None else env).get(UPSTREAM_ENV, "").strip()
    if text == THROUGH_OLLAMA:
        raise UpstreamUnavailable(f"pull {name.short}: {UPSTREAM_ENV}=ollama: through Ollama")
    for item in filter(None, (i.strip() for i in text.split(","))):
        host, sep, url = item.partition("=")
        if not sep:
            host, url = DEFAULT_REGISTRY, item
        if host.strip().lower() == name.host:
            return url.strip().rstrip("/")
    return f"{'http' if name.insecure_scheme else 'https'}://{name.host}"


def manifest_url(name: ModelName, base: str) -> str:
    return f"{base}/v2/{name.namespace}/{name.model}/manifests/{name.tag}"


def blob_url(name: ModelName, base: str, blob: Blob) -> str:
    return f"{base}/v2/{name.namespace}/{name.model}/blobs/{blob.digest}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class Store:
    """A node's model store, in Ollama's layout; safe to share with Ollama while it runs.

    ``Store.shared(root)`` is one object per store in the process: the reconciler's transfers
    and its status server (which serves the store to peers) then share what is known verified,
    so a blob placed by a transfer is served at once, without hashing it again."""

    _shared: ClassVar[dict[Path, Store]] = {}
    _shared_lock = threading.Lock()

    def __init__(self, root: Path) -> None:
        self.root = root
        self._verified: dict[str, tuple[int, int, int]] = {}  # hex -> (inode, size, mtime_ns)
        self._lock = threading.Lock()
        self._hashing: dict[str, threading.Lock] = {}  # one hash of a blob at a time
        # Blobs this node is fetching from upstream, served to peers as they arrive.
        self._growing: dict[str, Partial] = {}
        self.streamed = 0  # bytes served to peers before their blob was complete (tests, bench)

    @classmethod
    def shared(cls, root: Path) -> Store:
        with cls._shared_lock:
            store = cls._shared.get(root)
            if store is None:
                store = cls._shared[root] = cls(root)
            return store

    def _mark(self, hex_digest: str, path: Path) -> None:
        st = path.stat()
        with self._lock:
            self._verified[hex_digest] = (st.st_ino, st.st_size, st.st_mtime_ns)

    @property
    def partial_dir(self) -> Path:
        return self.root / PARTIAL_DIR

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / f"sha256-{parse_digest(digest)}"

    def manifest_path(self, name: ModelName) -> Path:
        return self.root.joinpath("manifests", *name.path_parts)

    def manifest(self, name: ModelName) -> Manifest | None:
        try:
            return Manifest(self.manifest_path(name).read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return None

    def verified(self, blob: Blob) -> bool:
        """The blob is there, of its size, with its digest (hashed once per file version)."""
        path = self.blob_path(blob.digest)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return False
        if st.st_size != blob.size:
            return False
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if self._verified.get(blob.hex) == key:
                return True
            hashing = self._hashing.setdefault(blob.hex, threading.Lock())
        # Peers asking for one large blob at once wait for one hash instead of each hashing.
        with hashing:
            with self._lock:
                if self._verified.get(blob.hex) == key:
                    return True
            ok = file_sha256(path) == blob.hex
            if ok:
                with self._lock:
                    self._verified[blob.hex] = key
        return ok

    def verified_path(self, digest: str) -> Path | None:
        """The blob's file when it is complete and its content has its name's digest."""
        path = self.blob_path(digest)
        try:
            size = path.stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return None
        return path if self.verified(Blob(f"sha256:{parse_digest(digest)}", size)) else None

    def growing(self, digest: str) -> Partial | None:
        """The blob as it arrives from upstream, when this node is fetching it (its seeder)."""
        with self._lock:
            return self._growing.get(parse_digest(digest))

    def _serve_growing(self, part: Partial, on: bool) -> None:
        with self._lock:
            if on:
                self._growing[part.blob.hex] = part
            elif self._growing.get(part.blob.hex) is part:
                del self._growing[part.blob.hex]

    def partial(self, blob: Blob) -> Partial:
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.sweep()
        return Partial(self, blob)

    def sweep(self) -> None:
        """Drop what a reconciler that died (SIGKILL, a crash) left in the partial folder: its
        files are named after its process id, and that process is gone."""
        for path in self.partial_dir.glob("*"):
            m = _PARTIAL_NAME.match(path.name)
            if m is None or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def write_manifest(self, name: ModelName, manifest: Manifest) -> None:
        """Last step of a transfer: every blob must be in place (checked again here)."""
        missing = [b.digest for b in manifest.blobs if not self.verified(b)]
        if missing:
            raise TransferError(f"{name.short}: blobs missing or not verified: {missing}")
        target = self.manifest_path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.partial_dir / f"manifest-{os.getpid()}-{threading.get_ident()}"
        tmp.write_bytes(manifest.raw)
        os.replace(tmp, target)


_PARTIAL_NAME = re.compile(r"^(?:sha256-[0-9a-f]{64}|manifest)-(\d+)-\d+$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive, and not ours to judge
    return True


class StreamAborted(Exception):
    """A blob served as it arrived will not complete from here: its fetch failed, started
    again from byte 0, stalled, or its bytes failed the digest."""


class Partial:
    """One blob on its way in: appended to from any number of sources in turn (each resuming
    where the last stopped), hashed as it arrives, placed only when the digest matches.

    While it is fed from upstream (``serve(True)``), peers may read it as it grows
    (``follow``): that is how the seeder's download reaches the other nodes before it ends.
    The last byte is handed out only once the whole blob is placed, verified, so a reader never
    ends a blob that failed here; readers verify the digest themselves anyway."""

    def __init__(self, store: Store, blob: Blob) -> None:
        self.store = store
        self.blob = blob
        self.path = store.partial_dir / f"sha256-{blob.hex}-{os.getpid()}-{threading.get_ident()}"
        self._file: IO[bytes] = self.path.open("wb")
        self._hash = hashlib.sha256()
        self.received = 0
        self._cond = threading.Condition()
        self._generation = 0  # bumped by restart(): what readers had is no longer the blob
        self._state = "growing"  # then "placed" or "failed"
        self.streamed = 0  # bytes handed to readers while the blob was still arriving

    def write(self, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            if self.received + len(chunk) > self.blob.size:
                raise TransferError(
                    f"blob {self.blob.digest[:19]} is longer than its manifest's "
                    f"{self.blob.size} bytes"
                )
            self._file.write(chunk)
            self._file.flush()  # readers open the file by name and read what is written
            self._hash.update(chunk)
            with self._cond:
                self.received += len(chunk)
                self._cond.notify_all()

    @property
    def complete(self) -> bool:
        return self.received == self.blob.size

    def serve(self, on: bool) -> None:
        """Offer this blob to peers as it grows (while upstream feeds it), or stop. Only an
        upstream-fed partial is offered: two receivers each reading the other's would wait on
        each other for ever."""
        self.store._serve_growing(self, on)

    def place(self) -> bool:
        """Rename into ``blobs/`` if complete and its digest matches; False (and the bytes
        dropped) when the digest is wrong."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if self._hash.hexdigest() != self.blob.hex:
            self.discard()
            return False
        target = self.store.blob_path(self.blob.digest)
        os.replace(self.path, target)
        self.store._mark(self.blob.hex, target)  # hashed as it arrived: no need to again
        self._end("placed")
        return True

    def restart(self) -> None:
        """Start again from byte 0 (the bytes so far came from a source that lied)."""
        with self._cond:
            self._generation += 1
            self._file.seek(0)
            self._file.truncate()
            self._hash = hashlib.sha256()
            self.received = 0
            self._cond.notify_all()

    def discard(self) -> None:
        self._end("failed")
        with contextlib.suppress(ValueError, OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _end(self, state: str) -> None:
        self.serve(False)
        with self._cond:
            if self._state == "growing":
                self._state = state
            self._cond.notify_all()

    def follow(self, start: int, stall_s: float) -> Iterator[bytes]:
        """The blob's bytes from ``start`` as they arrive, until its end once it is placed;
        StreamAborted when it will not complete (failed, restarted, or no byte for
        ``stall_s``), so the reader resumes elsewhere with a Range request."""
        with self._cond:
            generation = self._generation
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            # Renamed into blobs/ already (placed), or dropped: the caller asks the store.
            raise StreamAborted("the partial file is gone") from None
        return self._follow(f, start, generation, stall_s)

    def _follow(self, f: IO[bytes], start: int, generation: int, stall_s: float) -> Iterator[bytes]:
        pos = start
        with f:
            while pos < self.blob.size:
                with self._cond:
                    end = self._ready_end(pos, generation, stall_s)
                f.seek(pos)
                data = f.read(min(end - pos, CHUNK))
                with self._cond:
                    if self._generation != generation or not data:
                        raise StreamAborted("the blob was started again from byte 0")
                    if self._state == "growing":
                        self.streamed += len(data)
                        with self.store._lock:
                            self.store.streamed += len(data)
                pos += len(data)
                yield data

    def _ready_end(self, pos: int, generation: int, stall_s: float) -> int:
        """Under the lock: wait until there is something past ``pos`` to hand out."""
        while True:
            if self._generation != generation:
                raise StreamAborted("the blob was started again from byte 0")
            if self._state == "failed":
                raise StreamAborted("the fetch of the blob failed")
            # Hold back the last byte until the blob is placed: a reader never gets all of
            # a blob that failed its digest here.
            end = (
                self.received if self._state == "placed" else min(self.received, self.blob.size - 1)
            )
            if end > pos:
                return end
            if not self._cond.wait(stall_s):
                raise StreamAborted(f"no byte of the blob for {stall_s:.0f}s")
