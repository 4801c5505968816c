"""A fast fake Ollama for the benchmarks: Ollama's `/api/generate` and `/api/chat`, and OpenAI's
`/v1/chat/completions` (so that LiteLLM's proxy can sit in front of it), each with or without
streaming. Streams send their first line at once, then one line every ``--delay`` seconds.
`/api/tags` and `/api/ps` list ``--models`` as present and loaded: the gateway's live view
routes a model only to an instance whose store holds it.

    python bench/fake_backend.py --port 11500 [--lines 4] [--delay 0.02] [--models m,qwen2.5:0.5b]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from typing import Any

from aiohttp import web

# The models bench/headline.py's specs place (canonical names, as /api/tags gives them).
MODELS = ("m:latest", "qwen2.5:0.5b")
_GEN = {"model": "m", "created_at": "2026-01-01T00:00:00Z", "response": "ok", "done": True}


def _chat(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _chunk(model: str, content: str, finish: str | None) -> bytes:
    delta = {"content": content} if finish is None else {}
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _tag(model: str) -> dict[str, Any]:
    return {
        "name": model,
        "model": model,
        "modified_at": "2026-01-01T00:00:00Z",
        "size": 1000,
        "digest": hashlib.sha256(model.encode()).hexdigest(),
        "details": {"format": "gguf", "family": "bench", "parameter_size": "1B"},
    }


def make_app(lines: int, delay: float, models: tuple[str, ...] = MODELS) -> web.Application:
    tags_body = {"models": [_tag(m) for m in models]}
    ps_body = {"models": [{"name": m, "model": m, "size": 1000, "size_vram": 1000} for m in models]}

    async def root(_: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def tags(_: web.Request) -> web.Response:
        return web.json_response(tags_body)

    async def ps(_: web.Request) -> web.Response:
        return web.json_response(ps_body)

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"version": "0.0.0-bench"})

    async def ollama(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("stream") is False or not body.get("stream", True):
            return web.json_response(_GEN)
        n = int(body.get("lines", lines))
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for i in range(n):
            if i:
                await asyncio.sleep(float(body.get("delay", delay)))
            line = {"model": "m", "response": "x", "done": i == n - 1}
            await resp.write(json.dumps(line).encode() + b"\n")
        await resp.write_eof()
        return resp

    async def openai(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = str(body.get("model", "m"))
        if not body.get("stream"):
            return web.json_response(_chat(model))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(lines):
            if i:
                await asyncio.sleep(delay)
            await resp.write(_chunk(model, "x", None))
        await resp.write(_chunk(model, "", "stop") + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/", root)
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/generate", ollama)
    app.router.add_post("/api/chat", ollama)
    app.router.add_post("/v1/chat/completions", openai)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--lines", type=int, default=4)
    ap.add_argument("--delay", type=float, default=0.02)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated model names")
    args = ap.parse_args()
    web.run_app(
        make_app(args.lines, args.delay, tuple(m for m in args.models.split(",") if m)),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
