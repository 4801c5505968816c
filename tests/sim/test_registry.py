"""olladist-sim pulls over HTTP from the loopback test registry, as ``ollama pull`` does
(server/images.go, server/download.go): files, progress lines, resume, digest checks,
byte counts and the rate limit."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from olladist.sim.pull import MAX_PART, MIN_PART, split_parts
from olladist.sim.registry import Throttle

from .conftest import Registry, RegistryFactory, Sim, SimFactory

pytestmark = pytest.mark.integration

MB = 1_000_000


def _registry_sim(sim_factory: SimFactory, registry: Registry, **env: str) -> Sim:
    return sim_factory({"OLLADIST_SIM_REGISTRY": registry.url, **env})


def _pull_lines(sim: Sim, model: str, **extra: object) -> list[dict[str, Any]]:
    with sim.client(timeout=120) as c:
        r = c.post("/api/pull", json={"model": model, **extra})
    assert r.status_code == 200, r.text
    return [json.loads(x) for x in r.text.splitlines()]


def _sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _weights(model: dict[str, Any]) -> dict[str, Any]:
    (layer,) = [b for b in model["blobs"] if b["mediaType"] == "application/vnd.ollama.image.model"]
    return layer


def _strays(models_dir: Path) -> list[str]:
    """Anything under blobs/ that is not a complete blob named by its own digest."""
    bad = []
    for path in (models_dir / "blobs").iterdir():
        named_by_digest = _sha(path) == path.name.replace("-", ":", 1)
        if "partial" in path.name or path.name.startswith(".") or not named_by_digest:
            bad.append(path.name)
    return bad


def test_ollama_splits_blobs_into_parts_of_100mb_to_1000mb() -> None:
    assert split_parts(3 * MB) == [(0, 3 * MB)]
    assert split_parts(250 * MB) == [(0, MIN_PART), (MIN_PART, MIN_PART), (200 * MB, 50 * MB)]
    assert len(split_parts(1600 * MB)) == 16
    big = split_parts(20_000 * MB)  # 20 GB / 16 is over the cap: parts of 1,000 MB
    assert {size for _, size in big} == {MAX_PART}
    assert sum(size for _, size in big) == 20_000 * MB
    assert split_parts(0) == []


def test_pull_lands_the_files_ollama_would(sim_factory: SimFactory, registry: Registry) -> None:
    sim = _registry_sim(sim_factory, registry)
    lines = _pull_lines(sim, "tiny")
    assert lines[0] == {"status": "pulling manifest"}
    assert [x["status"] for x in lines[-3:]] == [
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    served = httpx.get(
        registry.url + "/v2/library/tiny/manifests/latest",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    assert served.headers["content-type"] == "application/vnd.docker.distribution.manifest.v2+json"
    stored = sim.models_dir / "manifests/registry.ollama.ai/library/tiny/latest"
    assert stored.read_bytes() == served.content  # the name's host, not the mirror's address
    manifest = served.json()
    for blob in [*manifest["layers"], manifest["config"]]:
        path = sim.models_dir / "blobs" / blob["digest"].replace(":", "-")
        assert path.stat().st_size == blob["size"]
    assert _strays(sim.models_dir) == []
    with sim.client() as c:
        (tag,) = c.get("/api/tags").json()["models"]
        assert tag["name"] == "tiny:latest"
        assert tag["digest"] == hashlib.sha256(served.content).hexdigest()
        assert tag["size"] == 3 * MB
        r = c.post("/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False})
        assert r.status_code == 200
    # The byte counter: every blob crossed the link exactly once.
    model = registry.model("tiny:latest")
    stats = registry.stats()
    assert stats["bytes_sent"] == model["transfer_size"]
    for blob in model["blobs"]:
        assert stats["blobs"][blob["digest"]]["bytes_sent"] == blob["size"]
        assert stats["blobs"][blob["digest"]]["ranges"] == [f"bytes=0-{blob['size'] - 1}"]


def test_catalogue_names_come_with_their_metadata(
    sim_factory: SimFactory, registry: Registry
) -> None:
    sim = _registry_sim(sim_factory, registry)
    sim.pull("nomic-embed-text")  # generated on first request at 1/1000 of its size
    with sim.client() as c:
        show = c.post("/api/show", json={"model": "nomic-embed-text"}).json()
        assert show["capabilities"] == ["embedding"]
        (tag,) = c.get("/api/tags").json()["models"]
        assert tag["size"] == 274302450 // 1000
        r = c.post("/api/embed", json={"model": "nomic-embed-text", "input": "x"})
        assert len(r.json()["embeddings"][0]) == 768


def test_progress_lines_cache_hits_and_unused_layers(
    sim_factory: SimFactory, registry: Registry
) -> None:
    sim = _registry_sim(sim_factory, registry)
    registry.faults(rate=4 * MB)  # about 0.75 s for 3 MB: several 60 ms progress lines
    lines = _pull_lines(sim, "tiny")
    weights = _weights(registry.model("tiny:latest"))
    ticks = [x for x in lines if x.get("digest") == weights["digest"]]
    assert ticks, lines
    assert {x["status"] for x in ticks} == {"pulling " + weights["digest"][7:19]}
    assert all(x["total"] == weights["size"] for x in ticks)
    done = [x.get("completed", 0) for x in ticks]  # absent while nothing has arrived
    assert done == sorted(done)
    assert 0 < max(done) <= weights["size"]
    assert "removing unused layers" not in [x["status"] for x in lines]

    # Pulled again: every blob is a cache hit, one line each with its size on disk.
    registry.faults()
    before = registry.stats()["bytes_sent"]
    again = _pull_lines(sim, "tiny")
    model = registry.model("tiny:latest")
    hits = [x for x in again if "digest" in x]
    assert [x["digest"] for x in hits] == [b["digest"] for b in model["blobs"]]
    assert all(x["total"] == x["completed"] for x in hits)
    assert registry.stats()["bytes_sent"] == before

    # Upstream changes the weights: the old layer goes, as after an Ollama pull.
    r = httpx.post(
        registry.url + "/_registry/models", json={"name": "tiny", "size": "3MB", "seed": "2"}
    )
    assert r.status_code == 200
    third = _pull_lines(sim, "tiny")
    assert [x["status"] for x in third[-3:]] == [
        "writing manifest",
        "removing unused layers",
        "success",
    ]
    assert not (sim.models_dir / "blobs" / weights["digest"].replace(":", "-")).exists()


def test_noprune_keeps_the_old_layers(sim_factory: SimFactory, registry: Registry) -> None:
    sim = _registry_sim(sim_factory, registry, OLLAMA_NOPRUNE="1")
    sim.pull("tiny")
    old = _weights(registry.model("tiny:latest"))["digest"]
    httpx.post(
        registry.url + "/_registry/models", json={"name": "tiny", "size": "2MB", "seed": "x"}
    )
    lines = _pull_lines(sim, "tiny")
    assert "removing unused layers" not in [x["status"] for x in lines]
    assert (sim.models_dir / "blobs" / old.replace(":", "-")).exists()


def test_resume_after_a_cut_connection(sim_factory: SimFactory, registry: Registry) -> None:
    sim = _registry_sim(sim_factory, registry)
    registry.faults(cut_after=1 * MB, cuts=1)  # the first blob body stops after 1 MB
    lines = _pull_lines(sim, "tiny")
    assert lines[-1] == {"status": "success"}, lines[-3:]
    weights = _weights(registry.model("tiny:latest"))
    stats = registry.stats()["blobs"][weights["digest"]]
    # The retry asked only for what was missing, so the blob crossed the link once in total.
    assert stats["ranges"] == [
        f"bytes=0-{weights['size'] - 1}",
        f"bytes={MB}-{weights['size'] - 1}",
    ]
    assert stats["bytes_sent"] == weights["size"]
    assert _strays(sim.models_dir) == []


def test_an_abandoned_pull_resumes_where_it_stopped(
    sim_factory: SimFactory, registry: Registry
) -> None:
    sim = _registry_sim(sim_factory, registry)
    weights = _weights(registry.model("tiny:latest"))
    partial = sim.models_dir / "blobs" / (weights["digest"].replace(":", "-") + "-partial")
    registry.faults(rate=1 * MB)
    with sim.client() as c, c.stream("POST", "/api/pull", json={"model": "tiny"}) as r:
        for raw in r.iter_lines():
            if json.loads(raw).get("completed", 0) > 0:
                break  # the client goes away mid-transfer
    # Nobody waits on the transfer any more: it is cancelled, and its part file records how
    # far it got (before that, the part file still says 0).
    part = Path(f"{partial}-0")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and json.loads(part.read_text())["Completed"] == 0:
        time.sleep(0.05)
    kept = json.loads(part.read_text())
    assert 0 < kept["Completed"] < weights["size"]
    assert not (sim.models_dir / "blobs" / weights["digest"].replace(":", "-")).exists()
    registry.faults()
    lines = _pull_lines(sim, "tiny")
    assert lines[-1] == {"status": "success"}
    ranges = registry.stats()["blobs"][weights["digest"]]["ranges"]
    resumed_from = int(ranges[-1].removeprefix("bytes=").split("-")[0])
    assert resumed_from >= kept["Completed"] > 0
    assert _strays(sim.models_dir) == []


def test_digest_mismatch_is_refused_and_nothing_is_visible(
    sim_factory: SimFactory, registry: Registry
) -> None:
    sim = _registry_sim(sim_factory, registry)
    weights = _weights(registry.model("tiny:latest"))
    registry.faults(corrupt=[weights["digest"]])
    lines = _pull_lines(sim, "tiny")
    assert lines[-2] == {"status": "verifying sha256 digest"}
    error = lines[-1]["error"]
    assert error.startswith(
        f"digest mismatch, file must be downloaded again: want {weights['digest']}, got sha256:"
    )
    assert not (sim.models_dir / "blobs" / weights["digest"].replace(":", "-")).exists()
    assert _strays(sim.models_dir) == []
    assert not (sim.models_dir / "manifests/registry.ollama.ai/library/tiny").exists()
    with sim.client() as c:
        assert c.get("/api/tags").json()["models"] == []


def test_byte_counter_and_one_shared_transfer_for_concurrent_pulls(
    sim_factory: SimFactory, registry_factory: RegistryFactory
) -> None:
    registry = registry_factory(["big=8MB"])
    sim = _registry_sim(sim_factory, registry)
    registry.faults(rate=8 * MB)
    results: list[dict[str, Any]] = []

    def pull() -> None:
        results.append(_pull_lines(sim, "big")[-1])

    threads = [threading.Thread(target=pull) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [{"status": "success"}] * 3
    model = registry.model("big:latest")
    assert registry.stats()["bytes_sent"] == model["transfer_size"]  # 1.0x, not 3.0x


def test_rate_limit_is_honoured(sim_factory: SimFactory, registry: Registry) -> None:
    rate = 2 * MB
    sim = _registry_sim(sim_factory, registry)
    registry.faults(rate=rate)
    total = registry.model("tiny:latest")["transfer_size"]
    began = time.monotonic()
    pulling = threading.Thread(target=lambda: sim.pull("tiny"))
    pulling.start()
    seen: list[tuple[float, int]] = []
    while pulling.is_alive():
        sent = registry.stats()["bytes_sent"]
        seen.append((time.monotonic() - began, sent))  # elapsed measured after the read
        time.sleep(0.05)
    pulling.join()
    # A one-sided bound: a slow machine only sends less, never more, than the link allows.
    chunk = 64 << 10
    for elapsed, sent in seen:
        assert sent <= chunk + rate * (elapsed + Throttle.WINDOW), (elapsed, sent)
    assert any(0 < sent < total for _, sent in seen)
    assert registry.stats()["bytes_sent"] == total


def test_token_challenge_then_one_retry(
    sim_factory: SimFactory, registry_factory: RegistryFactory
) -> None:
    registry = registry_factory(["tiny=1MB"], token="s3cret")
    r = httpx.get(registry.url + "/v2/library/tiny/manifests/latest")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith(f'Bearer realm="{registry.url}/token"')
    sim = _registry_sim(sim_factory, registry)
    assert _pull_lines(sim, "tiny")[-1] == {"status": "success"}


def test_errors_in_ollamas_words(
    sim_factory: SimFactory, registry_factory: RegistryFactory
) -> None:
    plain = registry_factory(["tiny=1MB"], plain=True)
    sim = _registry_sim(sim_factory, plain)
    # A registry that answers blobs with 200 and no Location (docker-registry on a filesystem)
    # fails exactly as Ollama fails (ollama issue 7244).
    assert _pull_lines(sim, "tiny")[-1] == {"error": "http: no Location header in response"}
    assert _pull_lines(sim, "ghost")[-1] == {"error": "pull model manifest: file does not exist"}
    host = f"127.0.0.1:{plain.port}"
    # The scheme of a name is dropped by Ollama's server: https unless the request is insecure.
    for name in (f"{host}/library/tiny", f"http://{host}/library/tiny"):
        error = _pull_lines(sim, name)[-1]["error"]
        assert error == (
            f'pull model manifest: Get "https://{host}/v2/library/tiny/manifests/latest": '
            "http: server gave HTTP response to HTTPS client"
        )
    error = _pull_lines(sim, "127.0.0.1:1/me/m", insecure=True)[-1]["error"]
    assert error == (
        'pull model manifest: Get "http://127.0.0.1:1/v2/me/m/manifests/latest": '
        "dial tcp 127.0.0.1:1: connect: connection refused"
    )
    error = _pull_lines(sim, "example.com/me/m")[-1]["error"]
    assert "pulls only from loopback" in error
    assert "OLLADIST_SIM_REGISTRY=example.com=http://127.0.0.1:PORT" in error


def test_insecure_pull_by_address_is_stored_under_that_host(
    sim_factory: SimFactory, registry: Registry
) -> None:
    sim = sim_factory()  # no mapping: the name's own loopback host is the registry
    host = f"127.0.0.1:{registry.port}"
    assert _pull_lines(sim, f"{host}/library/tiny", insecure=True)[-1] == {"status": "success"}
    assert (sim.models_dir / "manifests" / host / "library/tiny/latest").is_file()
    with sim.client() as c:
        assert [m["name"] for m in c.get("/api/tags").json()["models"]] == [
            f"{host}/library/tiny:latest"
        ]
