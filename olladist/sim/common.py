"""Shared state and helpers for the simulator's HTTP handlers."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from olladist.names import InvalidModelName, ModelName, parse_model_name
from olladist.sim.catalogue import MEDIA_MODEL, Catalogue
from olladist.sim.config import SimConfig, keep_alive_from_json
from olladist.sim.errors import ApiError, ModelNotFound, SimConfigError
from olladist.sim.faults import Faults
from olladist.sim.inference import crash
from olladist.sim.pull import Puller
from olladist.sim.scheduler import UNSET, KeepAlive, ModelRef, RunnerOptions, Scheduler
from olladist.sim.stats import SimStats
from olladist.sim.store import ModelStore, StoredModel

NDJSON = "application/x-ndjson"


@dataclass
class SimState:
    config: SimConfig
    store: ModelStore
    catalogue: Catalogue
    scheduler: Scheduler
    stats: SimStats
    faults: Faults
    puller: Puller  # /api/pull over HTTP, when the name's registry is a loopback one
    # Set on SIGTERM so that requests held by the hang faults end with the server.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Ollama refuses foreign Host headers when it listens on loopback (see sim.hosts).
    check_host: bool = False

    def model_ref(self, stored: StoredModel) -> ModelRef:
        meta = self.store.sim_metadata(stored)
        info = meta.get("model_info", {})
        family = stored.config.get("model_family", "")
        context = info.get(f"{family}.context_length", 4096) if isinstance(info, dict) else 4096
        return ModelRef(
            name=stored.name.short,
            digest=stored.digest,
            size=stored.size,
            details=stored.details(),
            context_length=int(context),
            key=stored.layer_digest(MEDIA_MODEL) or stored.digest,
            completion="completion" in self.store.capabilities(stored),
        )

    def runner_options(self, stored: StoredModel, body: dict[str, Any]) -> RunnerOptions:
        """The load-time options in force: the request's over the model's parameters over the
        defaults (num_ctx from OLLAMA_CONTEXT_LENGTH), as Ollama's modelOptions merges them."""
        merged = {**self.store.params(stored), **options(body)}

        def number(key: str, default: int) -> int:
            value = merged.get(key, default)
            if isinstance(value, list):  # a parameter given several times: the last counts
                value = value[-1] if value else default
            try:
                return int(value)
            except (TypeError, ValueError):
                raise ApiError(400, f"option {key!r} must be a number") from None

        use_mmap = merged.get("use_mmap")
        return RunnerOptions(
            num_ctx=number("num_ctx", self.config.context_length),
            num_batch=number("num_batch", 512),
            num_gpu=number("num_gpu", -1),
            main_gpu=number("main_gpu", 0),
            use_mmap=use_mmap if isinstance(use_mmap, bool) else None,
            num_thread=number("num_thread", 0),
        )

    def embedding_length(self, stored: StoredModel) -> int:
        info = self.store.sim_metadata(stored).get("model_info", {})
        family = stored.config.get("model_family", "")
        value = info.get(f"{family}.embedding_length", 768) if isinstance(info, dict) else 768
        return int(value)


STATE = web.AppKey("olladist_sim_state", SimState)


def state_of(request: web.Request) -> SimState:
    return request.app[STATE]


async def read_json(request: web.Request, go_type: str) -> dict[str, Any]:
    """The body as a JSON object, with Ollama's 400s for a missing or malformed body."""
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "missing request body")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(exc.doc.rstrip()):
            raise ApiError(400, "unexpected EOF") from exc
        char = exc.doc[exc.pos]
        raise ApiError(400, f"invalid character {char!r} looking for beginning of value") from exc
    if not isinstance(data, dict):
        kind = {list: "array", str: "string", bool: "bool"}.get(type(data), "number")
        raise ApiError(400, f"json: cannot unmarshal {kind} into Go value of type {go_type}")
    return data


def model_field(body: dict[str, Any], *, alias: bool = False) -> str:
    """The request's model name (``name`` is the old alias in show/pull/delete)."""
    value = body.get("model") or (body.get("name") if alias else None) or ""
    if not isinstance(value, str):
        raise ApiError(400, "model must be a string")
    return value


def parse_name(raw: str) -> ModelName | None:
    try:
        return parse_model_name(raw)
    except InvalidModelName:
        return None


def find_model(state: SimState, raw: str, not_found: str | None = None) -> StoredModel:
    """Look the model up on disk now; 404 in Ollama's words if it is not there."""
    message = not_found if not_found is not None else f"model '{raw}' not found"
    name = parse_name(raw)
    stored = state.store.get(name) if name is not None else None
    if stored is None:
        raise ModelNotFound(message)
    return stored


def keep_alive(state: SimState, body: dict[str, Any]) -> KeepAlive:
    """The request's keep_alive; UNSET if it names none (the runner's own then stays)."""
    if body.get("keep_alive") is None:
        return UNSET
    try:
        return keep_alive_from_json(body["keep_alive"])
    except SimConfigError as exc:
        raise ApiError(400, f"time: {exc}") from exc


def options(body: dict[str, Any]) -> dict[str, Any]:
    opts = body.get("options")
    return opts if isinstance(opts, dict) else {}


def want_stream(body: dict[str, Any]) -> bool:
    return body.get("stream") is not False


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def line(data: Any) -> bytes:
    return (_dumps(data) + "\n").encode()


async def start_stream(request: web.Request, content_type: str = NDJSON) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"Content-Type": content_type})
    await response.prepare(request)
    return response


async def inference_faults(state: SimState, model: str | None) -> Faults:
    """Apply hang and crash for an inference request; return the faults in force."""
    faults = state.faults.for_model(model)
    if faults.crash:
        crash("crash")
    if faults.hang:
        await hang_forever(state)
    return faults


async def hang_forever(state: SimState) -> None:
    """Accept and never answer; ends (with a 503) only when the server shuts down."""
    await state.stopping.wait()
    raise ApiError(503, "olladist-sim is shutting down")
