"""The built-in model catalogue and the deterministic files a pull writes for each model.

A catalogue entry becomes an Ollama manifest plus blobs: a small JSON "weights" blob standing in
for the GGUF (it carries the model's metadata, so /api/show reads it from disk like Ollama reads
the GGUF header), template, license, params and config blobs. Every byte is a pure function of
the entry, so the same model pulled by any simulator anywhere has the same digests, and the
manifest's declared layer sizes add up to the real registry size of the model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from olladist.names import InvalidModelName, normalize_model
from olladist.sim.errors import SimConfigError

MEDIA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_LICENSE = "application/vnd.ollama.image.license"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_SYSTEM = "application/vnd.ollama.image.system"

SIM_MARKER = "olladist-sim"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Layer:
    media_type: str
    data: bytes
    declared_size: int  # what the manifest says; the model layer claims the real size

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    def manifest_entry(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.declared_size}


@dataclass(frozen=True)
class Artifacts:
    """Everything a pull writes: blobs (layers + config) and the manifest bytes."""

    layers: tuple[Layer, ...]
    config: Layer
    manifest: bytes

    @property
    def digest(self) -> str:
        """The model digest: sha256 of the manifest, hex, as /api/tags shows it."""
        return hashlib.sha256(self.manifest).hexdigest()

    @property
    def blobs(self) -> tuple[Layer, ...]:
        return (*self.layers, self.config)


@dataclass(frozen=True)
class CatalogueEntry:
    name: str  # canonical short name
    size: int
    family: str
    parameter_size: str
    parameter_count: int
    quantization: str
    context_length: int
    embedding_length: int
    capabilities: tuple[str, ...]
    template: str
    license: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    aliases: tuple[str, ...] = ()

    def model_info(self) -> dict[str, Any]:
        """GGUF-style metadata, as /api/show returns it in ``model_info``."""
        return {
            "general.architecture": self.family,
            "general.parameter_count": self.parameter_count,
            "general.quantization_version": 2,
            f"{self.family}.context_length": self.context_length,
            f"{self.family}.embedding_length": self.embedding_length,
        }

    def artifacts(self) -> Artifacts:
        weights = canonical_json(
            {
                SIM_MARKER: 1,
                "note": "stand-in for the GGUF weights; size is simulated",
                "model": self.name,
                "capabilities": list(self.capabilities),
                "model_info": self.model_info(),
            }
        )
        small = [Layer(MEDIA_TEMPLATE, self.template.encode(), len(self.template.encode()))]
        if self.license:
            small.append(Layer(MEDIA_LICENSE, self.license.encode(), len(self.license.encode())))
        if self.params:
            params = canonical_json(self.params)
            small.append(Layer(MEDIA_PARAMS, params, len(params)))
        return build_artifacts(
            Layer(MEDIA_MODEL, weights, 0), small, self.config_fields(), total_size=self.size
        )

    def config_fields(self) -> dict[str, Any]:
        return {
            "model_format": "gguf",
            "model_family": self.family,
            "model_families": [self.family],
            "model_type": self.parameter_size,
            "file_type": self.quantization,
        }


def build_artifacts(
    model_layer: Layer, others: list[Layer], config_fields: dict[str, Any], total_size: int
) -> Artifacts:
    """Assemble manifest and config; the model layer's declared size makes up ``total_size``."""
    rest = sum(layer.declared_size for layer in others)
    model = Layer(model_layer.media_type, model_layer.data, max(total_size - rest, 0))
    layers = (model, *others)
    config_data = canonical_json(
        {
            **config_fields,
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
        }
    )
    config = Layer(MEDIA_CONFIG, config_data, len(config_data))
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": config.manifest_entry(),
            "layers": [layer.manifest_entry() for layer in layers],
        }
    )
    return Artifacts(layers, config, manifest)


@dataclass(frozen=True)
class Catalogue:
    entries: tuple[CatalogueEntry, ...]

    def lookup(self, name: str) -> CatalogueEntry | None:
        """Find a model by canonical name or alias (``llama3.2`` is ``llama3.2:latest``)."""
        try:
            key = normalize_model(name)
        except InvalidModelName:
            return None
        for entry in self.entries:
            if key == entry.name or key in entry.aliases:
                return entry
        return None

    def names(self) -> list[str]:
        return sorted(n for e in self.entries for n in (e.name, *e.aliases))


def _entry(raw: dict[str, Any]) -> CatalogueEntry:
    try:
        return CatalogueEntry(
            name=normalize_model(raw["name"]),
            size=int(raw["size"]),
            family=str(raw["family"]),
            parameter_size=str(raw["parameter_size"]),
            parameter_count=int(raw["parameter_count"]),
            quantization=str(raw["quantization"]),
            context_length=int(raw["context_length"]),
            embedding_length=int(raw["embedding_length"]),
            capabilities=tuple(raw["capabilities"]),
            template=str(raw.get("template", "{{ .Prompt }}")),
            license=str(raw.get("license", "")),
            params=dict(raw.get("params", {})),
            aliases=tuple(normalize_model(a) for a in raw.get("aliases", [])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SimConfigError(f"bad catalogue entry {raw.get('name', '?')!r}: {exc!r}") from exc


def load_catalogue(path: Path | None = None) -> Catalogue:
    """Load the built-in catalogue, or the file OLLADIST_SIM_CATALOGUE names."""
    try:
        if path is None:
            text = resources.files("olladist.sim").joinpath("catalogue.json").read_text()
        else:
            text = path.read_text()
        data = json.loads(text)
    except (OSError, json.JSONDecodeError) as exc:
        raise SimConfigError(f"cannot read catalogue {path or 'built-in'}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise SimConfigError('a catalogue is a JSON object with a "models" list')
    return Catalogue(tuple(_entry(raw) for raw in data["models"]))
