"""Ollama's model-store routes: pull, push, create, copy, delete and blobs."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from aiohttp import web

from olladist.names import DEFAULT_REGISTRY, ModelName
from olladist.sim.catalogue import (
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    Layer,
    build_artifacts,
    canonical_json,
)
from olladist.sim.common import (
    SimState,
    find_model,
    json_response,
    line,
    model_field,
    parse_name,
    read_json,
    start_stream,
    state_of,
    want_stream,
)
from olladist.sim.errors import ApiError
from olladist.sim.pull import DigestMismatch, PullError, registry_base
from olladist.sim.store import StoredModel, digest_hex

Progress = AsyncGenerator[dict[str, Any], None]

# Progress lines during a simulated download go out at this interval (Ollama: 60 ms).
_PROGRESS_INTERVAL = 0.06


class StreamFailure(Exception):
    """An error reported as a {"error": ...} line (or a 500 when nothing was sent yet)."""


async def send_progress(
    request: web.Request, body: dict[str, Any], events: Progress
) -> web.StreamResponse:
    """Stream progress as NDJSON, or with ``stream: false`` answer only the last status."""
    if not want_stream(body):
        last: dict[str, Any] = {}
        try:
            async for event in events:
                last = event
        except StreamFailure as exc:
            return json_response({"error": str(exc)}, status=500)
        return json_response(last)
    response: web.StreamResponse | None = None
    try:
        async for event in events:
            if response is None:
                response = await start_stream(request)
            await response.write(line(event))
    except StreamFailure as exc:
        if response is None:
            return json_response({"error": str(exc)}, status=500)
        await response.write(line({"error": str(exc)}))
    except ConnectionError:
        pass  # the client went away
    finally:
        # Close the generator now, not when it is collected: a pull that nobody waits for
        # must let go of its transfer at once (which keeps its parts for a later pull).
        await events.aclose()
    return response if response is not None else web.Response(status=200)


async def pull(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    body = await read_json(request, "api.PullRequest")
    raw = model_field(body, alias=True)
    name = parse_name(raw)
    if name is None:
        raise ApiError(400, "invalid model name")
    state.stats.pulls[name.short] += 1
    return await send_progress(request, body, _pull_events(state, name, bool(body.get("insecure"))))


async def _pull_events(state: SimState, name: ModelName, insecure: bool) -> Progress:
    """PullModel's sequence of lines (server/images.go), from a registry or the catalogue."""
    faults = state.faults.for_model(name.short)
    store = state.store
    previous = store.get(name)
    base = registry_base(state.config.registries, name, insecure)
    yield {"status": "pulling manifest"}
    if faults.refuse_pulls:
        await asyncio.sleep(0.01)
        raise StreamFailure(
            f'pull model manifest: Get "https://{name.host}/v2/{name.namespace}/{name.model}'
            f'/manifests/{name.tag}": dial tcp: lookup {name.host}: no such host'
        )
    if base is None and name.host != DEFAULT_REGISTRY:
        raise StreamFailure(
            f"pull model manifest: olladist-sim pulls only from loopback registries; map "
            f"{name.host} with OLLADIST_SIM_REGISTRY={name.host}=http://127.0.0.1:PORT"
        )
    failures: list[str] = []
    if base is None:
        entry = state.catalogue.lookup(name.short)
        if entry is None:
            raise StreamFailure("pull model manifest: file does not exist")
        artifacts = entry.artifacts()
        manifest_bytes = artifacts.manifest
        async for event in _catalogue_blobs(state, artifacts.blobs, faults.slow, faults.disk_full):
            yield event
    else:
        puller = state.puller
        auth: dict[str, str] = {}
        try:
            manifest_bytes = await puller.manifest(base, name, auth)
            manifest = json.loads(manifest_bytes)
            layers = [*manifest["layers"]]
            if manifest.get("config", {}).get("digest"):
                layers.append(manifest["config"])
            digests = [str(layer["digest"]) for layer in layers]
        except PullError as exc:
            raise StreamFailure(f"pull model manifest: {exc}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise StreamFailure(f"pull model manifest: {exc}") from exc
        for digest in digests:
            try:
                digest_hex(digest)
            except ValueError as exc:
                raise StreamFailure(str(exc)) from exc
            if store.has_blob(digest):
                size = store.blob_path(digest).stat().st_size
                yield {
                    "status": f"pulling {digest[7:19]}",
                    "digest": digest,
                    "total": size,
                    "completed": size,
                }
                continue
            try:
                blob = puller.blob(base, name, digest, auth, faults.disk_full)
                async with contextlib.aclosing(blob) as events:
                    async for event in events:
                        yield event
            except DigestMismatch as exc:
                failures.append(str(exc))  # reported at the verification step, as in Ollama
            except PullError as exc:
                raise StreamFailure(str(exc)) from exc
    yield {"status": "verifying sha256 digest"}
    if failures:
        raise StreamFailure(failures[0])
    yield {"status": "writing manifest"}
    store.write_manifest(name, manifest_bytes)
    new = store.get(name)
    unused = _referenced(previous) - _referenced(new)
    if unused and not state.config.no_prune:
        yield {"status": "removing unused layers"}
        store.delete_unused(unused)
    yield {"status": "success"}


def _referenced(model: StoredModel | None) -> set[str]:
    if model is None:
        return set()
    found = {str(layer["digest"]) for layer in model.manifest.get("layers", [])}
    config = model.manifest.get("config", {}).get("digest")
    return found | ({str(config)} if config else set())


async def _catalogue_blobs(
    state: SimState, blobs: tuple[Layer, ...], slow: float, disk_full: bool
) -> Progress:
    """The catalogue's stand-in for a download: the declared size at OLLADIST_SIM_PULL_GBPS,
    with Ollama's progress rhythm (a line every 60 ms while a blob transfers, none at the end)."""
    store = state.store
    loop = asyncio.get_running_loop()
    for blob in blobs:
        status = f"pulling {blob.digest[7:19]}"
        total = blob.declared_size
        if store.has_blob(blob.digest):
            yield {"status": status, "digest": blob.digest, "total": total, "completed": total}
            continue
        seconds = state.config.pull_seconds(total) * slow
        begin = loop.time()
        while (elapsed := loop.time() - begin) < seconds:
            await asyncio.sleep(min(_PROGRESS_INTERVAL, seconds - elapsed))
            if loop.time() - begin >= seconds:
                break
            done = int(total * (loop.time() - begin) / seconds)
            line: dict[str, Any] = {"status": status, "digest": blob.digest}
            if total:
                line["total"] = total
            if done:
                line["completed"] = done
            yield line
            if disk_full:
                break
        if disk_full:
            raise StreamFailure(
                f"write {store.blob_path(blob.digest)}-partial: no space left on device"
            )
        store.write_blob(blob.data)


async def push(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    body = await read_json(request, "api.PushRequest")
    raw = model_field(body, alias=True)
    if not raw:
        raise ApiError(400, "model is required")

    async def events() -> Progress:
        if state.store.get(parse_name(raw) or ModelName(model="-")) is None:
            raise StreamFailure(f"model '{raw}' not found")
        yield {"status": "retrieving manifest"}
        raise StreamFailure("olladist-sim cannot push: the simulator has no registry to push to")

    return await send_progress(request, body, events())


async def delete(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json(request, "api.DeleteRequest")
    raw = model_field(body, alias=True)
    name = parse_name(raw)
    if name is None:
        raise ApiError(400, f'name "{raw}" is invalid')
    if not state.store.delete(name):
        raise ApiError(404, f"model '{raw}' not found")
    return web.Response(status=200)


async def copy(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json(request, "api.CopyRequest")
    source_raw, dest_raw = str(body.get("source") or ""), str(body.get("destination") or "")
    source = parse_name(source_raw)
    if source is None:
        raise ApiError(400, f'source "{source_raw}" is invalid')
    destination = parse_name(dest_raw)
    if destination is None:
        raise ApiError(400, f'destination "{dest_raw}" is invalid')
    if not state.store.copy(source, destination):
        raise ApiError(404, f'model "{source_raw}" not found')
    return web.Response(status=200)


async def create(request: web.Request) -> web.StreamResponse:
    """Create a model from one in the store, replacing its system, template or parameters.

    Building from GGUF files or quantizing needs real weights; the simulator says so plainly.
    """
    state = state_of(request)
    body = await read_json(request, "api.CreateRequest")
    raw = model_field(body, alias=True)
    name = parse_name(raw)
    if name is None:
        raise ApiError(400, "invalid model name")
    if body.get("files") or body.get("adapters"):
        raise ApiError(400, 'olladist-sim cannot create models from files; use "from"')
    if body.get("quantize"):
        raise ApiError(400, "olladist-sim cannot quantize models")
    source_raw = body.get("from")
    if not isinstance(source_raw, str) or not source_raw:
        raise ApiError(400, "neither 'from' or 'files' was specified")
    source = find_model(state, source_raw)
    replacements: dict[str, bytes] = {}
    for key, media in (("system", MEDIA_SYSTEM), ("template", MEDIA_TEMPLATE)):
        if isinstance(body.get(key), str):
            replacements[media] = str(body[key]).encode()
    if isinstance(body.get("parameters"), dict):
        merged = {**state.store.params(source), **body["parameters"]}
        replacements[MEDIA_PARAMS] = canonical_json(merged)
    store = state.store

    async def events() -> Progress:
        layers: list[Layer] = []
        model_layer: Layer | None = None
        for entry in source.manifest.get("layers", []):
            media, digest = str(entry["mediaType"]), str(entry["digest"])
            if media in replacements:
                continue
            try:
                data = store.read_blob(digest)
            except OSError as exc:
                raise StreamFailure(f"layer {digest} is missing: {exc}") from exc
            yield {"status": f"using existing layer {digest}"}
            layer = Layer(media, data, int(entry.get("size", len(data))))
            if media == MEDIA_MODEL and model_layer is None:
                model_layer = layer
            else:
                layers.append(layer)
        for media, data in replacements.items():
            digest = store.write_blob(data)
            yield {"status": f"creating new layer {digest}"}
            layers.append(Layer(media, data, len(data)))
        if model_layer is None:
            raise StreamFailure(f"model '{source_raw}' has no weights layer")
        fields: dict[str, Any] = {
            k: source.config[k]
            for k in ("model_format", "model_family", "model_families", "model_type", "file_type")
            if k in source.config
        }
        artifacts = build_artifacts(model_layer, layers, fields, total_size=source.size)
        store.write_blob(artifacts.config.data)
        yield {"status": "writing manifest"}
        store.write_manifest(name, artifacts.manifest)
        yield {"status": "success"}

    return await send_progress(request, body, events())


def _blob_digest(request: web.Request) -> str:
    digest = request.match_info["digest"]
    try:
        digest_hex(digest)
    except ValueError as exc:
        raise ApiError(400, "invalid digest format") from exc
    return digest


async def head_blob(request: web.Request) -> web.Response:
    digest = _blob_digest(request)
    if not state_of(request).store.has_blob(digest):
        raise ApiError(404, f'blob "{digest}" not found')
    return web.Response(status=200)


async def create_blob(request: web.Request) -> web.Response:
    state = state_of(request)
    digest = _blob_digest(request)
    store = state.store
    if store.has_blob(digest):
        return web.Response(status=200)
    fd, tmp = store.blob_tempfile()
    hasher = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as handle:
            async for chunk in request.content.iter_chunked(1 << 20):
                hasher.update(chunk)
                handle.write(chunk)
        got = "sha256:" + hasher.hexdigest()
        if got != digest.replace("-", ":", 1):
            raise ApiError(400, f'digest mismatch, expected "{digest}", got "{got}"')
        store.adopt_blob(tmp, got)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return web.Response(status=201)
