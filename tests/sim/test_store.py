from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from olladist.names import parse_model_name
from olladist.sim.catalogue import load_catalogue
from olladist.sim.store import ModelStore

from .conftest import SimFactory

REQUIRED = [
    "llama3.1:8b",
    "llama3.2:1b",
    "llama3.2:3b",
    "qwen2.5:0.5b",
    "qwen2.5:7b",
    "qwen2.5:72b",
    "mistral:7b",
    "gemma2:2b",
    "phi3:mini",
    "nomic-embed-text:latest",
    "all-minilm:latest",
    "tinyllama:latest",
]


def _write(store: ModelStore, name: str) -> str:
    entry = load_catalogue().lookup(name)
    assert entry is not None
    artifacts = entry.artifacts()
    for blob in artifacts.blobs:
        store.write_blob(blob.data)
    store.write_manifest(parse_model_name(name), artifacts.manifest)
    return artifacts.digest


def test_catalogue_holds_required_models_with_stable_digests() -> None:
    catalogue = load_catalogue()
    for name in REQUIRED:
        entry = catalogue.lookup(name)
        assert entry is not None, name
        assert entry.artifacts().digest == entry.artifacts().digest
        manifest = json.loads(entry.artifacts().manifest)
        assert sum(layer["size"] for layer in manifest["layers"]) == entry.size
    assert catalogue.lookup("llama3.2") == catalogue.lookup("llama3.2:3b")
    assert catalogue.lookup("registry.ollama.ai/library/mistral") is not None
    assert catalogue.lookup("not-a-model") is None


def test_two_stores_sharing_a_directory_see_each_other(tmp_path: Path) -> None:
    a, b = ModelStore(tmp_path), ModelStore(tmp_path)
    assert b.list_models() == []
    digest = _write(a, "llama3.2:1b")
    seen = b.get(parse_model_name("registry.ollama.ai/library/llama3.2:1b"))
    assert seen is not None
    assert seen.digest == digest
    manifest_path = tmp_path / "manifests/registry.ollama.ai/library/llama3.2/1b"
    assert hashlib.sha256(manifest_path.read_bytes()).hexdigest() == digest
    for layer in seen.manifest["layers"]:
        blob = b.blob_path(layer["digest"])
        assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == layer["digest"]
        assert blob.stat().st_size < 10_000  # small stand-ins, not gigabytes
    assert seen.size == 1321098329
    assert b.capabilities(seen) == ["completion", "tools"]

    assert b.delete(parse_model_name("llama3.2:1b"))
    assert a.get(parse_model_name("llama3.2:1b")) is None
    assert a.list_models() == []


def test_writes_leave_no_temp_files_and_copy_keeps_digest(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    digest = _write(store, "qwen2.5:0.5b")
    assert store.copy(parse_model_name("qwen2.5:0.5b"), parse_model_name("me/qwen:small"))
    copied = store.get(parse_model_name("me/qwen:small"))
    assert copied is not None
    assert copied.digest == digest
    names = [m.name.short for m in store.list_models()]
    assert sorted(names) == ["me/qwen:small", "qwen2.5:0.5b"]
    leftovers = [p for p in tmp_path.rglob(".*") if p.is_file()]
    assert leftovers == []


def test_delete_prunes_only_unreferenced_old_blobs(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _write(store, "llama3.2:1b")
    _write(store, "llama3.2:3b")  # shares the template layer with 1b
    old = time.time() - 3600
    for blob in store.blobs_dir.iterdir():
        os.utime(blob, (old, old))
    before = {p.name for p in store.blobs_dir.iterdir()}
    assert store.delete(parse_model_name("llama3.2:1b"))
    after = {p.name for p in store.blobs_dir.iterdir()}
    kept = store.get(parse_model_name("llama3.2:3b"))
    assert kept is not None
    for layer in kept.manifest["layers"]:
        assert store.has_blob(layer["digest"])
    assert after < before
    assert not store.delete(parse_model_name("llama3.2:1b"))


@pytest.mark.integration
def test_two_simulators_share_one_store(sim_factory: SimFactory, tmp_path: Path) -> None:
    shared = tmp_path / "shared-models"
    a = sim_factory(models_dir=shared)
    b = sim_factory(models_dir=shared)
    a.pull("qwen2.5:0.5b")
    with b.client() as c:
        tags = c.get("/api/tags").json()["models"]
        assert [m["name"] for m in tags] == ["qwen2.5:0.5b"]
        r = c.post("/api/generate", json={"model": "qwen2.5:0.5b", "prompt": "hi", "stream": False})
        assert r.status_code == 200
        assert c.request("DELETE", "/api/delete", json={"model": "qwen2.5:0.5b"}).status_code == 200
    with a.client() as c:
        assert c.get("/api/tags").json()["models"] == []
        r = c.post("/api/show", json={"model": "qwen2.5:0.5b"})
        assert r.status_code == 404
        assert r.json() == {"error": "model 'qwen2.5:0.5b' not found"}


def test_prune_at_start_like_ollama_serve(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _write(store, "qwen2.5:0.5b")
    kept = {p.name for p in store.blobs_dir.iterdir()}
    orphan = store.blobs_dir / ("sha256-" + "0" * 64)
    partial = store.blobs_dir / ("sha256-" + "1" * 64 + "-partial")
    fresh = store.blobs_dir / ("sha256-" + "2" * 64)
    for path in (orphan, partial, fresh):
        path.write_bytes(b"x")
    old = time.time() - 7200
    for path in [*store.blobs_dir.iterdir()]:
        if path != fresh:
            os.utime(path, (old, old))
    (store.manifests_dir / "registry.ollama.ai/library/empty").mkdir(parents=True)
    removed = store.prune_at_start()
    assert sorted(removed) == sorted([orphan.name, partial.name])
    assert {p.name for p in store.blobs_dir.iterdir()} == kept | {fresh.name}  # under an hour
    assert not (store.manifests_dir / "registry.ollama.ai/library/empty").exists()
    # A manifest that cannot be read stops the prune altogether, as in Ollama.
    os.utime(fresh, (old, old))
    (store.manifests_dir / "registry.ollama.ai/library/bad").mkdir(parents=True)
    (store.manifests_dir / "registry.ollama.ai/library/bad/latest").write_text("{not json")
    assert store.prune_at_start() == []
    assert fresh.exists()
