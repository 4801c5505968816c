"""Fidelity: the official PyPI clients (ollama, openai) against a real simulator process."""

from __future__ import annotations

from collections.abc import Iterator

import ollama
import openai
import pytest

from .conftest import Sim

pytestmark = pytest.mark.integration

CHAT = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture
def client(sim: Sim) -> Iterator[ollama.Client]:
    with ollama.Client(host=sim.url) as client:
        yield client


def test_ollama_client_end_to_end(client: ollama.Client) -> None:

    progress = list(client.pull("llama3.2:1b", stream=True))
    assert progress[0].status == "pulling manifest"
    assert progress[-1].status == "success"
    # Pulled again, every layer is a cache hit with one line (a fast first pull may have none:
    # Ollama reports a transfer only every 60 ms).
    progress = list(client.pull("llama3.2:1b", stream=True))
    layer = next(p for p in progress if p.digest)
    assert layer.total is not None and layer.total > 1_000_000_000
    assert client.pull("all-minilm", stream=False).status == "success"

    listed = {m.model: m for m in client.list().models}
    assert set(listed) == {"llama3.2:1b", "all-minilm:latest"}
    llama = listed["llama3.2:1b"]
    assert llama.size == 1321098329
    assert llama.details is not None and llama.details.parameter_size == "1.2B"
    assert llama.modified_at is not None

    shown = client.show("llama3.2:1b")
    assert shown.details is not None and shown.details.family == "llama"
    assert shown.modelinfo is not None and shown.modelinfo["llama.context_length"] == 131072
    assert shown.capabilities == ["completion", "tools"]
    assert shown.template and shown.modelfile

    answer = client.generate(model="llama3.2:1b", prompt="hello")
    assert answer.done and answer.done_reason == "stop" and answer.response
    assert answer.eval_count == 16 and answer.context
    assert answer.total_duration is not None and answer.load_duration is not None
    streamed = list(client.generate(model="llama3.2:1b", prompt="hello", stream=True))
    assert "".join(part.response for part in streamed) == answer.response
    assert streamed[-1].done and streamed[-1].eval_duration

    reply = client.chat(model="llama3.2:1b", messages=CHAT)
    assert reply.message.role == "assistant" and reply.message.content
    parts = list(client.chat(model="llama3.2:1b", messages=CHAT, stream=True))
    assert "".join(p.message.content or "" for p in parts) == reply.message.content
    assert parts[-1].done_reason == "stop"

    running = client.ps().models
    assert [m.model for m in running] == ["llama3.2:1b"]
    assert running[0].expires_at is not None and running[0].size_vram == running[0].size

    vectors = client.embed(model="all-minilm", input=["one", "two"])
    assert len(vectors.embeddings) == 2 and len(vectors.embeddings[0]) == 384
    assert client.embeddings(model="all-minilm", prompt="one").embedding == pytest.approx(
        vectors.embeddings[0]
    )

    assert client.copy("llama3.2:1b", "mine/llama:copy").status == "success"
    assert client.show("mine/llama:copy").details == shown.details
    assert client.delete("mine/llama:copy").status == "success"
    assert "mine/llama:copy" not in {m.model for m in client.list().models}


def test_ollama_client_errors(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model="ghost", prompt="x")
    assert info.value.status_code == 404
    assert info.value.error == "model 'ghost' not found"
    with pytest.raises(ollama.ResponseError) as info:
        client.pull("ghost")
    assert "file does not exist" in info.value.error
    with pytest.raises(ollama.ResponseError):
        list(client.pull("ghost", stream=True))


def test_openai_client(sim: Sim) -> None:
    sim.pull("qwen2.5:0.5b")
    sim.pull("nomic-embed-text")
    with openai.OpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0) as client:
        check_openai(client)


def check_openai(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(model="qwen2.5:0.5b", messages=CHAT)  # type: ignore[arg-type]
    assert done.object == "chat.completion"
    assert done.choices[0].message.content and done.choices[0].finish_reason == "stop"
    assert done.usage is not None and done.usage.completion_tokens == 16

    chunks = list(
        client.chat.completions.create(
            model="qwen2.5:0.5b",
            messages=CHAT,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == done.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 16

    limited = client.chat.completions.create(model="qwen2.5:0.5b", messages=CHAT, max_tokens=2)  # type: ignore[arg-type]
    assert limited.choices[0].finish_reason == "length"

    legacy = client.completions.create(model="qwen2.5:0.5b", prompt="Once upon")
    assert legacy.choices[0].text
    streamed = list(
        client.completions.create(model="qwen2.5:0.5b", prompt="Once upon", stream=True)
    )
    assert "".join(c.choices[0].text for c in streamed) == legacy.choices[0].text

    floats = client.embeddings.create(
        model="nomic-embed-text", input=["a", "b"], encoding_format="float"
    )
    default = client.embeddings.create(
        model="nomic-embed-text", input=["a", "b"]
    )  # base64 on the wire
    assert len(floats.data) == 2 and len(floats.data[0].embedding) == 768
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)

    ids = {m.id for m in client.models.list()}
    assert ids == {"qwen2.5:0.5b", "nomic-embed-text:latest"}
    assert client.models.retrieve("qwen2.5:0.5b").owned_by == "library"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("ghost")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="ghost", messages=CHAT)  # type: ignore[arg-type]


def test_openai_responses_api(sim: Sim) -> None:
    sim.pull("qwen2.5:0.5b")
    with openai.OpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0) as client:
        whole = client.responses.create(model="qwen2.5:0.5b", input="Tell me a story")
        assert whole.status == "completed"
        assert whole.output_text and whole.usage is not None
        assert whole.usage.output_tokens == 16
        events = list(
            client.responses.create(model="qwen2.5:0.5b", input="Tell me a story", stream=True)
        )
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
