"""The import rules of docs/architecture.md, checked on the source with `ast`.

Every import counts: at the top, inside a function (deferred) and under TYPE_CHECKING, since a
deferred import is still a dependency and a cycle behind one is still a cycle.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "olladist"

# The rooms, as docs/architecture.md draws them. A module in no room fails the test below, so
# a new module has to be given one (and the map kept true).
FOUNDATION = {"olladist", "olladist.errors", "olladist.layout", "olladist.files", "olladist.names"}
SPEC = {"olladist.spec", "olladist.specload", "olladist.placement", "olladist.schema"}
RENDER = {
    "olladist.render",
    "olladist.templating",
    "olladist.units",
    "olladist.gateway",
    "olladist.gateway.topology",
    "olladist.gateway.render",
    "olladist.gateway.fair",
    "olladist.gateway.lua",
}
PLAN = {"olladist.plan", "olladist.rollout", "olladist.gate"}
NODE_LOCAL = {"olladist.nodelocal"}  # node-local settings as values; render takes them
CORE = FOUNDATION | SPEC | NODE_LOCAL | RENDER | PLAN
EDGES = {
    "olladist.nodeconfig",
    "olladist.source",
    "olladist.source.errors",
    "olladist.source.git",
    "olladist.source.local",
    "olladist.source.result",
    "olladist.source.tree",
    "olladist.source.verify",
    "olladist.source.chain",
    "olladist.runtime",
    "olladist.runtime.local",
    "olladist.runtime.systemd",
    "olladist.unitfile",
    "olladist.gateway.runtime",
    "olladist.gateway.live",
    "olladist.gateway.pulls",
    "olladist.ollama",
    "olladist.validators",
    "olladist.state",
    "olladist.ports",
    "olladist.observe",
    "olladist.peers",
    "olladist.registry",
}
LOOP = {
    "olladist.apply",
    "olladist.drain",
    "olladist.models",
    "olladist.transfer",
    "olladist.reconcile",
    "olladist.daemon",
    "olladist.status",
    "olladist.statusd",
    "olladist.rolloutstate",
    "olladist.selfcheck",
    "olladist.check",
    "olladist.clusterview",
}
COMMAND_LINE = {
    "olladist.__main__",
    "olladist.cli",
    "olladist.dev",
    "olladist.doctor",
    "olladist.report",
    "olladist.progress",
    "olladist.docgen",
    "olladist.nodesetup",
    "olladist.apikeys",
}
ROOMS = {
    "core": CORE,
    "edges": EDGES,
    "loop": LOOP,
    "command line": COMMAND_LINE,
}

# Libraries that talk to the world: processes, sockets, HTTP, git, file watching, templates.
IO_LIBRARIES = {"subprocess", "socket", "httpx", "dulwich", "watchfiles", "sdnotify", "shutil"}
# Calls that write or touch the file system.
FS_CALLS = {"open", "write_text", "write_bytes", "mkdir", "unlink", "rename", "replace", "rmdir"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # what it imports: a module, or module.name for `from module import name`
    line: int


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield Import(name, f"{base}.{alias.name}", node.lineno)


def resolve(target: str, known: dict[str, Path]) -> str | None:
    """The olladist module an import target lands in (`olladist.files.File` -> olladist.files)."""
    if not target.startswith("olladist"):
        return None
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


@functools.cache
def graph() -> dict[str, set[str]]:
    known = modules()
    out: dict[str, set[str]] = {m: set() for m in known}
    for name, path in known.items():
        for imp in imports_of(name, path):
            target = resolve(imp.target, known)
            if target is not None and target != name:
                out[name].add(target)
    return out


@functools.cache
def all_imports() -> tuple[Import, ...]:
    return tuple(imp for name, path in modules().items() for imp in imports_of(name, path))


def room_of(module: str) -> str | None:
    if module == "olladist.sim" or module.startswith("olladist.sim."):
        return "sim"
    return next((room for room, members in ROOMS.items() if module in members), None)


def test_every_module_has_a_room() -> None:
    homeless = sorted(m for m in modules() if room_of(m) is None)
    assert homeless == [], "give these a room in docs/architecture.md and in this test"


def test_no_import_cycles_even_deferred_ones() -> None:
    g = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                cycles.append([*stack[stack.index(n) :], n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert cycles == []


def _violations(sources: set[str], forbidden: set[str], libraries: set[str]) -> list[str]:
    known = modules()
    out = []
    for imp in all_imports():
        if imp.module not in sources:
            continue
        target = resolve(imp.target, known)
        top = imp.target.split(".")[0]
        if (target is not None and target in forbidden) or top in libraries:
            out.append(f"{imp.module}:{imp.line} imports {imp.target}")
    return out


def test_spec_and_placement_import_no_templates_http_or_processes() -> None:
    bad = _violations(SPEC, EDGES | LOOP | COMMAND_LINE | RENDER, IO_LIBRARIES | {"jinja2"})
    assert bad == []


def test_the_core_imports_nothing_of_the_edges_the_loop_or_the_command_line() -> None:
    assert _violations(CORE, EDGES | LOOP | COMMAND_LINE, IO_LIBRARIES) == []


def test_render_does_no_io() -> None:
    """Render may read its own templates and shipped units (package data); it writes nothing
    and calls no writer."""
    bad = []
    for imp in all_imports():
        if imp.module in RENDER | PLAN and imp.target in (
            "olladist.files.write_atomic",
            "olladist.files.write_tree",
        ):
            bad.append(f"{imp.module}:{imp.line} imports {imp.target}")
    for name, path in modules().items():
        if name not in RENDER | PLAN:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")
                if called in FS_CALLS and not (called == "replace" and _is_str_replace(node)):
                    bad.append(f"{name}:{node.lineno} calls {called}()")
    assert bad == []


def _is_str_replace(node: ast.Call) -> bool:
    # str.replace(old, new) takes two arguments; Path.replace(target) takes one.
    return len(node.args) == 2


def test_edges_import_nothing_of_the_loop_or_the_command_line() -> None:
    assert _violations(EDGES, LOOP | COMMAND_LINE, set()) == []


def test_the_loop_imports_nothing_of_the_command_line() -> None:
    assert _violations(LOOP, COMMAND_LINE, set()) == []


def test_the_simulator_imports_nothing_of_the_reconciler() -> None:
    allowed = {"olladist", "olladist.names", "olladist.errors"}
    bad = [
        f"{imp.module}:{imp.line} imports {imp.target}"
        for imp in all_imports()
        if room_of(imp.module) == "sim"
        and (target := resolve(imp.target, modules())) is not None
        and room_of(target) != "sim"
        and target not in allowed
    ]
    assert bad == []


def test_nothing_but_main_imports_the_cli() -> None:
    importers = sorted(m for m, deps in graph().items() if "olladist.cli" in deps)
    assert importers == ["olladist.__main__"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from olladist.files import File\n", ["olladist.files.File"]),
        ("def f():\n    import httpx\n", ["httpx"]),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from olladist import x\n", None),
    ],
)
def test_imports_are_found_wherever_they_are(
    tmp_path: Path, source: str, expected: list[str] | None
) -> None:
    """The rules above see deferred and TYPE_CHECKING imports, not only the top of a file."""
    path = tmp_path / "m.py"
    path.write_text(source)
    found = [i.target for i in imports_of("olladist.m", path)]
    if expected is None:
        assert "olladist.x" in found
    else:
        assert found == expected


def test_docs_architecture_names_every_module() -> None:
    """The map stays true: every module is named in docs/architecture.md (a subpackage of
    edges or the simulator as a whole, e.g. `source/`)."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = []
    for m in modules():
        short = m.removeprefix("olladist.")
        if m == "olladist":
            continue
        head = short.split(".")[0]
        name = f"`{head}/`" if head in ("source", "runtime", "sim") else f"`{short}`"
        if name not in text:
            missing.append(name)
    assert missing == []


HEAVY = ("pydantic", "jinja2", "httpx", "dulwich", "yaml")
LOADED_HEAVY = """
import json, sys
from olladist.cli import main
try:
    main(sys.argv[2:])
except SystemExit:
    pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1].split(",")))))
"""


@pytest.mark.parametrize("argv", [["status", "--root", "{root}"], ["--help"], ["--version"]])
def test_quick_commands_load_no_heavy_library(tmp_path: Path, argv: list[str]) -> None:
    """cli.py defers the heavy imports so that `status`, `--help` and `--version` start fast
    (docs/architecture.md); this keeps it so."""
    args = [a.format(root=tmp_path) for a in argv]
    proc = subprocess.run(
        [sys.executable, "-c", LOADED_HEAVY, ",".join(HEAVY), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=PACKAGE.parent,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]"
