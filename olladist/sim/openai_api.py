"""Ollama's OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/embeddings,
/v1/models and /v1/models/{model}. Streams are server-sent events ending ``data: [DONE]``."""

from __future__ import annotations

import json
import random
import time
from typing import Any

from aiohttp import web

from olladist.sim.common import (
    find_model,
    json_response,
    read_json,
    state_of,
)
from olladist.sim.errors import ApiError
from olladist.sim.inference import MidStreamError, embedding_base64
from olladist.sim.native import (
    LazyStream,
    answer_length,
    compute_embeddings,
    embed_inputs,
    leased,
    messages_prompt,
    new_generation,
    start_job,
)
from olladist.sim.store import StoredModel

SSE = "text/event-stream"
FINGERPRINT = "fp_ollama"


def error_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error shape, with the types Ollama's middleware picks per status."""
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _model(body: dict[str, Any]) -> str:
    raw = body.get("model")
    if not isinstance(raw, str) or not raw:
        raise ApiError(400, "model is required")
    return raw


def _limit(body: dict[str, Any]) -> object:
    return body.get("max_completion_tokens", body.get("max_tokens"))


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _run(
    request: web.Request, body: dict[str, Any], prompt: str, chat: bool
) -> web.StreamResponse:
    state = state_of(request)
    raw = _model(body)
    job = await start_job(state, body, raw)
    if "completion" not in state.store.capabilities(job.stored):
        raise ApiError(400, f'"{raw}" does not support {"chat" if chat else "generate"}')
    stream = bool(body.get("stream"))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{random.randint(0, 999)}"
    created = int(time.time())
    obj = "chat.completion" if chat else "text_completion"
    head = {
        "id": ident,
        "object": obj + (".chunk" if chat and stream else ""),
        "created": created,
        "model": raw,
        "system_fingerprint": FINGERPRINT,
    }

    def choice(text: str, finish: str | None) -> dict[str, Any]:
        if not chat:
            return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        key = "delta" if stream else "message"
        return {"index": 0, key: {"role": "assistant", "content": text}, "finish_reason": finish}

    async with leased(state, job):
        tokens, reason = answer_length(state, _limit(body))
        gen = new_generation(state, job, prompt, tokens)
        out = LazyStream(request, SSE)
        pieces: list[str] = []
        try:
            async for piece in gen.tokens():
                if stream:
                    await out.write(_sse({**head, "choices": [choice(piece, None)]}))
                else:
                    pieces.append(piece)
        except MidStreamError as exc:
            if out.response is None:
                raise ApiError(500, str(exc)) from exc
            await out.write(_sse(error_body(500, str(exc))))
            return out.finish()
        except ConnectionError:
            return out.response or web.Response(status=499)
        usage = _usage(gen.prompt_eval_count, gen.eval_count)
        if not stream:
            return json_response(
                {**head, "choices": [choice("".join(pieces), reason)], "usage": usage}
            )
        try:
            await out.write(_sse({**head, "choices": [choice("", reason)]}))
            if include_usage:
                await out.write(_sse({**head, "choices": [], "usage": usage}))
            await out.write(b"data: [DONE]\n\n")
        except ConnectionError:
            pass
        return out.finish()


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, "openai.ChatCompletionRequest")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "[] is too short - 'messages'")
    return await _run(request, body, messages_prompt(messages), chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, "openai.CompletionRequest")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string")
    return await _run(request, body, prompt, chat=False)


async def embeddings(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json(request, "openai.EmbedRequest")
    raw = _model(body)
    if body.get("input") in (None, "", []):
        raise ApiError(400, "invalid input")
    inputs = embed_inputs(body.get("input"))
    job = await start_job(state, body, raw)
    async with leased(state, job):
        vectors, tokens = await compute_embeddings(state, job, inputs, body)
    as_base64 = body.get("encoding_format") == "base64"
    data = [
        {
            "object": "embedding",
            "embedding": embedding_base64(vec) if as_base64 else vec,
            "index": index,
        }
        for index, vec in enumerate(vectors)
    ]
    return json_response(
        {
            "object": "list",
            "data": data,
            "model": raw,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def _model_object(stored: StoredModel, shown_as: str | None = None) -> dict[str, Any]:
    return {
        "id": shown_as or stored.name.short,
        "object": "model",
        "created": int(stored.modified_at),
        "owned_by": stored.name.namespace,
    }


async def list_models(request: web.Request) -> web.Response:
    models = state_of(request).store.list_models()
    return json_response({"object": "list", "data": [_model_object(m) for m in models]})


async def retrieve_model(request: web.Request) -> web.Response:
    raw = request.match_info["model"]
    stored = find_model(state_of(request), raw)
    return json_response(_model_object(stored, raw))
