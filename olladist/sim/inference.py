"""What a loaded model "computes": deterministic text and vectors, paced in real time.

Text and embeddings are pure functions of (model, input), so tests and benchmarks can compare
answers across instances. Timing is real: prompt evaluation and each token take wall-clock time
at the configured rates, and the durations reported are measured, never computed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import os
import random
import struct
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

_WORDS = (
    "the",
    "model",
    "answers",
    "with",
    "simulated",
    "tokens",
    "that",
    "stand",
    "in",
    "for",
    "real",
    "text",
    "while",
    "the",
    "cluster",
    "routes",
    "requests",
    "across",
    "instances",
    "so",
    "operators",
    "can",
    "measure",
    "queues",
    "loads",
    "and",
    "latency",
    "without",
    "any",
    "gpu",
    "in",
    "sight",
    "every",
    "word",
    "here",
    "is",
    "chosen",
    "by",
    "a",
    "hash",
    "of",
    "the",
    "prompt",
)

# Pacing below this many seconds is not worth a timer: the token goes out at once.
_MIN_SLEEP = 0.0005


def now_rfc3339() -> str:
    """UTC time as Go's time.Time marshals it (RFC 3339 with nanoseconds, 'Z')."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def _rng(*parts: str) -> random.Random:
    seed = hashlib.sha256("\x00".join(parts).encode()).digest()
    return random.Random(int.from_bytes(seed[:8], "big"))


def count_tokens(text: str) -> int:
    """A rough tokenizer: about four characters a token, at least one."""
    return max(1, (len(text) + 3) // 4)


def token_ids(text: str) -> list[int]:
    """Deterministic ids for ``context``: one per word, within a 128k vocabulary."""
    return [
        int.from_bytes(hashlib.blake2b(w.encode(), digest_size=4).digest(), "big") % 128000
        for w in text.split()
    ]


def answer_pieces(model: str, prompt: str, count: int) -> list[str]:
    """The answer's tokens: the first capitalised, each later one with a leading space."""
    rng = _rng(model, prompt)
    words = [rng.choice(_WORDS) for _ in range(count)]
    pieces = [words[0].capitalize()] + [" " + w for w in words[1:]]
    pieces[-1] += "."
    return pieces


def embedding(model: str, text: str, dims: int) -> list[float]:
    """A unit vector from a hash of model and text (same input, same vector, everywhere)."""
    rng = _rng("embed", model, text)
    vec = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def embedding_base64(vector: list[float]) -> str:
    """OpenAI's ``encoding_format: base64``: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


@dataclass(frozen=True)
class Pace:
    prompt_rate: float  # prompt tokens per second
    token_rate: float  # generated tokens per second
    slow: float = 1.0  # fault factor


CRASH_EXIT_STATUS = 70


def crash(fault: str) -> NoReturn:
    """Exit at once, as a crashed server would: no cleanup, connections simply drop."""
    sys.stderr.write(f"olladist-sim: fault {fault}: exiting\n")
    sys.stderr.flush()
    os._exit(CRASH_EXIT_STATUS)


class MidStreamError(Exception):
    """The error_mid_stream fault fired after some tokens."""


MID_STREAM_MESSAGE = (
    "an error was encountered while running the model: unexpected EOF "
    "(olladist-sim fault error_mid_stream)"
)


class Generation:
    """One request's run on a loaded model; its metrics are measured as it goes."""

    def __init__(
        self,
        *,
        model: str,
        prompt: str,
        max_tokens: int,
        pace: Pace,
        started_ns: int,
        loaded_ns: int,
        error_after: int | None = None,
        crash_after: int | None = None,
    ) -> None:
        self.model = model
        self.prompt = prompt
        self.pieces = answer_pieces(model, prompt, max_tokens)
        self.pace = pace
        self.started_ns = started_ns
        self.loaded_ns = loaded_ns
        self.error_after = error_after
        self.crash_after = crash_after
        self.prompt_eval_count = count_tokens(prompt)
        self.prompt_eval_ns = 0
        self.eval_ns = 0
        self.eval_count = 0
        self.done_reason = "stop"

    async def evaluate_prompt(self) -> None:
        begin = time.monotonic_ns()
        await asyncio.sleep(self.prompt_eval_count / self.pace.prompt_rate * self.pace.slow)
        self.prompt_eval_ns = time.monotonic_ns() - begin

    async def tokens(self) -> AsyncIterator[str]:
        """Yield the answer's tokens on schedule; raise MidStreamError if the fault says so."""
        await self.evaluate_prompt()
        begin = time.monotonic()
        begin_ns = time.monotonic_ns()
        interval = self.pace.slow / self.pace.token_rate
        for index, piece in enumerate(self.pieces):
            if self.crash_after is not None and index >= self.crash_after:
                crash("crash_mid_stream")
            if self.error_after is not None and index >= self.error_after:
                self.eval_ns = time.monotonic_ns() - begin_ns
                raise MidStreamError(MID_STREAM_MESSAGE)
            delay = begin + (index + 1) * interval - time.monotonic()
            if delay > _MIN_SLEEP:
                await asyncio.sleep(delay)
            self.eval_count += 1
            yield piece
        self.eval_ns = time.monotonic_ns() - begin_ns

    def metrics(self) -> dict[str, Any]:
        """The final chunk's timing fields (nanoseconds), as Ollama names them."""
        return {
            "total_duration": time.monotonic_ns() - self.started_ns,
            "load_duration": self.loaded_ns - self.started_ns,
            "prompt_eval_count": self.prompt_eval_count,
            "prompt_eval_duration": self.prompt_eval_ns,
            "eval_count": self.eval_count,
            "eval_duration": self.eval_ns,
        }

    def context(self) -> list[int]:
        return token_ids(self.prompt + " " + "".join(self.pieces))
