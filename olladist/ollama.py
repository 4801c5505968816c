"""A small client for the parts of the Ollama API that olladist drives (model store, loading).

One httpx client with explicit timeouts. Errors become ``OllamaError`` naming the instance and
the operation; transient ones (connection refused, 5xx) are marked so callers can retry.
Ollama streams pull progress as NDJSON and reports failures either as an HTTP error with
``{"error": ...}`` or as an ``{"error": ...}`` line in a 200 stream; both are handled here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from olladist.errors import OlladistError
from olladist.layout import INSTANCE_HOST
from olladist.names import normalize_model


def instance_url(port: int) -> str:
    """Where olladist reaches this node's instance on ``port``."""
    return f"http://{INSTANCE_HOST}:{port}"


def wait_healthy(
    ports: list[int],
    timeout: float,
    on_wait: Callable[[], None] | None = None,
    gone: Callable[[], bool] | None = None,
) -> list[int]:
    """Wait until every instance answers /api/version; returns the ports that never did.
    ``on_wait`` is called at every poll (progress, for the daemon's watchdog). ``gone``, asked
    once a second (with systemd each look runs systemctl), says the process has exited: an
    instance that exits at start will never answer, so the wait ends at once."""
    deadline = time.monotonic() + timeout
    pending = list(ports)
    looked = time.monotonic()
    while pending and time.monotonic() < deadline:
        for port in list(pending):
            with OllamaClient(instance_url(port), timeout=2.0) as c:
                if c.healthy():
                    pending.remove(port)
        if pending:
            if gone is not None and time.monotonic() - looked >= 1.0:
                looked = time.monotonic()
                if gone():
                    break
            if on_wait is not None:
                on_wait()
            time.sleep(0.1)
    return pending


class OllamaError(OlladistError):
    def __init__(self, message: str, *, transient: bool = False, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.transient = transient


@dataclass(frozen=True)
class StoredModel:
    name: str  # canonical (normalize_model)
    digest: str  # hex, no "sha256:" prefix
    size: int


@dataclass(frozen=True)
class LoadedModel:
    name: str
    expires_at: str


@dataclass(frozen=True)
class Progress:
    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0


def strip_digest(digest: str) -> str:
    return digest.removeprefix("sha256:")


class OllamaClient:
    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=3.0),
            transport=transport,
            trust_env=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OllamaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail(self, op: str, exc: Exception) -> OllamaError:
        if isinstance(exc, httpx.HTTPStatusError):
            body = _error_text(exc.response)
            transient = exc.response.status_code >= 500
            return OllamaError(f"{op} at {self.base_url}: {body}", transient=transient)
        return OllamaError(f"{op} at {self.base_url}: {exc}", transient=True)

    def _request(self, method: str, path: str, op: str, **kw: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kw)
            resp.raise_for_status()
            return resp.json() if resp.content else None
        except (httpx.HTTPError, ValueError) as exc:
            raise self._fail(op, exc) from exc

    def version(self) -> str:
        return str(self._request("GET", "/api/version", "version")["version"])

    def healthy(self) -> bool:
        try:
            self.version()
        except OllamaError:
            return False
        return True

    def tags(self) -> dict[str, StoredModel]:
        data = self._request("GET", "/api/tags", "list models")
        out = {}
        for m in data.get("models") or []:
            name = normalize_model(m.get("model") or m["name"])
            out[name] = StoredModel(name, strip_digest(m.get("digest", "")), int(m.get("size", 0)))
        return out

    def ps(self) -> dict[str, LoadedModel]:
        data = self._request("GET", "/api/ps", "list loaded models")
        out = {}
        for m in data.get("models") or []:
            name = normalize_model(m.get("model") or m["name"])
            out[name] = LoadedModel(name, str(m.get("expires_at", "")))
        return out

    def delete(self, model: str) -> None:
        self._request("DELETE", "/api/delete", f"delete {model}", json={"model": model})

    def copy(self, source: str, destination: str) -> None:
        self._request(
            "POST",
            "/api/copy",
            f"copy {source} to {destination}",
            json={"source": source, "destination": destination},
        )

    def load(self, model: str, timeout: float = 900.0, keep_alive: str | None = None) -> None:
        """Load ``model`` into memory: a generate with no prompt, as Ollama documents.
        ``keep_alive``: a Go duration ("30m"), "0" or "-1" (forever); None: the server's."""
        body: dict[str, object] = {"model": model, "stream": False}
        if keep_alive is not None:
            # Ollama reads a bare number as seconds and a string as a Go duration.
            body["keep_alive"] = int(keep_alive) if keep_alive in ("0", "-1") else keep_alive
        self._request("POST", "/api/generate", f"load {model}", json=body, timeout=timeout)

    def pull(
        self,
        model: str,
        on_progress: Callable[[Progress], None] | None = None,
        timeout: float = 300.0,
    ) -> None:
        """Pull ``model``, streaming progress; ``timeout`` bounds the silence between lines."""
        op = f"pull {model}"
        try:
            with self._http.stream(
                "POST",
                "/api/pull",
                json={"model": model, "stream": True},
                timeout=httpx.Timeout(timeout, connect=3.0),
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    resp.raise_for_status()
                last = ""
                for line in _lines(resp.iter_lines()):
                    if "error" in line:
                        raise OllamaError(f"{op} at {self.base_url}: {line['error']}")
                    p = Progress(
                        str(line.get("status", "")),
                        str(line.get("digest", "")),
                        int(line.get("total") or 0),
                        int(line.get("completed") or 0),
                    )
                    last = p.status
                    if on_progress:
                        on_progress(p)
                if last != "success":
                    raise OllamaError(
                        f"{op} at {self.base_url}: stream ended before success (last: {last!r})",
                        transient=True,
                    )
        except httpx.HTTPError as exc:
            raise self._fail(op, exc) from exc


def _lines(it: Iterator[str]) -> Iterator[dict[str, Any]]:
    for raw in it:
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict):
            yield obj


def _error_text(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("error") or resp.text)
    except (ValueError, AttributeError):
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
