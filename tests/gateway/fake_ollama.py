"""A tiny Ollama-shaped HTTP server for gateway tests.

It answers every request with which instance served it, so tests can see where HAProxy routed
a request, and streams NDJSON with a delay between lines, so tests can see whether lines arrive
one by one. Run as a separate process (`python -m tests.gateway.fake_ollama`) so a test can kill
it by PID to simulate a dead instance.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from typing import Any

from aiohttp import web


def tag_entry(model: str) -> dict[str, Any]:
    """An /api/tags entry whose fields are distinct per model, so tests can see that the
    gateway passes the holder's own entry on."""
    digest = hashlib.sha256(model.encode()).hexdigest()
    return {
        "name": model,
        "model": model,
        "modified_at": "2026-11-30T10:00:00.123456789+01:00",
        "size": 1000 + len(model),
        "digest": digest,
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": "fake",
            "families": ["fake"],
            "parameter_size": f"{len(model)}B",
            "quantization_level": "Q4_0",
        },
    }


def make_app(name: str, line_delay: float, models: list[str]) -> web.Application:
    store = {"models": list(models)}

    async def tags(_: web.Request) -> web.Response:
        return web.json_response({"models": [tag_entry(m) for m in store["models"]]})

    async def set_tags(request: web.Request) -> web.Response:
        # Test control: what this instance's model store holds from now on (a pull, a delete).
        store["models"] = list(await request.json())
        return web.json_response({"models": store["models"]})

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"version": "0.0.0-fake", "instance": name})

    async def root(_: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    loaded = {"models": [f"{name}-loaded:latest"]}

    async def ps(_: web.Request) -> web.Response:
        entries = [
            {"name": m, "model": m, "size": 2000, "size_vram": 1234} for m in loaded["models"]
        ]
        return web.json_response({"models": entries})

    async def set_ps(request: web.Request) -> web.Response:
        # Test control: which models this instance reports as loaded from now on.
        loaded["models"] = list(await request.json())
        return web.json_response(loaded)

    async def answer(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body: dict[str, Any] = {}
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                body = parsed
        info = {
            "instance": name,
            "path": request.path,
            "method": request.method,
            "model": body.get("model", body.get("name")),
            "body_len": len(raw),
            "peer_header": request.headers.get("X-Olladist-Peer"),
            "host": request.headers.get("Host"),
        }
        lines = int(body.get("lines", 5))
        if body.get("stream") is True:
            resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await resp.prepare(request)
            for i in range(lines):
                chunk = dict(info, i=i, done=i == lines - 1)
                await resp.write(json.dumps(chunk).encode() + b"\n")
                await asyncio.sleep(float(body.get("delay", line_delay)))
            await resp.write_eof()
            return resp
        return web.json_response(info)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/", root)
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/ps", ps)
    app.router.add_get("/api/tags", tags)
    app.router.add_post("/fake/tags", set_tags)
    app.router.add_post("/fake/ps", set_ps)
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--line-delay", type=float, default=0.05)
    parser.add_argument("--models", default="", help="comma-separated names in the store")
    args = parser.parse_args()
    web.run_app(
        make_app(args.name, args.line_delay, [m for m in args.models.split(",") if m]),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()
