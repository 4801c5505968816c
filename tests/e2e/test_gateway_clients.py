"""The gateway end to end with the official clients: PyPI ``ollama`` and ``openai`` against a
real three-node cluster (two olladist-sim instances a node, DEFAULT_MODELS placed with replicas
1 and 2), every request through ONE node's gateway unless a test says otherwise.

The tests share one cluster and run in file order; the last two break it on purpose (an
instance killed, then a whole node stopped).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletion

from olladist.gateway.runtime import HAProxyRuntime
from olladist.layout import ADMIN_SOCKET, MASTER_SOCKET
from olladist.names import normalize_model
from olladist.placement import Placement, place
from olladist.runtime.local import LocalRuntime
from olladist.specload import load_spec
from olladist.units import GATEWAY_UNIT
from tests.e2e.cluster import Cluster, NodeProc, start_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODELS = ["llama3.2:1b", "qwen2.5:0.5b", "nomic-embed-text", "gemma2:2b"]
EMBED_ONLY = "nomic-embed-text"
CHAT_MODELS = [m for m in MODELS if m != EMBED_ONLY]
HEALTH_INTERVAL = 1.0  # the harness's spec: health {interval: 1s, fall: 2, rise: 1}
KEYS_FILE = "/etc/olladist/api-keys"


def fast_prompts(repo: Path) -> None:
    """A 5 MiB image is about 1.3 M "tokens" to the simulator: at its default 5,000 a second it
    would take minutes, so the spec raises the rate for every instance."""
    spec = repo / "cluster.yaml"
    text = spec.read_text()
    assert "    OLLAMA_KEEP_ALIVE: 10m\n" in text
    spec.write_text(
        text.replace(
            "    OLLAMA_KEEP_ALIVE: 10m\n",
            "    OLLAMA_KEEP_ALIVE: 10m\n    OLLADIST_SIM_PROMPT_RATE: '1000000000'\n",
        )
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = start_cluster(tmp_path_factory.mktemp("gwclients"), before_first_commit=fast_prompts)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def placement(cluster: Cluster) -> Placement:
    return place(load_spec(cluster.repo))


def holders(placement: Placement, model: str) -> tuple[str, ...]:
    nodes = placement.nodes_for(normalize_model(model))
    assert nodes, f"{model} is not placed"
    return nodes


INFERENCE = ("/api/generate", "/api/chat", "/api/embed", "/v1/chat/completions", "/v1/embeddings")


def node_requests(cluster: Cluster, node: NodeProc) -> int:
    """Inference requests the node's simulator instances have received, by their own counters
    (health checks and the reconciler's reads hit them all the time)."""
    spec = next(s for s in cluster.node_specs if s["name"] == node.name)
    total = 0
    with httpx.Client(timeout=5, trust_env=False) as c:
        for port in spec["ports"]:
            routes = c.get(f"http://127.0.0.1:{port}/_sim/stats").json()["requests_by_route"]
            total += sum(v for k, v in routes.items() if k.endswith(INFERENCE))
    return total


class Clients:
    """Official clients on a gateway, closed when the test ends (an unclosed socket is an
    error under ``filterwarnings = error``)."""

    def __init__(self, cluster: Cluster, stack: contextlib.ExitStack) -> None:
        self.cluster = cluster
        self.stack = stack

    def ollama_client(self, node: int = 0, **kwargs: Any) -> ollama.Client:
        kwargs.setdefault("timeout", 30)
        client = ollama.Client(host=self.cluster.gateway(node), **kwargs)
        self.stack.callback(client.close)
        return client

    def openai_client(self, node: int = 0, **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("api_key", "unused")
        client = openai.OpenAI(base_url=self.cluster.gateway(node) + "/v1", max_retries=0, **kwargs)
        self.stack.callback(client.close)
        return client


@pytest.fixture
def clients(cluster: Cluster) -> Iterator[Clients]:
    with contextlib.ExitStack() as stack:
        yield Clients(cluster, stack)


def test_every_model_answers_every_api_through_one_gateway(
    cluster: Cluster, clients: Clients, placement: Placement
) -> None:
    gw = cluster.nodes[0]
    remote = [m for m in MODELS if gw.name not in holders(placement, m)]
    local = [m for m in MODELS if gw.name in holders(placement, m)]
    print(f"through {gw.name}: local {local}, held only elsewhere {remote}")
    # The harness's placement is deterministic; the test means something only if both kinds exist.
    assert remote and local
    client = clients.ollama_client(timeout=30)
    listed = {m.model for m in client.list().models}
    assert listed == {normalize_model(m) for m in MODELS}

    for model in MODELS:
        before = {n.name: node_requests(cluster, n) for n in cluster.nodes}
        vectors = client.embed(model=model, input=["one", "two"]).embeddings
        assert len(vectors) == 2 and len(vectors[0]) > 0
        if model == EMBED_ONLY:
            # As Ollama: an embedding model refuses generate and chat.
            with pytest.raises(ollama.ResponseError) as err:
                client.generate(model=model, prompt="hi")
            assert err.value.status_code == 400 and "does not support" in err.value.error
            with pytest.raises(ollama.ResponseError) as err:
                client.chat(model=model, messages=[{"role": "user", "content": "hi"}])
            assert err.value.status_code == 400 and "does not support" in err.value.error
        else:
            r = client.generate(model=model, prompt="hi")
            assert r.done and r.response
            chunks = list(client.generate(model=model, prompt="hi", stream=True))
            assert len(chunks) > 2 and chunks[-1].done and not chunks[0].done
            c = client.chat(model=model, messages=[{"role": "user", "content": "hi"}])
            assert c.message.role == "assistant" and c.message.content
            parts = list(
                client.chat(model=model, messages=[{"role": "user", "content": "hi"}], stream=True)
            )
            assert len(parts) > 2 and parts[-1].done
            assert "".join(p.message.content or "" for p in parts)
        after = {n.name: node_requests(cluster, n) for n in cluster.nodes}
        served = {name for name in after if after[name] > before[name]}
        # Every request reached a node that holds the model, and only such nodes.
        assert served and served <= set(holders(placement, model)), (model, served)


def test_openai_client_streams_and_embeds_every_model(cluster: Cluster, clients: Clients) -> None:
    client = clients.openai_client()
    assert {m.id for m in client.models.list()} >= {normalize_model(m) for m in MODELS}
    for model in CHAT_MODELS:
        done = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
        assert done.choices[0].message.content
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        assert text
    for model in MODELS:
        emb = client.embeddings.create(model=model, input="hello")
        assert len(emb.data[0].embedding) > 0


def test_unplaced_model_is_404_at_once(cluster: Cluster, clients: Clients) -> None:
    client = clients.ollama_client(timeout=10)
    for call in (
        lambda: client.generate(model="mistral:7b", prompt="hi"),
        lambda: client.chat(model="mistral:7b", messages=[{"role": "user", "content": "x"}]),
        lambda: client.embed(model="mistral:7b", input="x"),
    ):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 404
        assert "not found" in err.value.error
    with pytest.raises(openai.NotFoundError):
        clients.openai_client().chat.completions.create(
            model="mistral:7b", messages=[{"role": "user", "content": "x"}]
        )


def test_openai_chat_with_5mib_image_and_model_last_reaches_a_holder(
    cluster: Cluster, clients: Clients, placement: Placement
) -> None:
    gw = cluster.nodes[0]
    # A model this gateway's node does not hold: the request must cross to a peer.
    model = next(m for m in CHAT_MODELS if gw.name not in holders(placement, m))
    image = base64.b64encode(os.urandom(5 * 1024 * 1024 * 3 // 4)).decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is in this picture?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
            ],
        }
    ]
    sent: list[bytes] = []

    def record(request: httpx.Request) -> None:
        sent.append(request.read())

    with httpx.Client(trust_env=False, timeout=120, event_hooks={"request": [record]}) as http:
        client = clients.openai_client(http_client=http)
        # openai 1.x built the body as {"messages", "model", ...}; the SDK installed here puts
        # "model" first. Both orders must route, so the second call sends the body through the
        # SDK's own generic POST with "model" after 5 MiB of messages.
        calls = {
            "create()": lambda: client.chat.completions.create(messages=messages, model=model),
            "post(), model last": lambda: client.post(
                "/chat/completions",
                body={"messages": messages, "model": model},
                cast_to=ChatCompletion,
            ),
        }
        for name, call in calls.items():
            before = {n.name: node_requests(cluster, n) for n in cluster.nodes}
            start = time.monotonic()
            reply = call()
            took = time.monotonic() - start
            assert reply.choices[0].message.content
            body = sent[-1]
            model_at, messages_at = body.index(b'"model"'), body.index(b'"messages"')
            print(
                f"{name}: {len(body) / 2**20:.1f} MiB body, model at byte {model_at}: "
                f"answered in {took:.2f}s"
            )
            after = {n.name: node_requests(cluster, n) for n in cluster.nodes}
            served = {name for name in after if after[name] > before[name]}
            assert served and served <= set(holders(placement, model))
    # The last call really had the model beyond the first 5 MiB.
    assert model_at > messages_at + 5 * 1024 * 1024


ADMIN_CALLS = {
    "pull": lambda c: c.pull("llama3.2:1b"),
    "delete": lambda c: c.delete("llama3.2:1b"),
    "create": lambda c: c.create(model="mine", from_="llama3.2:1b", system="be brief"),
    "copy": lambda c: c.copy("llama3.2:1b", "mine"),
    "push": lambda c: c.push("llama3.2:1b"),
}


@pytest.mark.parametrize("call", sorted(ADMIN_CALLS))
def test_admin_endpoints_are_403_with_an_ollama_error(
    cluster: Cluster, clients: Clients, call: str
) -> None:
    client = clients.ollama_client(timeout=10)
    with pytest.raises(ollama.ResponseError) as err:
        ADMIN_CALLS[call](client)
    assert err.value.status_code == 403
    # The client parsed {"error": "..."}: its message is the text, not the raw body.
    assert "disabled" in err.value.error and not err.value.error.startswith("{")


def test_admin_endpoint_body_is_json(cluster: Cluster) -> None:
    r = httpx.post(cluster.gateway(0) + "/api/pull", json={"model": "llama3.2:1b"}, trust_env=False)
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("application/json")
    assert set(r.json()) == {"error"}


def test_api_keys_file_turns_on_bearer_auth(cluster: Cluster, clients: Clients) -> None:
    key = secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    for n in cluster.nodes:
        # Node-local, never in git: written before the commit that names it.
        path = n.layout.real(KEYS_FILE)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# test key\n{digest}\n")
    spec_path = cluster.repo / "cluster.yaml"
    original = spec_path.read_text()
    assert "gateway: {health:" in original
    spec_path.write_text(
        original.replace("gateway: {health:", f"gateway: {{api_keys_file: {KEYS_FILE}, health:")
    )
    head = cluster.commit("require API keys")
    try:
        cluster.wait_converged(head, timeout=cluster.interval + 20)
        anonymous = clients.ollama_client(timeout=10)
        keyed = clients.ollama_client(headers={"Authorization": f"Bearer {key}"})
        wrong = clients.ollama_client(headers={"Authorization": "Bearer nope"})
        # The reload is hitless, so wait for the new workers rather than for a file.
        cluster.wait(lambda: _status_of(anonymous.list) == 401, 10, "the keyed config to serve")
        for client in (anonymous, wrong):
            with pytest.raises(ollama.ResponseError) as err:
                client.generate(model="gemma2:2b", prompt="hi")
            assert err.value.status_code == 401
        raw = httpx.post(
            cluster.gateway(0) + "/api/chat", json={"model": "gemma2:2b"}, trust_env=False
        )
        assert raw.status_code == 401
        assert raw.headers["www-authenticate"].startswith("Bearer")
        assert set(raw.json()) == {"error"}
        assert keyed.generate(model="gemma2:2b", prompt="hi").done
        assert len(keyed.list().models) == len(MODELS)
        assert [c.done for c in keyed.chat(model="llama3.2:1b", messages=[], stream=True)][-1]
        assert (
            clients.openai_client(api_key=key).embeddings.create(model=EMBED_ONLY, input="x").data
        )
        with pytest.raises(openai.AuthenticationError):
            clients.openai_client(api_key="nope").models.list()
    finally:
        spec_path.write_text(original)
        head = cluster.commit("API keys off again")
        cluster.wait_converged(head, timeout=cluster.interval + 20)
    cluster.wait(lambda: _status_of(anonymous.list) == 200, 10, "the open config to serve")


def _status_of(call: Any) -> int:
    try:
        call()
    except ollama.ResponseError as exc:
        return exc.status_code
    return 200


def _reload_as_the_reconciler_does(local: LocalRuntime, rt: HAProxyRuntime) -> None:
    """The gateway unit's ExecReload (`haproxy -c`, then SIGUSR2 to the master) through the
    node's runtime, then wait until the master counts the reload."""
    before = rt.processes().reloads
    local.reload(GATEWAY_UNIT)
    deadline = time.monotonic() + 10
    while rt.processes().reloads <= before:
        assert time.monotonic() < deadline, "the master did not count the reload"
        time.sleep(0.05)


def test_200_streams_during_5_reloads_all_succeed(cluster: Cluster) -> None:
    node = cluster.nodes[0]
    rt = HAProxyRuntime(node.layout.real(ADMIN_SOCKET), node.layout.real(MASTER_SOCKET))
    local = LocalRuntime(node.layout)
    reloads_before = rt.processes().reloads
    failures: list[str] = []
    completed = [0]
    in_flight = [0]
    seen_in_flight_at_reload: list[int] = []

    async def one_stream(client: ollama.AsyncClient, k: int) -> None:
        model = CHAT_MODELS[k % len(CHAT_MODELS)]
        in_flight[0] += 1
        try:
            # 60 tokens at the simulator's 200/s: each stream lasts ~0.3 s plus queueing.
            stream = await client.generate(
                model=model, prompt=f"s{k}", stream=True, options={"num_predict": 60}
            )
            chunks = [c async for c in stream]
            if not chunks or not chunks[-1].done:
                raise AssertionError("stream ended without done")
            completed[0] += 1
        except Exception as exc:  # every failure counts, whatever its kind
            failures.append(f"{model}: {exc!r}")
        finally:
            in_flight[0] -= 1

    async def reloader() -> None:
        for _ in range(5):
            await asyncio.sleep(0.4)
            seen_in_flight_at_reload.append(in_flight[0])
            await asyncio.to_thread(_reload_as_the_reconciler_does, local, rt)

    async def main() -> float:
        reloads_done = asyncio.Event()

        async def worker(client: ollama.AsyncClient, k: int) -> None:
            # 200 workers, each starting a new stream as its last ends: 200 open at all times.
            while not reloads_done.is_set():
                await one_stream(client, k)

        async with ollama.AsyncClient(host=cluster.gateway(0), timeout=120) as client:
            start = time.monotonic()
            workers = [asyncio.create_task(worker(client, k)) for k in range(200)]
            await reloader()
            reloads_done.set()
            await asyncio.gather(*workers)
            return time.monotonic() - start

    took = asyncio.run(main())
    reloads = rt.processes().reloads - reloads_before
    print(
        f"{completed[0]} streams in {took:.1f}s across {reloads} reloads, "
        f"open at each reload: {seen_in_flight_at_reload}, failed: {len(failures)}"
    )
    assert reloads == 5
    assert min(seen_in_flight_at_reload) > 0
    assert failures == []
    assert completed[0] >= 200


def _hammer(
    base: str, model: str, stop: threading.Event, log: list[tuple[float, bool, str]]
) -> None:
    # The embedding model refuses generate: it is asked for vectors instead.
    path, body = (
        ("/api/embed", {"model": model, "input": "x"})
        if model == EMBED_ONLY
        else ("/api/generate", {"model": model, "prompt": "x", "stream": False})
    )
    with httpx.Client(timeout=30, trust_env=False) as c:
        while not stop.is_set():
            try:
                r = c.post(base + path, json=body)
                log.append((time.monotonic(), r.status_code == 200, str(r.status_code)))
            except httpx.HTTPError as exc:
                log.append((time.monotonic(), False, repr(exc)))


def _server_down(rt: HAProxyRuntime, backend: str, server: str) -> bool:
    return any(
        s.backend == backend and s.server == server and s.status.startswith("DOWN")
        for s in rt.stats()
    )


@dataclass(frozen=True)
class Watched:
    log: list[tuple[float, bool, str]]  # (monotonic time, succeeded, status or error)
    at: float  # when the event was over (the instance killed, the node's processes gone)
    took: float  # how long the event itself took
    down_after: float | None  # seconds after `at` until the gateway showed it down; None: never

    def report(self, what: str) -> float:
        after = [e for e in self.log if e[0] >= self.at]
        failed = [e for e in after if not e[1]]
        last_failure = max((e[0] - self.at for e in failed), default=0.0)
        down = "not seen" if self.down_after is None else f"after {self.down_after:.2f}s"
        print(
            f"{what} (took {self.took:.2f}s): {len(after)} requests after it, {len(failed)} "
            f"failed {sorted({e[2] for e in failed})}, last failure at {last_failure:.2f}s, "
            f"marked down {down}"
        )
        return last_failure


def _watch(base: str, model: str, *, seconds: float, event: Any, down: Any) -> Watched:
    """Four clients hammer ``base`` with ``model`` while ``event`` happens and for ``seconds``
    after it; meanwhile ``down()`` is sampled to see when the gateway noticed."""
    log: list[tuple[float, bool, str]] = []
    down_at: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set() and not down_at:
            if down():
                down_at.append(time.monotonic())
            time.sleep(0.05)

    threads = [
        threading.Thread(target=_hammer, args=(base, model, stop, log), daemon=True)
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        begin = time.monotonic()
        threads.append(threading.Thread(target=poll, daemon=True))
        threads[-1].start()
        event()
        at = time.monotonic()
        time.sleep(seconds)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=35)
    return Watched(log, at, at - begin, down_at[0] - at if down_at else None)


def test_killed_instance_new_requests_succeed_within_two_check_intervals(
    cluster: Cluster, placement: Placement
) -> None:
    node = cluster.nodes[0]
    # A model only this node holds, so every request goes to one of its two instances.
    model = next(m for m in CHAT_MODELS if holders(placement, m) == (node.name,))
    pid = node.service_pids()["olladist-ollama@i0.service"]
    rt = HAProxyRuntime(node.layout.real(ADMIN_SOCKET))
    killed_at: list[float] = []

    def kill() -> None:
        killed_at.append(time.time())
        os.kill(pid, signal.SIGKILL)

    w = _watch(
        cluster.gateway(0),
        model,
        seconds=3 * HEALTH_INTERVAL,
        event=kill,
        down=lambda: _server_down(rt, "instances", "i0"),
    )
    # The reconciler may start i0 again before two checks fail: then it is never seen down.
    last_failure = w.report(f"instance i0 of {node.name} killed")
    window = 2 * HEALTH_INTERVAL
    assert last_failure <= window
    assert [e for e in w.log if e[0] > w.at + window and e[1]]
    assert all(ok for t, ok, _ in w.log if t > w.at + window)
    # The node's reconciler starts it again (Restart=always) and the gateway takes it back.
    cluster.wait(
        lambda: node.service_pids().get("olladist-ollama@i0.service", pid) != pid,
        cluster.interval + 10,
        "the instance to be restarted",
    )
    record = node.root / "run/olladist/local/olladist-ollama@i0.service.json"
    print(f"i0 started again by its reconciler {record.stat().st_mtime - killed_at[0]:.2f}s after")
    cluster.wait(lambda: not _server_down(rt, "instances", "i0"), 15, "i0 back up")


def test_stopped_node_replicated_models_keep_answering_elsewhere(
    cluster: Cluster, clients: Clients, placement: Placement
) -> None:
    gateway_node = cluster.nodes[0]
    # Stop a node that is the only OTHER holder of a model (besides the gateway's own node, or
    # alongside a third node), so the gateway must route around it.
    victim, moved = next(
        (n, m)
        for n in cluster.nodes[1:]
        for m in MODELS
        if n.name in holders(placement, m)
        and len(holders(placement, m)) > 1
        and gateway_node.name not in holders(placement, m)
    )
    survivors = [m for m in MODELS if set(holders(placement, m)) - {victim.name}]
    lost = [m for m in MODELS if m not in survivors]
    print(f"stopping {victim.name}; {moved} must move to its other holder; lost: {lost}")
    rt = HAProxyRuntime(gateway_node.layout.real(ADMIN_SOCKET))
    pids = victim.service_pids()
    base = cluster.gateway(0)
    w = _watch(
        base,
        moved,
        seconds=3 * HEALTH_INTERVAL,
        event=lambda: cluster.stop_node(victim),
        down=lambda: _server_down(rt, "peers", f"peer.{victim.name}"),
    )
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists()
    # Timed from when the node's processes are gone (its reconciler stops them on SIGTERM).
    last_failure = w.report(f"node {victim.name} stopped (SIGTERM to its reconciler)")
    assert w.down_after is not None
    assert last_failure <= 2 * HEALTH_INTERVAL
    assert all(ok for t, ok, _ in w.log if t > w.at + 2 * HEALTH_INTERVAL)
    client = clients.ollama_client()
    for m in survivors:
        vec = client.embed(model=m, input="still here").embeddings
        assert vec and vec[0]
        if m != EMBED_ONLY:
            assert client.generate(model=m, prompt="still here").done
    for m in lost:
        with pytest.raises(ollama.ResponseError) as err:
            client.generate(model=m, prompt="gone")
        assert err.value.status_code == 503
