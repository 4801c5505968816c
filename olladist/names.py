"""Model names as Ollama understands them.

``llama3``, ``llama3:latest`` and ``registry.ollama.ai/library/llama3:latest`` are one model.
The canonical short form keeps the tag and drops the default registry and namespace.
"""

from __future__ import annotations

DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"


def normalize_model(name: str) -> str:
    """Return the canonical short form: ``model:tag``, ``ns/model:tag`` or ``host/ns/model:tag``."""
    name = name.strip()
    path, tag = name, DEFAULT_TAG
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = name.rsplit(":", 1)
    parts = path.split("/")
    if len(parts) == 3 and parts[0] == DEFAULT_REGISTRY:
        parts = parts[1:]
    if len(parts) == 2 and parts[0] == DEFAULT_NAMESPACE:
        parts = parts[1:]
    return "/".join(parts).lower() + ":" + tag.lower()
