"""A small model registry on loopback: what ``olladist-sim`` (and ``ollama pull``) pull from.

    olladist-sim registry --port 5000 --dir /tmp/reg --model tiny=50MB --rate 20MB

It speaks the part of the OCI distribution API that Ollama uses (server/images.go,
server/download.go):

    GET|HEAD /v2/<ns>/<model>/manifests/<tag>   the manifest, Docker v2 media type
    GET|HEAD /v2/<ns>/<model>/blobs/<digest>    307 to /cdn/<digest> on the other loopback
                                                name (127.0.0.1 <-> localhost), as the
                                                official registry redirects to its CDN;
                                                --plain serves the bytes here instead
    GET|HEAD /cdn/<digest>                      the blob, ranged (Range: bytes=a-b)
    GET /token                                  a bearer token, when --token is set (then
                                                /v2/* answers 401 with a WWW-Authenticate
                                                challenge until it is presented)

Models are generated, deterministic and real: the weights layer is a JSON line of metadata
(what the simulator reads as the GGUF header) and then seeded pseudo-random filler up to the
model's size, so every blob has a true sha256 and the same name gives the same digests on every
machine. Every catalogue model is served, generated on first request at 1/--scale of its real
size (1/1000: llama3.2:1b is 1.3 MB); ``--model name=size`` adds or resizes one. Files live in
--dir (``manifests/<ns>/<model>/<tag>``, ``blobs/sha256-<hex>``).

Admin routes, under ``/_registry/``:

    GET|DELETE /_registry/stats      bytes sent per blob (the byte counter), requests per
                                     blob and manifest; DELETE resets them
    GET /_registry/models            the models generated so far, with digests and sizes
    POST /_registry/models           {"name", "size", "seed"}: (re)generate one; a new seed
                                     gives new bytes, so a new digest ("upstream changed")
    GET|POST|DELETE /_registry/faults  {"rate": bytes/s, "corrupt": [digest], "cut_after": N,
                                     "cuts": K}: limit the bandwidth of all blob bodies
                                     together (a slow WAN link), serve wrong bytes for some
                                     digests, or cut the next K blob bodies after N bytes

It binds loopback only and refuses models over 2 GiB or more than 256 of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import random
import re
import signal
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from olladist.names import DEFAULT_NAMESPACE, InvalidModelName, parse_model_name
from olladist.sim.catalogue import (
    MEDIA_CONFIG,
    MEDIA_LICENSE,
    MEDIA_MANIFEST,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_TEMPLATE,
    SIM_MARKER,
    Catalogue,
    CatalogueEntry,
    canonical_json,
    load_catalogue,
)
from olladist.sim.errors import SimConfigError

MAX_MODEL_BYTES = 2 << 30
MAX_MODELS = 256
DEFAULT_SCALE = 1000
MIN_GENERATED = 64 << 10
_CHUNK = 64 << 10
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 1 << 10, "mi": 1 << 20}
_UNITS["gi"] = 1 << 30
_DIGEST_PATH = re.compile(r"^sha256:[0-9a-f]{64}$")


def parse_size(text: str) -> int:
    """``50MB``, ``4MiB``, ``1.5G``, ``123456``: a byte count (decimal units, or binary ``i``)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise SimConfigError(f"invalid size {text!r} (use e.g. 4MB, 50MiB, 123456)")
    unit = (match.group(2) or "").lower().removesuffix("b")
    return int(float(match.group(1)) * _UNITS[unit])


def go_manifest_json(config: dict[str, Any], layers: list[dict[str, Any]]) -> bytes:
    """The manifest as Go's json.Marshal writes Ollama's Manifest struct (field order, compact),
    so the bytes are the same whether an Ollama stores them as received or re-encodes them."""

    def layer(entry: dict[str, Any]) -> dict[str, Any]:
        return {"mediaType": entry["mediaType"], "digest": entry["digest"], "size": entry["size"]}

    doc = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": layer(config),
        "layers": [layer(entry) for entry in layers],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ModelSpec:
    """What to generate: a name (``ns/model:tag``), a total size and a seed for the filler."""

    namespace: str
    model: str
    tag: str
    size: int
    seed: str = ""

    @property
    def name(self) -> str:
        prefix = "" if self.namespace == DEFAULT_NAMESPACE else f"{self.namespace}/"
        return f"{prefix}{self.model}:{self.tag}"


def model_spec(
    name: str, size: int | None, seed: str, catalogue: Catalogue, scale: int
) -> ModelSpec:
    try:
        parsed = parse_model_name(name)
    except InvalidModelName as exc:
        raise SimConfigError(f"invalid model name {name!r}") from exc
    if size is None:
        entry = catalogue.lookup(parsed.short)
        if entry is None:
            raise SimConfigError(f"{name!r}: give a size (name=4MB); it is not in the catalogue")
        size = max(entry.size // scale, MIN_GENERATED)
    if not 0 < size <= MAX_MODEL_BYTES:
        raise SimConfigError(f"{name!r}: size must be between 1 byte and 2 GiB")
    return ModelSpec(parsed.namespace, parsed.model, parsed.tag, size, seed)


def _weights_header(spec: ModelSpec, entry: CatalogueEntry | None) -> bytes:
    if entry is not None:
        caps, info = list(entry.capabilities), entry.model_info()
    else:
        caps = ["completion"]
        info = {"general.architecture": "llama", "llama.context_length": 4096}
        info["llama.embedding_length"] = 768
    head = {
        SIM_MARKER: 1,
        "note": "generated by olladist-sim registry: metadata line, then seeded filler",
        "model": spec.name,
        "capabilities": caps,
        "model_info": info,
    }
    return canonical_json(head) + b"\n"


class RegistryStore:
    """Generated models on disk; every write is a temp file renamed into place."""

    def __init__(self, root: Path, catalogue: Catalogue, scale: int = DEFAULT_SCALE) -> None:
        self.root = root
        self.catalogue = catalogue
        self.scale = scale
        self.blobs = root / "blobs"
        self.manifests = root / "manifests"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.manifests.mkdir(parents=True, exist_ok=True)

    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest.replace(":", "-", 1)

    def manifest_path(self, namespace: str, model: str, tag: str) -> Path:
        return self.manifests / namespace / model / tag

    def manifest(self, namespace: str, model: str, tag: str) -> bytes | None:
        """The manifest bytes; a catalogue model is generated on first request."""
        path = self.manifest_path(namespace, model, tag)
        with contextlib.suppress(FileNotFoundError):
            return path.read_bytes()
        if namespace != DEFAULT_NAMESPACE or self.catalogue.lookup(f"{model}:{tag}") is None:
            return None
        self.generate(model_spec(f"{model}:{tag}", None, "", self.catalogue, self.scale))
        return path.read_bytes()

    def models(self) -> list[dict[str, Any]]:
        found = []
        for path in sorted(self.manifests.glob("*/*/*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            namespace, model, tag = path.relative_to(self.manifests).parts
            data = path.read_bytes()
            manifest = json.loads(data)
            blobs = [*manifest["layers"], manifest["config"]]
            prefix = "" if namespace == DEFAULT_NAMESPACE else f"{namespace}/"
            found.append(
                {
                    "name": f"{prefix}{model}:{tag}",
                    "digest": hashlib.sha256(data).hexdigest(),
                    "size": sum(int(b["size"]) for b in manifest["layers"]),
                    "transfer_size": sum(int(b["size"]) for b in blobs),
                    "blobs": blobs,
                }
            )
        return found

    def generate(self, spec: ModelSpec) -> bytes:
        """Write the blobs and manifest of ``spec``; return the manifest bytes."""
        if not self.manifest_path(spec.namespace, spec.model, spec.tag).exists() and (
            len(list(self.manifests.glob("*/*/*"))) >= MAX_MODELS
        ):
            raise SimConfigError(f"the registry holds {MAX_MODELS} models already")
        entry = self.catalogue.lookup(spec.name) if spec.namespace == DEFAULT_NAMESPACE else None
        small: list[tuple[str, bytes]] = []
        template = entry.template if entry is not None else "{{ .Prompt }}"
        small.append((MEDIA_TEMPLATE, template.encode()))
        if entry is not None and entry.license:
            small.append((MEDIA_LICENSE, entry.license.encode()))
        if entry is not None and entry.params:
            small.append((MEDIA_PARAMS, canonical_json(entry.params)))
        header = _weights_header(spec, entry)
        weights_size = max(spec.size - sum(len(data) for _, data in small), len(header))
        weights = self._write_weights(header, weights_size, f"{spec.name}\0{spec.seed}")
        layers = [{"mediaType": MEDIA_MODEL, "digest": weights, "size": weights_size}]
        for media, data in small:
            layers.append({"mediaType": media, "digest": self._write(data), "size": len(data)})
        fields = entry.config_fields() if entry is not None else {"model_format": "gguf"}
        config_data = canonical_json(
            {
                **fields,
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
            }
        )
        config: dict[str, Any] = {"mediaType": MEDIA_CONFIG, "digest": self._write(config_data)}
        config["size"] = len(config_data)
        manifest = go_manifest_json(config, layers)
        path = self.manifest_path(spec.namespace, spec.model, spec.tag)
        _atomic_write(path, manifest)
        return manifest

    def _write(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.blob_path(digest).exists():
            _atomic_write(self.blob_path(digest), data)
        return digest

    def _write_weights(self, header: bytes, size: int, seed: str) -> str:
        rng = random.Random(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big"))
        hasher = hashlib.sha256(header)
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".gen-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(header)
                left = size - len(header)
                while left > 0:
                    chunk = rng.randbytes(min(left, 1 << 20))
                    hasher.update(chunk)
                    out.write(chunk)
                    left -= len(chunk)
            digest = "sha256:" + hasher.hexdigest()
            os.replace(tmp, self.blob_path(digest))
        finally:
            Path(tmp).unlink(missing_ok=True)
        return digest


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


class Throttle:
    """One shared link: blob bodies together get at most ``rate`` bytes per second.

    A token bucket on a virtual clock, holding at most WINDOW seconds of credit so that the
    event loop's own delays do not slow the link below its rate: t seconds after the first
    byte, at most rate * (t + WINDOW) + one chunk have gone out.
    """

    WINDOW = 0.1

    def __init__(self, rate: float = 0.0) -> None:
        self.rate = rate
        self._free_at = 0.0

    async def take(self, nbytes: int) -> None:
        if self.rate <= 0:
            return
        now = asyncio.get_running_loop().time()
        self._free_at = max(self._free_at, now - self.WINDOW) + nbytes / self.rate
        # The chunk goes out when its slot ends, so the bound holds at every instant.
        if self._free_at > now:
            await asyncio.sleep(self._free_at - now)


@dataclass
class RegistryFaults:
    corrupt: set[str] = field(default_factory=set)
    cut_after: int | None = None
    cuts: int = 0

    def to_dict(self, rate: float) -> dict[str, Any]:
        return {
            "rate": rate,
            "corrupt": sorted(self.corrupt),
            "cut_after": self.cut_after,
            "cuts": self.cuts,
        }


@dataclass
class RegistryState:
    store: RegistryStore
    throttle: Throttle
    plain: bool = False
    token: str | None = None
    faults: RegistryFaults = field(default_factory=RegistryFaults)
    bytes_sent: Counter[str] = field(default_factory=Counter)
    blob_requests: Counter[str] = field(default_factory=Counter)
    manifest_requests: Counter[str] = field(default_factory=Counter)
    ranges: dict[str, list[str]] = field(default_factory=dict)  # the last Range headers

    def stats(self) -> dict[str, Any]:
        digests = sorted(set(self.bytes_sent) | set(self.blob_requests))
        return {
            "bytes_sent": sum(self.bytes_sent.values()),
            "blobs": {
                d: {
                    "bytes_sent": self.bytes_sent[d],
                    "requests": self.blob_requests[d],
                    "ranges": self.ranges.get(d, []),
                }
                for d in digests
            },
            "manifest_requests": dict(self.manifest_requests),
            "rate": self.throttle.rate,
        }


REGISTRY = web.AppKey("olladist_sim_registry", RegistryState)


def _oci_error(status: int, code: str, message: str) -> web.Response:
    body = {"errors": [{"code": code, "message": message}]}
    return web.json_response(body, status=status)


def _authorized(request: web.Request, state: RegistryState, scope: str) -> web.Response | None:
    if state.token is None or request.headers.get("Authorization") == f"Bearer {state.token}":
        return None
    realm = f"http://{request.host}/token"
    challenge = f'Bearer realm="{realm}",service="olladist-sim-registry",scope="{scope}"'
    response = _oci_error(401, "UNAUTHORIZED", "authentication required")
    response.headers["WWW-Authenticate"] = challenge
    return response


async def get_token(request: web.Request) -> web.Response:
    state = request.app[REGISTRY]
    return web.json_response({"token": state.token or ""})


async def get_manifest(request: web.Request) -> web.StreamResponse:
    state = request.app[REGISTRY]
    ns, model, tag = (request.match_info[k] for k in ("ns", "model", "tag"))
    denied = _authorized(request, state, f"repository:{ns}/{model}:pull")
    if denied is not None:
        return denied
    try:
        data = await asyncio.to_thread(state.store.manifest, ns, model, tag)
    except SimConfigError as exc:
        return _oci_error(400, "MANIFEST_INVALID", exc.message)
    if data is None:
        return _oci_error(404, "MANIFEST_UNKNOWN", f"manifest unknown: {ns}/{model}:{tag}")
    state.manifest_requests[f"{ns}/{model}:{tag}"] += 1
    headers = {
        "Content-Type": MEDIA_MANIFEST,
        "Docker-Content-Digest": "sha256:" + hashlib.sha256(data).hexdigest(),
    }
    if request.method == "HEAD":
        return web.Response(headers={**headers, "Content-Length": str(len(data))})
    return web.Response(body=data, headers=headers)


def _other_loopback_name(host: str) -> str:
    """The CDN host: the same server under its other loopback name, so that a client sees a
    redirect to a different host, as registry.ollama.ai redirects to its storage."""
    name, sep, port = host.rpartition(":")
    if not sep:
        name, port = host, ""
    other = "localhost" if name != "localhost" else "127.0.0.1"
    return f"{other}:{port}" if port else other


async def get_blob(request: web.Request) -> web.StreamResponse:
    state = request.app[REGISTRY]
    ns, model, digest = (request.match_info[k] for k in ("ns", "model", "digest"))
    denied = _authorized(request, state, f"repository:{ns}/{model}:pull")
    if denied is not None:
        return denied
    if not _DIGEST_PATH.match(digest) or not state.store.blob_path(digest).is_file():
        return _oci_error(404, "BLOB_UNKNOWN", f"blob unknown: {digest}")
    if state.plain:
        return await _send_blob(request, state, digest)
    location = f"http://{_other_loopback_name(request.host)}/cdn/{digest}"
    raise web.HTTPTemporaryRedirect(location)


async def get_cdn_blob(request: web.Request) -> web.StreamResponse:
    state = request.app[REGISTRY]
    digest = request.match_info["digest"]
    if not _DIGEST_PATH.match(digest) or not state.store.blob_path(digest).is_file():
        return _oci_error(404, "BLOB_UNKNOWN", f"blob unknown: {digest}")
    return await _send_blob(request, state, digest)


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` (or ``a-``, ``-n``) to a half-open [start, stop); None if unsatisfiable."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not match or not (match.group(1) or match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:
        start, stop = max(size - int(last), 0), size
    else:
        start = int(first)
        stop = min(int(last) + 1, size) if last else size
    return (start, stop) if start < stop else None


async def _send_blob(request: web.Request, state: RegistryState, digest: str) -> web.StreamResponse:
    path = state.store.blob_path(digest)
    size = path.stat().st_size
    state.blob_requests[digest] += 1
    if request.method == "GET":
        seen = state.ranges.setdefault(digest, [])
        seen[:] = [*seen[-99:], request.headers.get("Range", "")]
    start, stop, status = 0, size, 200
    headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
    if "Range" in request.headers:
        span = _byte_range(request.headers["Range"], size)
        if span is None:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
        (start, stop), status = span, 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    headers["Content-Length"] = str(stop - start)
    response = web.StreamResponse(status=status, headers=headers)
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    faults = state.faults
    cut_at: int | None = None
    if faults.cuts > 0 and faults.cut_after is not None:
        faults.cuts -= 1
        cut_at = start + faults.cut_after
    with path.open("rb") as blob:
        blob.seek(start)
        offset = start
        while offset < stop:
            want = min(_CHUNK, stop - offset)
            if cut_at is not None:
                want = min(want, cut_at - offset)
                if want <= 0:
                    # Cut the link mid-body: the client sees a short read, as on a WAN drop.
                    if request.transport is not None:
                        request.transport.close()
                    return response
            chunk = blob.read(want)
            if digest in faults.corrupt and offset <= size // 2 < offset + len(chunk):
                flip = size // 2 - offset
                chunk = chunk[:flip] + bytes([chunk[flip] ^ 0xFF]) + chunk[flip + 1 :]
            await state.throttle.take(len(chunk))
            try:
                await response.write(chunk)
            except ConnectionError:
                return response
            state.bytes_sent[digest] += len(chunk)
            offset += len(chunk)
    await response.write_eof()
    return response


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[REGISTRY].stats())


async def reset_stats(request: web.Request) -> web.Response:
    state = request.app[REGISTRY]
    state.bytes_sent.clear()
    state.blob_requests.clear()
    state.manifest_requests.clear()
    state.ranges.clear()
    return web.json_response({"status": "reset"})


async def list_models(request: web.Request) -> web.Response:
    store = request.app[REGISTRY].store
    return web.json_response({"models": await asyncio.to_thread(store.models)})


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="body must be a JSON object") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return body


async def add_model(request: web.Request) -> web.Response:
    state = request.app[REGISTRY]
    body = await _json_body(request)
    size = body.get("size")
    try:
        parsed = parse_size(str(size)) if size is not None else None
        spec = model_spec(
            str(body.get("name", "")),
            parsed,
            str(body.get("seed", "")),
            state.store.catalogue,
            state.store.scale,
        )
        data = await asyncio.to_thread(state.store.generate, spec)
    except SimConfigError as exc:
        return web.json_response({"error": exc.message}, status=400)
    digest = hashlib.sha256(data).hexdigest()
    return web.json_response({"name": spec.name, "digest": digest, "manifest": json.loads(data)})


async def get_faults(request: web.Request) -> web.Response:
    state = request.app[REGISTRY]
    return web.json_response(state.faults.to_dict(state.throttle.rate))


async def set_faults(request: web.Request) -> web.Response:
    state = request.app[REGISTRY]
    body = await _json_body(request)
    unknown = set(body) - {"rate", "corrupt", "cut_after", "cuts"}
    if unknown:
        return web.json_response({"error": f"unknown keys {sorted(unknown)}"}, status=400)
    try:
        rate = float(body.get("rate") or 0)
        corrupt = {str(d) for d in body.get("corrupt") or []}
        cut_after = body.get("cut_after")
        cut_after = None if cut_after is None else int(cut_after)
        cuts = int(body.get("cuts", 1 if cut_after is not None else 0))
    except (TypeError, ValueError):
        return web.json_response({"error": "rate, cut_after and cuts are numbers"}, status=400)
    state.throttle.rate = max(rate, 0.0)
    state.faults = RegistryFaults(corrupt, cut_after, cuts)
    return web.json_response(state.faults.to_dict(state.throttle.rate))


async def clear_faults(request: web.Request) -> web.Response:
    state = request.app[REGISTRY]
    state.faults = RegistryFaults()
    state.throttle.rate = 0.0
    return web.json_response(state.faults.to_dict(0.0))


async def api_version(request: web.Request) -> web.Response:
    return web.json_response({})


def build_app(state: RegistryState) -> web.Application:
    app = web.Application()
    app[REGISTRY] = state
    r = app.router
    r.add_get("/v2/", api_version)
    r.add_get("/v2/{ns}/{model}/manifests/{tag}", get_manifest)
    r.add_get("/v2/{ns}/{model}/blobs/{digest}", get_blob)
    r.add_get("/cdn/{digest}", get_cdn_blob)
    r.add_get("/token", get_token)
    r.add_get("/_registry/stats", get_stats)
    r.add_delete("/_registry/stats", reset_stats)
    r.add_get("/_registry/models", list_models)
    r.add_post("/_registry/models", add_model)
    r.add_get("/_registry/faults", get_faults)
    r.add_post("/_registry/faults", set_faults)
    r.add_delete("/_registry/faults", clear_faults)
    return app


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(args: argparse.Namespace) -> None:
    if not _loopback(args.host):
        raise SimConfigError(f"the test registry binds loopback only, not {args.host!r}")
    catalogue = load_catalogue()
    store = RegistryStore(Path(args.dir), catalogue, args.scale)
    for item in args.model or []:
        name, _, size = item.partition("=")
        spec = model_spec(name, parse_size(size) if size else None, "", catalogue, args.scale)
        store.generate(spec)
    state = RegistryState(store, Throttle(parse_size(args.rate) if args.rate else 0.0))
    state.plain = args.plain
    state.token = args.token
    runner = web.AppRunner(build_app(state), access_log=None, handle_signals=False)
    # Handlers first: whoever waits for the "Listening" line may signal at once.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, reuse_address=True)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []
    host, port = sockets[0].getsockname()[:2] if sockets else (args.host, args.port)
    sys.stderr.write(f"olladist-sim registry: Listening on {host}:{port} (dir {args.dir})\n")
    sys.stderr.flush()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "registry",
        help="serve generated models over the registry API, on loopback (for tests)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__,
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--dir", required=True, help="where generated blobs and manifests live")
    parser.add_argument(
        "--model", action="append", metavar="NAME[=SIZE]", help="generate at start (repeatable)"
    )
    parser.add_argument("--rate", help="bandwidth of all blob bodies together, e.g. 20MB")
    parser.add_argument("--scale", type=int, default=DEFAULT_SCALE, help="catalogue size / N")
    parser.add_argument("--plain", action="store_true", help="serve blobs without a redirect")
    parser.add_argument("--token", help="require this bearer token (401 + challenge without)")
