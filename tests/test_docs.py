"""The operator docs under docs/ are checked against the code, so they cannot drift from it.

- docs/spec.md embeds `python -m olladist.docgen` verbatim between markers;
- docs/cli.md names every subcommand, every long option and every OLLADIST_* variable;
- docs/troubleshooting.md holds every error message olladist raises (its literal prefix).
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
from pathlib import Path

import pytest

from olladist.cli import build_parser
from olladist.docgen import reference
from olladist.specload import load_spec
from tests.conftest import REPO, need

DOCS = REPO / "docs"
PACKAGE = REPO / "olladist"
BEGIN = "<!-- BEGIN GENERATED -->"
END = "<!-- END GENERATED -->"


def _text(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _squash(text: str) -> str:
    """Lower case, markdown emphasis and backticks dropped, runs of whitespace as one space:
    a message may wrap or sit in `code` in the docs."""
    return " ".join(text.replace("`", "").replace("*", "").lower().split())


# -- docs/spec.md ---------------------------------------------------------------------------


def test_spec_reference_is_docgen_output() -> None:
    text = _text("spec.md")
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"docs/spec.md needs {BEGIN} / {END}"
    embedded = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert embedded.strip("\n") == reference().strip("\n"), (
        "docs/spec.md's generated tables differ from the code; regenerate them with\n"
        "  .venv/bin/python -m tests.test_docs\n"
        f"(it replaces what is between {BEGIN} and {END} with `python -m olladist.docgen`)"
    )


def regenerate_spec_md() -> None:
    """Rewrite the generated part of docs/spec.md (python -m tests.test_docs)."""
    path = DOCS / "spec.md"
    text = path.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{reference().strip(chr(10))}\n{END}{tail}", encoding="utf-8")


def test_spec_md_example_is_valid(tmp_path: Path) -> None:
    """The example's files (each ```yaml block after a `path`: line) load as a spec."""
    blocks = re.findall(
        r"^`([\w/.-]+\.yaml)`:\n\n```yaml\n(.*?)^```", _text("spec.md"), re.S | re.M
    )
    assert [name for name, _ in blocks][:1] == ["cluster.yaml"], blocks
    for name, body in blocks:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body, encoding="utf-8")
    spec = load_spec(tmp_path)
    assert {n.name for n in spec.nodes} == {"gpu-a", "gpu-b", "edge"}


# -- docs/cli.md ----------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _long_options(parser: argparse.ArgumentParser) -> set[str]:
    return {
        opt for action in parser._actions for opt in action.option_strings if opt.startswith("--")
    }


def test_cli_md_names_every_command_and_option() -> None:
    text = _text("cli.md")
    parser = build_parser()
    missing = []
    subs = _subparsers(parser)
    assert subs, "build_parser() has no subcommands?"
    for name, sub in subs.items():
        if not re.search(rf"^#+ .*`olladist {re.escape(name)}\b", text, re.MULTILINE):
            missing.append(f"a heading for `olladist {name}`")
        for opt in _long_options(sub) - {"--help"}:
            if not re.search(rf"`{re.escape(opt)}\b", text):
                missing.append(f"option {opt} of {name}")
    for opt in _long_options(parser) - {"--help"}:
        if f"`{opt}" not in text:
            missing.append(f"global option {opt}")
    assert not missing, "docs/cli.md lacks: " + ", ".join(missing)


def _variables_read_by_code() -> set[str]:
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        found |= set(re.findall(r"OLLADIST_[A-Z0-9_]*[A-Z0-9]", path.read_text(encoding="utf-8")))
    # "OLLADIST_SIM_*" in a docstring names a family, not a variable.
    return {v for v in found if not any(other.startswith(v + "_") for other in found)}


def test_cli_md_documents_every_variable() -> None:
    found = _variables_read_by_code()
    assert "OLLADIST_SOURCE" in found and "OLLADIST_HAPROXY" in found  # the grep works
    text = _text("cli.md")
    missing = sorted(v for v in found if f"`{v}`" not in text and f"`{v}=" not in text)
    assert not missing, f"docs/cli.md does not document: {', '.join(missing)}"


# -- docs/troubleshooting.md ----------------------------------------------------------------

ERROR_BASE = "OlladistError"

# Raises whose message has no text of its own: they wrap a message made elsewhere (itself
# collected here, so documented) or pass on collected problems. Keyed by file and the source
# of the message argument, so a new raise of this kind fails until someone looks at it.
ALLOWED: dict[tuple[str, str], str] = {
    ("olladist/apply.py", "f'{action.kind} {action.target}: {exc.message}'"): "wraps an error",
    ("olladist/apply.py", "f'{action.kind} {action.target}: {exc}'"): "wraps an OSError",
    ("olladist/models.py", "last or 'the node has no instances'"): "the last OllamaError",
    ("olladist/ollama.py", "op"): "_fail(op, exc): '{op} at {url}: {detail}', op is a verb",
    ("olladist/placement.py", "problems"): "SpecError(problems): collected one by one",
    ("olladist/placement.py", "msg"): "placement problems: collected one by one",
    (
        "olladist/placement.py",
        "[Problem('cluster.yaml', 0, '.'.join(map(str, loc)), msg) for loc, msg in problems]",
    ): "place(): the placement problems, collected one by one",
    ("olladist/specload.py", "problems"): "SpecError(problems): collected one by one",
    ("olladist/specload.py", "_pydantic_problems(doc, exc)"): "pydantic's own messages",
    ("olladist/specload.py", "message"): "Located.problem(): builds a Problem from a message",
    ("olladist/specload.py", "msg"): "pydantic's messages, reworded in _pydantic_problems",
    ("olladist/specload.py", "[Problem('cluster.yaml', 0, '', f'not found in {spec_dir}')]"): (
        "the Problem inside is collected"
    ),
    (
        "olladist/specload.py",
        "[Problem('cluster.yaml', 1, '', 'must be a mapping (key: value)')]",
    ): ("the Problem inside is collected"),
    ("olladist/specload.py", "[Problem(str(spec_dir), 0, '', 'not a directory')]"): (
        "the Problem inside is collected"
    ),
}

# The simulator is a test double with its own page (docs/simulator.md); its errors reach
# whoever runs olladist-sim, not an operator paged about a node.
SKIP_DIRS = ("olladist/sim/",)


def _error_classes(trees: dict[str, ast.Module]) -> set[str]:
    """Every class deriving (transitively) from OlladistError, plus the helpers that return
    one (``def _fail(...) -> FetchError``)."""
    bases: dict[str, set[str]] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases[node.name] = {b.id for b in node.bases if isinstance(b, ast.Name)}
    errors = {ERROR_BASE}
    grew = True
    while grew:
        more = {c for c, bs in bases.items() if bs & errors} - errors
        errors |= more
        grew = bool(more)
    for tree in trees.values():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.FunctionDef)
                and isinstance(node.returns, ast.Name)
                and node.returns.id in errors
            ):
                errors.add(node.name)
    return errors


def _literal_parts(arg: ast.expr) -> list[str]:
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    if isinstance(arg, ast.JoinedStr):
        return [v.value for v in arg.values if isinstance(v, ast.Constant)]
    if isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Add):
        return _literal_parts(arg.left)
    return []


def _prefix(parts: list[str]) -> str:
    """The recognisable text of a message: its first literal part with two words (of three
    letters or more), else its longest; cut at the first newline, edge punctuation stripped.
    ``f"node {name!r} is not in the spec"`` gives ``is not in the spec``."""
    texts = [part.split("\n", 1)[0].strip(" :;,.()'\"`") for part in parts]
    for text in texts:
        if len(re.findall(r"[A-Za-z]{3,}", text)) >= 2:
            return text
    return max(texts, key=lambda t: len(re.findall(r"[A-Za-z]", t)), default="")


def _messages_of(tree: ast.Module, errors: set[str], values: bool) -> list[tuple[int, str, str]]:
    """(line, recognisable prefix, source of the message argument) of each message."""
    out: list[tuple[int, str, str]] = []
    for node in ast.walk(tree):
        call = None
        msg_index = 0
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            func = node.exc.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name in errors:
                call = node.exc
            if values and name == "ValueError":  # in pydantic validators: a spec problem
                call = node.exc
        elif isinstance(node, ast.Call):
            func = node.func
            # Spec problems: Problem(file, line, field, message), doc.problem(loc, message),
            # problems.append((loc, message)) in placement.
            if isinstance(func, ast.Name) and func.id == "Problem" and len(node.args) == 4:
                call, msg_index = node, 3
            elif isinstance(func, ast.Attribute) and func.attr == "problem" and len(node.args) == 2:
                call, msg_index = node, 1
            elif (
                isinstance(func, ast.Attribute)
                and func.attr == "append"
                and node.args
                and isinstance(node.args[0], ast.Tuple)
                and len(node.args[0].elts) == 2
                and isinstance(func.value, ast.Name)
                and func.value.id == "problems"
            ):
                msg = node.args[0].elts[1]
                out.append((node.lineno, _prefix(_literal_parts(msg)), ast.unparse(msg)))
                continue
        if call is None:
            continue
        if len(call.args) <= msg_index:
            continue  # e.g. QueueFull(): a fixed message inside the class
        msg = call.args[msg_index]
        out.append((node.lineno, _prefix(_literal_parts(msg)), ast.unparse(msg)))
    return out


def _raised_messages() -> list[tuple[str, int, str, str]]:
    trees = {
        str(p.relative_to(REPO)): ast.parse(p.read_text(encoding="utf-8"))
        for p in sorted(PACKAGE.rglob("*.py"))
    }
    errors = _error_classes(trees)
    out = []
    for rel, tree in trees.items():
        if rel.startswith(SKIP_DIRS):
            continue
        # ValueErrors count only where pydantic turns them into spec problems.
        for line, prefix, source in _messages_of(tree, errors, rel == "olladist/spec.py"):
            out.append((rel, line, prefix, source))
    return out


def test_error_collection_finds_known_messages() -> None:
    prefixes = {p for _, _, p, _ in _raised_messages()}
    # One of each kind: a raise, a Problem, doc.problem(...), placement's tuples, a helper.
    for known in (
        "no spec given",
        "not found in",
        "duplicate node name",
        "capacity overflow",
        "cannot list refs of",
        "is set by olladist from",
    ):
        assert any(p.startswith(known) for p in prefixes), known


def test_troubleshooting_md_documents_every_error() -> None:
    doc = _squash(_text("troubleshooting.md"))
    missing = []
    for rel, line, prefix, source in _raised_messages():
        if not prefix:
            if (rel, source) not in ALLOWED:
                missing.append(f"{rel}:{line}: {source} has no text of its own (allowlist it?)")
            continue
        if _squash(prefix) not in doc:
            missing.append(f"{rel}:{line}: {prefix!r}")
    assert not missing, "docs/troubleshooting.md does not explain:\n  " + "\n  ".join(missing)


@pytest.mark.parametrize(
    "name",
    [
        "docs/spec.md",
        "docs/cli.md",
        "docs/security.md",
        "docs/troubleshooting.md",
        "docs/operating.md",
        "docs/architecture.md",
        "packaging/README.md",
    ],
)
def test_relative_links_resolve(name: str) -> None:
    page = REPO / name
    for target in re.findall(r"\]\(([\w./-]+)(?:#[\w-]*)?\)", page.read_text(encoding="utf-8")):
        assert (page.parent / target).resolve().exists(), f"{name} links to missing {target}"


def test_sysusers_file_creates_the_user_the_units_run_as(tmp_path: Path) -> None:
    """packaging/olladist.sysusers.conf, applied to an empty root, makes the User= of the
    shipped gateway and instance units."""
    (tmp_path / "etc").mkdir()
    conf = REPO / "packaging" / "olladist.sysusers.conf"
    subprocess.run(
        [need("systemd-sysusers"), f"--root={tmp_path}", str(conf)],
        check=True,
        capture_output=True,
    )
    users = {line.split(":")[0] for line in (tmp_path / "etc/passwd").read_text().splitlines()}
    for unit in ("olladist-gateway.service", "olladist-ollama@.service"):
        text = (REPO / "units" / unit).read_text()
        user = re.search(r"^User=(\S+)$", text, re.M)
        assert user is not None and user.group(1) in users, unit


if __name__ == "__main__":
    regenerate_spec_md()
