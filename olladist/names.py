"""Model names as Ollama understands them.

``llama3``, ``llama3:latest`` and ``registry.ollama.ai/library/llama3:latest`` are one model.
The canonical short form keeps the tag and drops the default registry and namespace, as
Ollama's ``DisplayShortest`` does: ``model:tag``, ``ns/model:tag`` or ``host/ns/model:tag``.
Ollama matches names case-insensitively, so the canonical form is lower case.

This module is pure; the reconciler, the gateway and the simulator share it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

# Ollama's own rules (types/model/name.go): parts start with a letter or digit; hosts may
# carry a port; tags may start with an underscore.
_PART = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,79}$")
_HOST = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,349}$")
_TAG = re.compile(r"^[a-z0-9_][a-z0-9_.-]{0,79}$")
_DIGEST = re.compile(r"^sha256[:-][0-9a-f]{64}$")


class InvalidModelName(ValueError):
    """The string is not a model name Ollama would accept."""


@dataclass(frozen=True)
class ModelName:
    """A fully qualified model name; every field is lower case."""

    host: str = DEFAULT_REGISTRY
    namespace: str = DEFAULT_NAMESPACE
    model: str = ""
    tag: str = DEFAULT_TAG
    insecure_scheme: bool = False  # the name was given as http://host/...

    @property
    def short(self) -> str:
        """The canonical short form (what /api/tags shows)."""
        if self.host != DEFAULT_REGISTRY:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def path_parts(self) -> tuple[str, str, str, str]:
        """The manifest path under ``manifests/`` in Ollama's store layout."""
        return (self.host, self.namespace, self.model, self.tag)


def parse_model_name(name: str) -> ModelName:
    """Parse ``[scheme://][[host/]namespace/]model[:tag][@digest]``; raise InvalidModelName.

    A trailing ``@sha256:...`` digest is accepted and dropped: the name it qualifies is the same.
    """
    text = name.strip().lower()
    insecure = False
    for scheme in ("http://", "https://"):
        if text.startswith(scheme):
            insecure = scheme == "http://"
            text = text[len(scheme) :]
    if "@" in text:
        text, digest = text.rsplit("@", 1)
        if not _DIGEST.match(digest):
            raise InvalidModelName(f"invalid digest in model name {name!r}")
    tag = DEFAULT_TAG
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        text, tag = text.rsplit(":", 1)
    parts = text.split("/")
    if len(parts) > 3 or not all(parts):
        raise InvalidModelName(f"invalid model name {name!r}")
    host, namespace = DEFAULT_REGISTRY, DEFAULT_NAMESPACE
    if len(parts) == 3:
        host, namespace, model = parts
    elif len(parts) == 2:
        namespace, model = parts
    else:
        (model,) = parts
    if not (
        _HOST.match(host) and _PART.match(namespace) and _PART.match(model) and _TAG.match(tag)
    ):
        raise InvalidModelName(f"invalid model name {name!r}")
    return ModelName(host, namespace, model, tag, insecure)


def normalize_model(name: str) -> str:
    """Return the canonical short form: ``model:tag``, ``ns/model:tag`` or ``host/ns/model:tag``.

    Raises InvalidModelName for a string Ollama would reject.
    """
    return parse_model_name(name).short


def same_model(a: str, b: str) -> bool:
    """True when two names denote the same model (both must be valid names)."""
    return normalize_model(a) == normalize_model(b)
