"""Wire behaviour of a real simulator process: shapes, errors, timing, scheduling over HTTP."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from .conftest import Sim, SimFactory

pytestmark = pytest.mark.integration


def test_root_version_and_head(sim: Sim) -> None:
    with sim.client() as c:
        assert c.get("/").text == "Ollama is running"
        assert c.head("/").status_code == 200
        assert c.head("/api/version").status_code == 200
        assert "version" in c.get("/api/version").json()
        assert c.get("/api/nope").text == "404 page not found"
        assert c.get("/api/generate").text == "405 method not allowed"
        # Bound to loopback, it refuses foreign Host names as Ollama does (DNS-rebinding guard).
        assert c.get("/api/version", headers={"Host": "gpu-a.example.com"}).status_code == 403
        assert c.get("/api/version", headers={"Host": "10.0.0.11:11434"}).status_code == 200
    # An HTTP/1.0 health check without a Host header (HAProxy's default httpchk) passes.
    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as raw:
        raw.sendall(b"GET /api/version HTTP/1.0\r\n\r\n")
        status_line = raw.recv(64).split(b"\r\n", 1)[0]
    assert status_line.split()[1] == b"200", status_line


def test_errors_in_ollamas_words(sim: Sim) -> None:
    with sim.client() as c:
        r = c.post("/api/generate", json={"model": "ghost", "prompt": "hi"})
        assert (r.status_code, r.json()) == (404, {"error": "model 'ghost' not found"})
        r = c.post("/api/chat", json={"model": "ghost", "messages": []})
        assert (r.status_code, r.json()) == (404, {"error": "model 'ghost' not found"})
        r = c.post("/api/embeddings", json={"model": "ghost", "prompt": "x"})
        assert r.json() == {"error": 'model "ghost" not found, try pulling it first'}
        r = c.post("/api/generate", content=b"{not json")
        assert r.status_code == 400
        assert r.json()["error"].startswith("invalid character")
        r = c.post("/api/generate", content=b"")
        assert r.json() == {"error": "missing request body"}
        r = c.post("/api/generate", content=b"[1]")
        assert "cannot unmarshal array" in r.json()["error"]
        r = c.request("DELETE", "/api/delete", json={"model": "ghost"})
        assert (r.status_code, r.json()) == (404, {"error": "model 'ghost' not found"})
        r = c.post("/api/copy", json={"source": "ghost", "destination": "x"})
        assert (r.status_code, r.json()) == (404, {"error": 'model "ghost" not found'})
        r = c.post("/api/pull", json={"model": "ghost"})
        assert r.status_code == 200
        lines = [json.loads(x) for x in r.text.splitlines()]
        assert lines == [
            {"status": "pulling manifest"},
            {"error": "pull model manifest: file does not exist"},
        ]
        # Ollama's server drops the name's scheme: https, unless the request says insecure.
        r = c.post("/api/pull", json={"model": "http://127.0.0.1:1/me/m", "stream": False})
        assert r.status_code == 500
        assert r.json()["error"].startswith('pull model manifest: Get "https://127.0.0.1:1/v2/')
        r = c.post("/api/pull", json={"model": "http://127.0.0.1:1/me/m", "insecure": True})
        assert json.loads(r.text.splitlines()[-1]) == {
            "error": 'pull model manifest: Get "http://127.0.0.1:1/v2/me/m/manifests/latest": '
            "dial tcp 127.0.0.1:1: connect: connection refused"
        }
        r = c.post("/api/pull", json={"model": "ghost", "stream": False})
        assert (r.status_code, r.json()) == (
            500,
            {"error": "pull model manifest: file does not exist"},
        )
        r = c.post(
            "/v1/chat/completions",
            json={"model": "ghost", "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 404
        assert r.json()["error"]["message"] == "model 'ghost' not found"


def test_pull_stream_lines_in_ollamas_order(sim_factory: SimFactory) -> None:
    # 1 GB/s: the 1.3 GB weights take about 1.3 s, long enough for 60 ms progress lines.
    sim = sim_factory({"OLLADIST_SIM_PULL_GBPS": "1"})
    with sim.client() as c:
        r = c.post("/api/pull", json={"model": "llama3.2:1b"})
    assert r.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(x) for x in r.text.splitlines()]
    statuses = [x["status"] for x in lines]
    assert statuses[0] == "pulling manifest"
    # Nothing to remove on a first pull: Ollama says "removing unused layers" only when a
    # previous version of the model left layers behind.
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = [x for x in lines if x["status"].startswith("pulling ") and "digest" in x]
    first = layers[0]
    assert first["status"] == "pulling " + first["digest"][7:19]
    assert first["total"] > 1_000_000_000
    done = [x.get("completed", 0) for x in layers if x["digest"] == first["digest"]]
    assert done == sorted(done)
    assert 0 < done[-1] < first["total"]  # a line every 60 ms, none when the blob completes
    assert sim.stats()["pulls_by_model"] == {"llama3.2:1b": 1}


def test_generate_stream_and_final_chunk(sim: Sim) -> None:
    sim.pull("llama3.2:1b")
    with sim.client() as c:
        r = c.post("/api/generate", json={"model": "llama3.2:1b", "prompt": "why is the sky blue"})
    assert r.headers["content-type"] == "application/x-ndjson"
    chunks = [json.loads(x) for x in r.text.splitlines()]
    assert all(not ch["done"] for ch in chunks[:-1])
    final = chunks[-1]
    assert final["done"] and final["done_reason"] == "stop"
    for key in (
        "context",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ):
        assert key in final, key
    assert final["eval_count"] == len(chunks) - 1
    assert final["total_duration"] >= final["load_duration"] + final["eval_duration"]
    with sim.client() as c:
        again = c.post(
            "/api/generate",
            json={"model": "llama3.2:1b", "prompt": "why is the sky blue", "stream": False},
        ).json()
        short = c.post(
            "/api/generate",
            json={
                "model": "llama3.2:1b",
                "prompt": "x",
                "stream": False,
                "options": {"num_predict": 3},
            },
        ).json()
        think = c.post("/api/generate", json={"model": "llama3.2:1b", "prompt": "x", "think": True})
    assert think.json() == {"error": '"llama3.2:1b" does not support thinking'}
    assert again["response"] == "".join(ch["response"] for ch in chunks)  # deterministic
    assert (short["eval_count"], short["done_reason"]) == (3, "length")


def test_truthful_load_duration(sim_factory: SimFactory) -> None:
    # 1 GB/s: llama3.2:1b (1.32 GB) takes 1.32 s to load, qwen2.5:0.5b 0.40 s.
    sim = sim_factory({"OLLADIST_SIM_LOAD_GBPS": "1"})
    sim.pull("llama3.2:1b")
    body = {"model": "llama3.2:1b", "prompt": "hello", "stream": False}
    with sim.client() as c:
        began = time.monotonic()
        cold = c.post("/api/generate", json=body).json()
        wall = time.monotonic() - began
        warm = c.post("/api/generate", json=body).json()
    assert 1.30e9 <= cold["load_duration"] <= 1.6e9
    assert cold["total_duration"] <= wall * 1e9
    assert warm["load_duration"] < 0.05e9
    assert sim.stats()["cold_loads_by_model"] == {"llama3.2:1b": 1}


def test_load_only_unload_and_ps(sim: Sim) -> None:
    sim.pull("qwen2.5:0.5b")
    with sim.client() as c:
        r = c.post("/api/generate", json={"model": "qwen2.5:0.5b"}).json()
        assert (r["done"], r["done_reason"], r["response"]) == (True, "load", "")
        ps = c.get("/api/ps").json()["models"]
        assert [m["name"] for m in ps] == ["qwen2.5:0.5b"]
        entry = ps[0]
        assert entry["size_vram"] == entry["size"] == 397821319
        assert entry["expires_at"].endswith("Z")
        assert entry["details"]["family"] == "qwen2"
        r = c.post("/api/chat", json={"model": "qwen2.5:0.5b", "messages": [], "keep_alive": 0})
        assert r.json()["done_reason"] == "unload"
        assert c.get("/api/ps").json() == {"models": []}


def test_keep_alive_expiry_over_http(sim_factory: SimFactory) -> None:
    sim = sim_factory({"OLLAMA_KEEP_ALIVE": "300ms"})
    sim.pull("qwen2.5:0.5b")
    with sim.client() as c:
        c.post("/api/generate", json={"model": "qwen2.5:0.5b", "prompt": "a", "stream": False})
        assert len(c.get("/api/ps").json()["models"]) == 1
        time.sleep(0.6)
        assert c.get("/api/ps").json()["models"] == []
        # The request's keep_alive wins over OLLAMA_KEEP_ALIVE.
        c.post("/api/generate", json={"model": "qwen2.5:0.5b", "keep_alive": "10s"})
        time.sleep(0.6)
        assert len(c.get("/api/ps").json()["models"]) == 1


def test_eviction_order_over_http(sim_factory: SimFactory) -> None:
    # Ollama unloads the runner with the shortest keep-alive first, not the least recent one.
    sim = sim_factory({"OLLAMA_MAX_LOADED_MODELS": "2"})
    for model in ("qwen2.5:0.5b", "all-minilm", "tinyllama"):
        sim.pull(model)
    with sim.client() as c:
        c.post("/api/embed", json={"model": "all-minilm", "input": "x", "keep_alive": "1h"})
        c.post("/api/generate", json={"model": "qwen2.5:0.5b"})  # OLLAMA_KEEP_ALIVE: 5m
        c.post("/api/embed", json={"model": "all-minilm", "input": "x"})  # keeps its 1h
        c.post("/api/generate", json={"model": "tinyllama"})
        loaded = {m["name"] for m in c.get("/api/ps").json()["models"]}
    assert loaded == {"all-minilm:latest", "tinyllama:latest"}
    assert sim.stats()["evictions_by_model"] == {"qwen2.5:0.5b": 1}


def test_other_num_ctx_reloads_and_ps_shows_the_loaded_context(sim_factory: SimFactory) -> None:
    sim = sim_factory({"OLLAMA_CONTEXT_LENGTH": "2048"})
    sim.pull("qwen2.5:0.5b")
    with sim.client() as c:

        def generate(**options: int) -> dict[str, object]:
            body = {"model": "qwen2.5:0.5b", "prompt": "a", "stream": False, "options": options}
            data: dict[str, object] = c.post("/api/generate", json=body).json()
            return data

        def context() -> int:
            (entry,) = c.get("/api/ps").json()["models"]
            return int(entry["context_length"])

        generate()
        assert context() == 2048  # OLLAMA_CONTEXT_LENGTH, not the model's trained 32768
        generate(temperature=0)  # not a load-time option: same runner
        generate(num_ctx=8192)
        assert context() == 8192
        generate(num_ctx=8192, num_predict=1)
    stats = sim.stats()
    assert stats["cold_loads_by_model"] == {"qwen2.5:0.5b": 2}
    assert stats["reloads_by_model"] == {"qwen2.5:0.5b": 1}


def test_vram_limit_over_http(sim_factory: SimFactory) -> None:
    # 1 GB of "VRAM": qwen2.5:0.5b (0.40 GB) fits; tinyllama (0.64 GB) next to it does not.
    sim = sim_factory({"OLLADIST_SIM_VRAM_GB": "1"})
    for model in ("qwen2.5:0.5b", "tinyllama", "llama3.2:1b"):
        sim.pull(model)
    with sim.client() as c:
        c.post("/api/generate", json={"model": "qwen2.5:0.5b"})
        c.post("/api/generate", json={"model": "tinyllama"})
        assert [m["name"] for m in c.get("/api/ps").json()["models"]] == ["tinyllama:latest"]
        c.post("/api/generate", json={"model": "llama3.2:1b"})  # 1.32 GB: partly offloaded
        (entry,) = c.get("/api/ps").json()["models"]
    assert (entry["size"], entry["size_vram"]) == (1321098329, 1_000_000_000)


def test_queue_full_is_503(sim_factory: SimFactory) -> None:
    # OLLAMA_MAX_QUEUE bounds the scheduler's pending queue: requests for models that must
    # wait to be loaded. Requests for the loaded model wait for its slot without a bound.
    sim = sim_factory(
        {"OLLAMA_MAX_QUEUE": "1", "OLLAMA_MAX_LOADED_MODELS": "1", "OLLADIST_SIM_TOKEN_RATE": "4"}
    )
    for model in ("qwen2.5:0.5b", "tinyllama", "all-minilm", "llama3.2:1b"):
        sim.pull(model)
    with sim.client() as c:
        assert c.post("/api/generate", json={"model": "qwen2.5:0.5b"}).status_code == 200
    results: dict[str, int] = {}

    def call(model: str, key: str) -> None:
        tokens = 16 if key == "running" else 1  # 4 s for the first, 0.25 s for the others
        body: dict[str, object] = {"model": model, "prompt": "slow", "stream": False}
        body["options"] = {"num_predict": tokens}
        if model == "all-minilm":
            body = {"model": model, "input": "x"}
        with sim.client() as c:
            path = "/api/embed" if model == "all-minilm" else "/api/generate"
            results[key] = c.post(path, json=body).status_code

    threads = [
        threading.Thread(target=call, args=("qwen2.5:0.5b", "running")),
        threading.Thread(target=call, args=("tinyllama", "served next")),  # waits for qwen
        threading.Thread(target=call, args=("all-minilm", "queued")),  # the queue's one place
        threading.Thread(target=call, args=("qwen2.5:0.5b", "warm")),  # waits for a slot
    ]
    with sim.client() as c:
        # Each request is in place before the next is sent (in_flight counts /_sim/stats too).
        for n, t in enumerate(threads):
            t.start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and c.get("/_sim/stats").json()["in_flight"] < n + 2:
                time.sleep(0.01)
        stats = c.get("/_sim/stats").json()
        assert (stats["pending"], stats["queued"]) == (2, 3), stats
        r = c.post("/api/generate", json={"model": "llama3.2:1b", "prompt": "x", "stream": False})
    for t in threads:
        t.join()
    assert r.status_code == 503
    assert r.json() == {
        "error": "server busy, please try again.  maximum pending requests exceeded"
    }
    assert results == {"running": 200, "served next": 200, "queued": 200, "warm": 200}


def test_embed_is_deterministic_and_normalised(sim: Sim) -> None:
    sim.pull("nomic-embed-text")
    with sim.client() as c:
        a = c.post("/api/embed", json={"model": "nomic-embed-text", "input": ["a", "b"]}).json()
        b = c.post("/api/embed", json={"model": "nomic-embed-text", "input": "a"}).json()
        legacy = c.post("/api/embeddings", json={"model": "nomic-embed-text", "prompt": "a"}).json()
        gen = c.post("/api/generate", json={"model": "nomic-embed-text", "prompt": "x"})
    assert len(a["embeddings"]) == 2 and len(a["embeddings"][0]) == 768
    assert a["embeddings"][0] == b["embeddings"][0] == legacy["embedding"]
    assert a["embeddings"][0] != a["embeddings"][1]
    assert abs(sum(v * v for v in a["embeddings"][0]) - 1) < 1e-9
    assert a["prompt_eval_count"] == 2
    assert (gen.status_code, gen.json()) == (
        400,
        {"error": '"nomic-embed-text" does not support generate'},
    )


def test_create_push_and_blobs(sim: Sim) -> None:
    sim.pull("qwen2.5:0.5b")
    data = b"some adapter bytes"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with sim.client() as c:
        assert c.head(f"/api/blobs/{digest}").status_code == 404
        assert c.post(f"/api/blobs/{digest}", content=data).status_code == 201
        assert c.head(f"/api/blobs/{digest}").status_code == 200
        bad = c.post("/api/blobs/sha256:" + "0" * 64, content=data)
        assert bad.status_code == 400 and "digest mismatch" in bad.json()["error"]
        assert c.head("/api/blobs/nonsense").status_code == 400
        r = c.post(
            "/api/create",
            json={"model": "pirate", "from": "qwen2.5:0.5b", "system": "Talk like a pirate."},
        )
        statuses = [json.loads(x)["status"] for x in r.text.splitlines()]
        assert statuses[-2:] == ["writing manifest", "success"]
        shown = c.post("/api/show", json={"model": "pirate"}).json()
        assert shown["system"] == "Talk like a pirate."
        assert shown["details"]["family"] == "qwen2"
        r = c.post("/api/push", json={"model": "pirate", "stream": False})
        assert r.status_code == 500 and "cannot push" in r.json()["error"]


def test_sigterm_exits_cleanly(sim: Sim) -> None:
    sim.proc.send_signal(signal.SIGTERM)
    assert sim.proc.wait(timeout=10) == 0
    assert "shutting down" in sim.log_text()


def test_serve_help_documents_the_knobs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "olladist.sim", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for knob in (
        "OLLAMA_HOST",
        "OLLAMA_NUM_PARALLEL",
        "OLLADIST_SIM_LOAD_GBPS",
        "OLLADIST_SIM_FAULTS",
        "error_mid_stream",
        "refuse_pulls",
        "/_sim/stats",
    ):
        assert knob in out, knob


def test_catalogue_command_lists_digests() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "olladist.sim", "catalogue", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {row["name"]: row for row in json.loads(out)}
    assert len(rows["llama3.1:8b"]["digest"]) == 64


def test_bad_environment_is_a_clear_error(tmp_path: object) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "olladist.sim", "serve"],
        capture_output=True,
        text=True,
        env={"OLLAMA_NUM_PARALLEL": "lots", "PATH": ""},
        timeout=30,
    )
    assert proc.returncode == 2
    assert "error: OLLAMA_NUM_PARALLEL='lots' is not an integer" in proc.stderr
    version = subprocess.run(
        [sys.executable, "-m", "olladist.sim", "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert version.startswith("ollama version is ")


def test_client_disconnect_frees_the_slot(sim_factory: SimFactory) -> None:
    sim = sim_factory({"OLLADIST_SIM_TOKEN_RATE": "10"})
    sim.pull("qwen2.5:0.5b")
    with (
        httpx.Client(base_url=sim.url, timeout=10) as c,
        c.stream("POST", "/api/generate", json={"model": "qwen2.5:0.5b", "prompt": "x"}) as r,
    ):
        next(r.iter_lines())
    # The abandoned stream's slot comes back: the next request is served, not queued forever.
    with sim.client(timeout=10) as c:
        r2 = c.post(
            "/api/generate",
            json={
                "model": "qwen2.5:0.5b",
                "prompt": "y",
                "stream": False,
                "options": {"num_predict": 1},
            },
        )
    assert r2.status_code == 200


def test_anthropic_messages(sim: Sim) -> None:
    sim.pull("qwen2.5:0.5b")
    body = {
        "model": "qwen2.5:0.5b",
        "max_tokens": 5,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
    }
    with sim.client() as c:
        whole = c.post("/v1/messages", json=body).json()
        streamed = c.post("/v1/messages", json={**body, "stream": True})
        missing = c.post("/v1/messages", json={**body, "model": "ghost"})
    assert whole["type"] == "message" and whole["stop_reason"] == "max_tokens"
    assert whole["usage"]["output_tokens"] == 5
    assert streamed.headers["content-type"] == "text/event-stream"
    events = [block.split("\n") for block in streamed.text.strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    text = "".join(
        json.loads(lines[1].removeprefix("data: "))["delta"]["text"]
        for lines in events
        if lines[0] == "event: content_block_delta"
    )
    assert text == whole["content"][0]["text"]
    assert missing.status_code == 404
    assert missing.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model 'ghost' not found"},
    }
