"""A tiny Ollama-shaped HTTP server for gateway tests.

It answers every request with which instance served it, so tests can see where HAProxy routed
a request, and streams NDJSON with a delay between lines, so tests can see whether lines arrive
one by one. Run as a separate process (`python -m tests.gateway.fake_ollama`) so a test can kill
it by PID to simulate a dead instance.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from aiohttp import web


def make_app(name: str, line_delay: float) -> web.Application:
    async def version(_: web.Request) -> web.Response:
        return web.json_response({"version": "0.0.0-fake", "instance": name})

    async def root(_: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def ps(_: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": f"{name}-loaded:latest"}]})

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
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--line-delay", type=float, default=0.05)
    args = parser.parse_args()
    web.run_app(
        make_app(args.name, args.line_delay),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()
