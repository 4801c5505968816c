"""The errors olladist reports, and what each means for the exit code.

    OlladistError          exit 2: "error: <message>" on stderr, plus "hint: <hint>"
    ├── SpecError          the spec is invalid; carries every Problem found (file:line: field: msg)
    ├── RenderError        a template failed, or a rendered file failed its validator
    ├── ToolError          an external tool (haproxy, systemctl, ...) is missing or failed
    └── ApplyError         applying a plan failed part-way (what was done is reported)

Third-party exceptions are translated into these at the boundary (``raise ... from exc``), so the
CLI prints one line and a hint; tracebacks appear only with ``--debug``.
"""

from __future__ import annotations

from dataclasses import dataclass


class OlladistError(Exception):
    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


# A place in the merged spec document: keys and list indexes, e.g. ("models", 2, "replicas").
# Pure code (placement) reports problems at a Loc; specload turns each into file:line.
Loc = tuple[str | int, ...]


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the spec, located as precisely as we can."""

    file: str  # relative to the spec directory, e.g. "nodes/gpu-a.yaml"
    line: int  # 1-based; 0 when unknown
    field: str  # e.g. "instances[0].port"; "" for the whole file
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class SpecError(OlladistError):
    def __init__(self, problems: list[Problem], hint: str | None = None) -> None:
        self.problems = sorted(set(problems))
        n = len(self.problems)
        head = f"invalid spec ({n} problem{'s' if n != 1 else ''})"
        super().__init__(head + "".join(f"\n  {p}" for p in self.problems), hint)


class RenderError(OlladistError):
    pass


class ToolError(OlladistError):
    pass


class ApplyError(OlladistError):
    pass
