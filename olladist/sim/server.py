"""The simulator's HTTP server: routes, the error/logging middleware, admin routes, run loop."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiohttp import web

from olladist.sim import compat_api, models_api, native, openai_api
from olladist.sim.catalogue import load_catalogue
from olladist.sim.common import STATE, SimState, hang_forever, json_response, read_json, state_of
from olladist.sim.config import SimConfig
from olladist.sim.errors import ApiError, SimConfigError
from olladist.sim.faults import faults_from_mapping
from olladist.sim.hosts import host_allowed
from olladist.sim.pull import Puller
from olladist.sim.scheduler import Scheduler
from olladist.sim.stats import SimStats
from olladist.sim.store import ModelStore

ADMIN_PREFIX = "/_sim/"
# Large enough for chat requests carrying base64 images.
MAX_BODY = 256 * 1024 * 1024
# In-flight requests get this long to finish after SIGTERM before they are cut.
SHUTDOWN_GRACE = 3.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _log(state: SimState, request: web.Request, status: int, began: float) -> None:
    if state.config.quiet:
        return
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    ms = (time.perf_counter() - began) * 1000
    sys.stderr.write(
        f"{stamp} | {status:3d} | {ms:10.3f}ms | {request.remote} | "
        f'{request.method:<7} "{request.path}"\n'
    )


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and log each request; turn errors into the bodies Ollama (or OpenAI) sends."""
    state = state_of(request)
    began = time.perf_counter()
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    state.stats.request_started(name)
    status = 500
    try:
        # The raw header: aiohttp's request.host invents one when it is missing, Ollama does not.
        if state.check_host and not host_allowed(request.headers.get("Host", "")):
            status = 403
            return web.Response(status=403)
        if state.faults.hang_all and not request.path.startswith(ADMIN_PREFIX):
            await hang_forever(state)
        response = await handler(request)
        status = response.status
        return response
    except ApiError as exc:
        status = exc.status
        if request.path == "/v1/messages":
            return json_response(compat_api.anthropic_error(exc.status, exc.message), exc.status)
        if request.path.startswith("/v1/"):
            return json_response(openai_api.error_body(exc.status, exc.message), exc.status)
        return json_response({"error": exc.message}, exc.status)
    except web.HTTPNotFound:
        status = 404
        return web.Response(status=404, text="404 page not found")
    except web.HTTPMethodNotAllowed:
        status = 405
        return web.Response(status=405, text="405 method not allowed")
    finally:
        state.stats.request_finished(status, name)
        _log(state, request, status, began)


async def get_stats(request: web.Request) -> web.Response:
    state = state_of(request)
    body = state.stats.to_dict()
    body["loaded"] = [r.model.name for r in state.scheduler.loaded()]
    body["queued"] = state.scheduler.queued
    body["pending"] = state.scheduler.pending
    return json_response(body)


async def reset_stats(request: web.Request) -> web.Response:
    state_of(request).stats.reset()
    return json_response({"status": "reset"})


async def get_faults(request: web.Request) -> web.Response:
    return json_response(state_of(request).faults.to_dict())


async def set_faults(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json(request, "faults")
    try:
        state.faults = faults_from_mapping(body)
    except SimConfigError as exc:
        raise ApiError(400, exc.message) from exc
    return json_response(state.faults.to_dict())


async def clear_faults(request: web.Request) -> web.Response:
    state = state_of(request)
    state.faults = faults_from_mapping({})
    return json_response(state.faults.to_dict())


def build_state(config: SimConfig) -> SimState:
    stats = SimStats()
    store = ModelStore(config.models_dir)
    store.ensure()
    if not config.no_prune:
        store.prune_at_start()
    return SimState(
        config=config,
        store=store,
        catalogue=load_catalogue(config.catalogue_file),
        scheduler=Scheduler(
            num_parallel=config.num_parallel,
            max_loaded=config.max_loaded_models,
            max_queue=config.max_queue,
            load_speed_gbps=config.load_speed_gbps,
            stats=stats,
            vram_bytes=int(config.vram_gb * 1e9) if config.vram_gb else None,
            default_keep_alive=config.keep_alive,
            cpu_only=config.gpus == 0,
        ),
        stats=stats,
        faults=config.faults,
        puller=Puller(store, config.version),
    )


def build_app(state: SimState) -> web.Application:
    app = web.Application(middlewares=[middleware], client_max_size=MAX_BODY)
    app[STATE] = state
    r = app.router
    r.add_get("/", native.root)  # add_get also answers HEAD
    r.add_get("/api/version", native.version)
    r.add_get("/api/tags", native.tags)
    r.add_post("/api/show", native.show)
    r.add_get("/api/ps", native.ps)
    r.add_post("/api/generate", native.generate)
    r.add_post("/api/chat", native.chat)
    r.add_post("/api/embed", native.embed)
    r.add_post("/api/embeddings", native.embeddings)
    r.add_post("/api/pull", models_api.pull)
    r.add_post("/api/push", models_api.push)
    r.add_post("/api/create", models_api.create)
    r.add_post("/api/copy", models_api.copy)
    r.add_delete("/api/delete", models_api.delete)
    r.add_head("/api/blobs/{digest}", models_api.head_blob)
    r.add_post("/api/blobs/{digest}", models_api.create_blob)
    r.add_post("/v1/chat/completions", openai_api.chat_completions)
    r.add_post("/v1/completions", openai_api.completions)
    r.add_post("/v1/embeddings", openai_api.embeddings)
    r.add_post("/v1/responses", compat_api.responses)
    r.add_post("/v1/messages", compat_api.messages)
    r.add_get("/v1/models", openai_api.list_models)
    r.add_get("/v1/models/{model}", openai_api.retrieve_model)
    r.add_get(ADMIN_PREFIX + "stats", get_stats)
    r.add_delete(ADMIN_PREFIX + "stats", reset_stats)
    r.add_get(ADMIN_PREFIX + "faults", get_faults)
    r.add_post(ADMIN_PREFIX + "faults", set_faults)
    r.add_delete(ADMIN_PREFIX + "faults", clear_faults)
    return app


async def serve(config: SimConfig, ready: Callable[[str, int], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting and let requests finish briefly."""
    state = build_state(config)
    app = build_app(state)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    # Handlers first: whoever waits for the "Listening" line may signal at once.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await runner.setup()
    site = web.TCPSite(
        runner,
        config.host,
        config.port,
        backlog=4096,
        reuse_address=True,
        shutdown_timeout=SHUTDOWN_GRACE,
    )
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    host, port = config.host, config.port
    if sockets:
        host, port = sockets[0].getsockname()[:2]
        state.check_host = ipaddress.ip_address(host).is_loopback
    sys.stderr.write(f"olladist-sim: Listening on {host}:{port} (version {config.version})\n")
    sys.stderr.flush()
    if ready is not None:
        ready(host, port)
    try:
        await stop.wait()
    finally:
        sys.stderr.write("olladist-sim: shutting down\n")
        state.stopping.set()
        await state.scheduler.close()
        await runner.cleanup()
        await state.puller.close()
