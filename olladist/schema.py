"""JSON Schema of the spec, for editors (yaml-language-server) and other tools.

The files under docs/schema/ are this output, kept in the repo and checked by a test."""

from __future__ import annotations

from typing import Any

from olladist.spec import Model, Node, Spec

PARTS: dict[str, Any] = {"cluster": Spec, "node": Node, "model": Model}


def schema(part: str = "cluster") -> dict[str, Any]:
    out: dict[str, Any] = PARTS[part].model_json_schema(mode="validation")
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    out["$id"] = f"https://olladist.dev/schema/{part}.schema.json"
    return out
