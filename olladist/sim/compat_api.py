"""The newer compatibility routes Ollama serves: OpenAI's /v1/responses and Anthropic's
/v1/messages. Both stream server-sent events with an ``event:`` name per line pair."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web

from olladist.sim.common import json_response, read_json, state_of
from olladist.sim.errors import ApiError
from olladist.sim.inference import Generation, MidStreamError
from olladist.sim.native import LazyStream, answer_length, leased, new_generation, start_job

SSE = "text/event-stream"


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


class Dialect(Protocol):
    """How one API frames a generation: opening events, each token, the end, or one object."""

    def opening(self) -> list[bytes]: ...
    def piece(self, text: str) -> bytes: ...
    def closing(self, text: str, gen: Generation, reason: str) -> list[bytes]: ...
    def whole(self, text: str, gen: Generation, reason: str) -> dict[str, Any]: ...
    def error(self, message: str) -> bytes: ...


def _text_of(content: object) -> str:
    """Text of a message's content: a string, or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    raise ApiError(400, "invalid message content")


async def _serve(
    request: web.Request,
    body: dict[str, Any],
    prompt: str,
    limit: object,
    make: Callable[[str], Dialect],
) -> web.StreamResponse:
    state = state_of(request)
    raw = body.get("model")
    if not isinstance(raw, str) or not raw:
        raise ApiError(400, "model is required")
    job = await start_job(state, body, raw)
    if "completion" not in state.store.capabilities(job.stored):
        raise ApiError(400, f'"{raw}" does not support chat')
    dialect = make(raw)
    async with leased(state, job):
        tokens, reason = answer_length(state, limit)
        gen = new_generation(state, job, prompt, tokens)
        out = LazyStream(request, SSE)
        pieces: list[str] = []
        try:
            async for piece in gen.tokens():
                pieces.append(piece)
                if body.get("stream"):
                    if out.response is None:
                        for event in dialect.opening():
                            await out.write(event)
                    await out.write(dialect.piece(piece))
        except MidStreamError as exc:
            if out.response is None:
                raise ApiError(500, str(exc)) from exc
            await out.write(dialect.error(str(exc)))
            return out.finish()
        except ConnectionError:
            return out.response or web.Response(status=499)
        text = "".join(pieces)
        if not body.get("stream"):
            return json_response(dialect.whole(text, gen, reason))
        try:
            for event in dialect.closing(text, gen, reason):
                await out.write(event)
        except ConnectionError:
            pass
        return out.finish()


class Responses:
    """OpenAI's Responses API framing."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = "resp_" + secrets.token_hex(12)
        self.item_id = "msg_" + secrets.token_hex(12)
        self.created = int(time.time())
        self.seq = 0

    def _next(self, name: str, data: dict[str, Any]) -> bytes:
        event = _event(name, {"type": name, **data, "sequence_number": self.seq})
        self.seq += 1
        return event

    def _part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": []}

    def _item(self, text: str | None) -> dict[str, Any]:
        done = text is not None
        return {
            "id": self.item_id,
            "type": "message",
            "status": "completed" if done else "in_progress",
            "role": "assistant",
            "content": [self._part(text)] if text is not None else [],
        }

    def _response(self, text: str | None, gen: Generation | None) -> dict[str, Any]:
        usage = None
        if gen is not None:
            usage = {
                "input_tokens": gen.prompt_eval_count,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": gen.eval_count,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": gen.prompt_eval_count + gen.eval_count,
            }
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": "completed" if text is not None else "in_progress",
            "model": self.model,
            "output": [self._item(text)] if text is not None else [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "error": None,
            "incomplete_details": None,
            "usage": usage,
        }

    def opening(self) -> list[bytes]:
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return [
            self._next("response.created", {"response": self._response(None, None)}),
            self._next("response.in_progress", {"response": self._response(None, None)}),
            self._next("response.output_item.added", {"output_index": 0, "item": self._item(None)}),
            self._next("response.content_part.added", {**where, "part": self._part("")}),
        ]

    def piece(self, text: str) -> bytes:
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return self._next("response.output_text.delta", {**where, "delta": text, "logprobs": []})

    def closing(self, text: str, gen: Generation, reason: str) -> list[bytes]:
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return [
            self._next("response.output_text.done", {**where, "text": text, "logprobs": []}),
            self._next("response.content_part.done", {**where, "part": self._part(text)}),
            self._next("response.output_item.done", {"output_index": 0, "item": self._item(text)}),
            self._next("response.completed", {"response": self._response(text, gen)}),
        ]

    def whole(self, text: str, gen: Generation, reason: str) -> dict[str, Any]:
        return self._response(text, gen)

    def error(self, message: str) -> bytes:
        return self._next("error", {"code": None, "message": message, "param": None})


class Messages:
    """Anthropic's Messages API framing."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = "msg_" + secrets.token_hex(12)

    def _message(self, text: str | None, stop: str | None, usage: dict[str, int]) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": text}] if text is not None else [],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }

    def opening(self) -> list[bytes]:
        start = self._message(None, None, {"input_tokens": 0, "output_tokens": 0})
        block = {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        }
        return [
            _event("message_start", {"type": "message_start", "message": start}),
            _event("content_block_start", block),
        ]

    def piece(self, text: str) -> bytes:
        delta = {"type": "text_delta", "text": text}
        return _event(
            "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
        )

    def closing(self, text: str, gen: Generation, reason: str) -> list[bytes]:
        delta = {"stop_reason": _stop_reason(reason), "stop_sequence": None}
        usage = {"input_tokens": gen.prompt_eval_count, "output_tokens": gen.eval_count}
        return [
            _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}),
            _event("message_stop", {"type": "message_stop"}),
        ]

    def whole(self, text: str, gen: Generation, reason: str) -> dict[str, Any]:
        usage = {"input_tokens": gen.prompt_eval_count, "output_tokens": gen.eval_count}
        return self._message(text, _stop_reason(reason), usage)

    def error(self, message: str) -> bytes:
        return _event("error", anthropic_error(500, message))


def _stop_reason(reason: str) -> str:
    return "max_tokens" if reason == "length" else "end_turn"


async def responses(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, "openai.ResponsesRequest")
    given = body.get("input")
    if isinstance(given, str):
        prompt = given
    elif isinstance(given, list):
        prompt = "\n".join(
            _text_of(item.get("content")) for item in given if isinstance(item, dict)
        )
    else:
        raise ApiError(400, "input is required")
    if isinstance(body.get("instructions"), str):
        prompt = body["instructions"] + "\n" + prompt
    return await _serve(request, body, prompt, body.get("max_output_tokens"), Responses)


async def messages(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, "anthropic.MessagesRequest")
    given = body.get("messages")
    if not isinstance(given, list) or not given:
        raise ApiError(400, "messages is required")
    parts = [_text_of(m.get("content")) for m in given if isinstance(m, dict)]
    system = body.get("system")
    if system is not None:
        parts.insert(0, _text_of(system))
    return await _serve(request, body, "\n".join(parts), body.get("max_tokens"), Messages)
