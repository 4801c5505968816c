"""The model store on disk, in Ollama's layout, shareable by several simulator instances.

    OLLAMA_MODELS/manifests/<host>/<namespace>/<model>/<tag>   JSON manifest
    OLLAMA_MODELS/blobs/sha256-<hex>                           content-addressed blobs

Nothing is cached in memory: every read goes to disk, so a pull or delete by another instance
sharing the directory is seen at once. Every write is a temp file renamed into place, so a
reader never sees half a manifest or half a blob.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from olladist.names import InvalidModelName, ModelName, parse_model_name
from olladist.sim.catalogue import (
    MEDIA_LICENSE,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    SIM_MARKER,
    sha256_digest,
)

_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")

# A blob younger than this is never pruned: another instance sharing the store may be between
# writing its blobs and writing the manifest that references them.
PRUNE_GRACE_SECONDS = 60.0
# Ollama (since 0.21) spares blobs younger than this when it prunes at start.
START_PRUNE_GRACE_SECONDS = 3600.0
# The metadata line of a weights blob is read from at most this many leading bytes.
_HEAD_BYTES = 1 << 20


class StoreError(OSError):
    pass


def digest_hex(digest: str) -> str:
    """``sha256:<hex>`` or ``sha256-<hex>`` to ``<hex>``; ValueError if malformed."""
    match = _DIGEST.match(digest)
    if not match:
        raise ValueError(f"invalid digest format {digest!r}")
    return match.group(1)


@dataclass(frozen=True)
class StoredModel:
    name: ModelName
    digest: str  # hex sha256 of the manifest bytes
    manifest: dict[str, Any]
    modified_at: float
    config: dict[str, Any]

    @property
    def size(self) -> int:
        return sum(int(layer.get("size", 0)) for layer in self.manifest.get("layers", []))

    def layer_digest(self, media_type: str) -> str | None:
        for layer in self.manifest.get("layers", []):
            if layer.get("mediaType") == media_type:
                return str(layer["digest"])
        return None

    def details(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "parent_model": "",
            "format": cfg.get("model_format", "gguf"),
            "family": cfg.get("model_family", ""),
            "families": cfg.get("model_families") or None,
            "parameter_size": cfg.get("model_type", ""),
            "quantization_level": cfg.get("file_type", ""),
        }


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser()

    @property
    def manifests_dir(self) -> Path:
        return self.root / "manifests"

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs"

    def ensure(self) -> None:
        self.manifests_dir.mkdir(parents=True, exist_ok=True)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)

    # -- blobs ---------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / f"sha256-{digest_hex(digest)}"

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    def write_blob(self, data: bytes) -> str:
        digest = sha256_digest(data)
        path = self.blob_path(digest)
        if not path.is_file():
            _atomic_write(path, data)
        return digest

    def adopt_blob(self, tmp: Path, digest: str) -> None:
        """Move an uploaded temp file (already hashed by the caller) into place."""
        path = self.blob_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)

    def blob_tempfile(self) -> tuple[int, Path]:
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.blobs_dir, prefix=".upload-")
        return fd, Path(name)

    # -- manifests -----------------------------------------------------------------------------

    def manifest_path(self, name: ModelName) -> Path:
        return self.manifests_dir.joinpath(*name.path_parts)

    def get(self, name: ModelName) -> StoredModel | None:
        return self._load(name, self.manifest_path(name))

    def list_models(self) -> list[StoredModel]:
        """Every readable model, most recently modified first (as /api/tags orders them)."""
        found: list[StoredModel] = []
        base = self.manifests_dir
        if not base.is_dir():
            return found
        for path in base.glob("*/*/*/*"):
            if not path.is_file() or path.name.startswith("."):
                continue
            host, namespace, model, tag = path.relative_to(base).parts
            try:
                name = parse_model_name(f"{host}/{namespace}/{model}:{tag}")
            except InvalidModelName:
                continue
            stored = self._load(name, path)
            if stored is not None:
                found.append(stored)
        found.sort(key=lambda m: m.modified_at, reverse=True)
        return found

    def write_manifest(self, name: ModelName, manifest: bytes) -> None:
        _atomic_write(self.manifest_path(name), manifest)

    def delete(self, name: ModelName) -> bool:
        path = self.manifest_path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        # Drop the empty directories Ollama would prune, then any layer nothing references.
        for parent in list(path.parents)[:3]:
            with contextlib.suppress(OSError):
                parent.rmdir()
        self.prune_blobs()
        return True

    def copy(self, source: ModelName, destination: ModelName) -> bool:
        try:
            data = self.manifest_path(source).read_bytes()
        except FileNotFoundError:
            return False
        self.write_manifest(destination, data)
        return True

    def delete_unused(self, digests: set[str]) -> list[str]:
        """Delete these blobs unless a manifest still references them (Ollama's
        deleteUnusedLayers, after a pull replaced a model's layers)."""
        referenced: set[str] = set()
        for model in self.list_models():
            referenced.update(str(layer["digest"]) for layer in model.manifest.get("layers", []))
            referenced.add(str(model.manifest.get("config", {}).get("digest", "")))
        removed = []
        for digest in sorted(digests - referenced):
            with contextlib.suppress(FileNotFoundError, ValueError):
                self.blob_path(digest).unlink()
                removed.append(digest)
        return removed

    def prune_at_start(self, grace: float = START_PRUNE_GRACE_SECONDS) -> list[str]:
        """What ``ollama serve`` does when it starts, unless OLLAMA_NOPRUNE: delete blobs no
        manifest references and leftovers that are not blobs (partial downloads), if older
        than an hour (Ollama 0.21 and later; earlier versions delete them whatever their age),
        then empty manifest directories. Nothing is pruned if a manifest is unreadable."""
        removed: list[str] = []
        if not self.blobs_dir.is_dir():
            return removed
        referenced: set[str] = set()
        for path in self.manifests_dir.rglob("*"):
            if not path.is_file() or path.name.startswith("."):
                continue
            try:
                manifest = json.loads(path.read_bytes())
                referenced.update(str(layer["digest"]) for layer in manifest.get("layers", []))
                referenced.add(str(manifest.get("config", {}).get("digest", "")))
            except (OSError, ValueError, TypeError, KeyError, AttributeError):
                return removed  # "corrupt manifests detected, skipping prune operation"
        now = time.time()
        for blob in self.blobs_dir.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if not blob.is_file() or now - blob.stat().st_mtime < grace:
                    continue
                digest = blob.name.replace("-", ":", 1)
                if _DIGEST.match(blob.name) and digest in referenced:
                    continue
                blob.unlink()
                removed.append(blob.name)
        for directory in sorted(self.manifests_dir.rglob("*"), reverse=True):
            if directory.is_dir():
                with contextlib.suppress(OSError):
                    directory.rmdir()  # only empty ones go
        return removed

    def prune_blobs(self) -> list[str]:
        """Remove blobs no manifest references (older than the grace period)."""
        referenced: set[str] = set()
        for model in self.list_models():
            referenced.update(str(layer["digest"]) for layer in model.manifest.get("layers", []))
            referenced.add(str(model.manifest.get("config", {}).get("digest", "")))
        removed: list[str] = []
        now = time.time()
        if not self.blobs_dir.is_dir():
            return removed
        for blob in self.blobs_dir.glob("sha256-*"):
            digest = "sha256:" + blob.name.removeprefix("sha256-")
            if digest in referenced:
                continue
            with contextlib.suppress(FileNotFoundError):
                if now - blob.stat().st_mtime < PRUNE_GRACE_SECONDS:
                    continue
                blob.unlink()
                removed.append(digest)
        return removed

    # -- what /api/show and the scheduler read ------------------------------------------------

    def read_text_layer(self, model: StoredModel, media_type: str) -> str:
        digest = model.layer_digest(media_type)
        if digest is None:
            return ""
        try:
            return self.read_blob(digest).decode(errors="replace")
        except OSError:
            return ""

    def sim_metadata(self, model: StoredModel) -> dict[str, Any]:
        """The stand-in weights blob: capabilities and model_info ({} if not ours).

        Its first line is a JSON object (a generated model follows it with filler bytes up to
        its size), so only the head is read, as Ollama reads only a GGUF's header.
        """
        digest = model.layer_digest(MEDIA_MODEL)
        if digest is None:
            return {}
        try:
            with self.blob_path(digest).open("rb") as blob:
                head = blob.read(_HEAD_BYTES).split(b"\n", 1)[0]
            data = json.loads(head)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) and data.get(SIM_MARKER) else {}

    def capabilities(self, model: StoredModel) -> list[str]:
        caps = self.sim_metadata(model).get("capabilities")
        return [str(c) for c in caps] if isinstance(caps, list) else ["completion"]

    def params(self, model: StoredModel) -> dict[str, Any]:
        text = self.read_text_layer(model, MEDIA_PARAMS)
        try:
            data = json.loads(text) if text else {}
        except json.JSONDecodeError:
            return {}
        return data if isinstance(data, dict) else {}

    def template(self, model: StoredModel) -> str:
        return self.read_text_layer(model, MEDIA_TEMPLATE)

    def system(self, model: StoredModel) -> str:
        return self.read_text_layer(model, MEDIA_SYSTEM)

    def license(self, model: StoredModel) -> str:
        return self.read_text_layer(model, MEDIA_LICENSE)

    def _load(self, name: ModelName, path: Path) -> StoredModel | None:
        try:
            data = path.read_bytes()
            mtime = path.stat().st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            manifest = json.loads(data)
        except json.JSONDecodeError:
            return None
        if not isinstance(manifest, dict):
            return None
        config: dict[str, Any] = {}
        config_digest = manifest.get("config", {}).get("digest")
        if config_digest:
            try:
                loaded = json.loads(self.read_blob(str(config_digest)))
                config = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                config = {}
        digest = sha256_digest(data).removeprefix("sha256:")
        return StoredModel(name, digest, manifest, mtime, config)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
