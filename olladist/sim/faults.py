"""Fault injection: what a test can make the simulator do wrong, on purpose.

Faults come from ``OLLADIST_SIM_FAULTS`` at start-up and from ``POST /_sim/faults`` at run time
(which replaces the whole set; ``DELETE /_sim/faults`` clears it). Both take the same keys, as
JSON (``{"hang": true, "models": ["llama3.2:1b"]}``) or, in the environment only, as a
comma list (``hang,slow=4,error_mid_stream=2,models=llama3.2:1b+qwen2.5:0.5b``).

    hang              inference requests are accepted and never answered (GET / and
                      /api/version still answer, like a runner wedged behind a healthy server)
    hang_all          every request except /_sim/* is accepted and never answered
    crash             the next inference request kills the process (exit status 70) before
                      answering: the client sees the connection drop
    crash_mid_stream=N  streams send N tokens, then the process exits (status 70): the
                      client sees a stream cut short with no final chunk
    slow=F            loads, prompt evaluation and token generation take F times longer
    error_mid_stream=N  streams send N tokens, then a line {"error": ...} (status stays 200);
                      non-streaming requests get a 500 with that error
    refuse_pulls      /api/pull fails after "pulling manifest", as when the registry is
                      unreachable
    disk_full         /api/pull fails while writing the first layer: no space left on device
    exit_at_start     the process exits with status 1 before it listens, as `ollama serve`
                      does with an environment it cannot use (environment only)
    models=a+b        restrict the faults above, except hang_all, to these models (default:
                      every model)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from olladist.names import InvalidModelName, normalize_model
from olladist.sim.errors import SimConfigError


@dataclass(frozen=True)
class Faults:
    hang: bool = False
    hang_all: bool = False
    crash: bool = False
    slow: float = 1.0
    error_mid_stream: int | None = None
    crash_mid_stream: int | None = None
    refuse_pulls: bool = False
    disk_full: bool = False
    exit_at_start: bool = False
    models: tuple[str, ...] = ()

    def applies_to(self, model: str | None) -> bool:
        """Whether model-scoped faults hit this model (None: a request without a model)."""
        if not self.models:
            return True
        return model is not None and model in self.models

    def for_model(self, model: str | None) -> Faults:
        """The faults in force for one request: none if the model is out of scope."""
        return self if self.applies_to(model) else Faults()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["models"] = list(self.models)
        return data


_BOOL_KEYS = {"hang", "hang_all", "crash", "refuse_pulls", "disk_full", "exit_at_start"}
_COUNT_KEYS = {"error_mid_stream", "crash_mid_stream"}


def _with_flag(faults: Faults, key: str, value: bool) -> Faults:
    flags: dict[str, Any] = {k: getattr(faults, k) for k in _BOOL_KEYS}
    flags[key] = value
    return replace(faults, **flags)


def faults_from_mapping(data: Mapping[str, Any]) -> Faults:
    """Validate a JSON object of faults; unknown keys are errors."""
    faults = Faults()
    for key, value in data.items():
        if key in _BOOL_KEYS:
            if not isinstance(value, bool):
                raise SimConfigError(f"fault {key!r} takes true or false")
            faults = _with_flag(faults, key, value)
        elif key == "slow":
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise SimConfigError("fault 'slow' takes a factor > 0")
            faults = replace(faults, slow=float(value))
        elif key in _COUNT_KEYS:
            if value is None or value is False:
                continue
            count = 2 if value is True else value
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise SimConfigError(f"fault {key!r} takes a token count >= 0")
            if key == "error_mid_stream":
                faults = replace(faults, error_mid_stream=count)
            else:
                faults = replace(faults, crash_mid_stream=count)
        elif key == "models":
            if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
                raise SimConfigError("fault 'models' takes a list of model names")
            try:
                faults = replace(faults, models=tuple(sorted({normalize_model(m) for m in value})))
            except InvalidModelName as exc:
                raise SimConfigError(str(exc)) from exc
        else:
            known = ", ".join(sorted([*_BOOL_KEYS, *_COUNT_KEYS, "slow", "models"]))
            raise SimConfigError(f"unknown fault {key!r} (known: {known})")
    return faults


def parse_faults(text: str) -> Faults:
    """Parse OLLADIST_SIM_FAULTS: a JSON object or ``key[=value],...``."""
    text = text.strip()
    if not text:
        return Faults()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SimConfigError(f"OLLADIST_SIM_FAULTS is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise SimConfigError("OLLADIST_SIM_FAULTS must be a JSON object")
        return faults_from_mapping(data)
    items: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            items[key] = True
        elif key == "models":
            items[key] = [m for m in raw.split("+") if m]
        elif key in {"slow", *_COUNT_KEYS}:
            try:
                items[key] = float(raw) if key == "slow" else int(raw)
            except ValueError:
                raise SimConfigError(f"fault {key!r}: {raw!r} is not a number") from None
        else:
            items[key] = raw.strip().lower() in {"1", "true", "yes", "on"}
    return faults_from_mapping(items)
