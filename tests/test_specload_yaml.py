"""specload reads YAML from libyaml's events rather than PyYAML's node tree (speed); it must give
the same values and the same duplicate-key problems as PyYAML's own composer and safe
constructor, and leave everything it does not handle to them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from olladist.errors import Problem
from olladist.specload import _LOADER, _read_events, _read_yaml, _Unusual, _walk, format_loc

REPO = Path(__file__).resolve().parents[1]

SAMPLES = [
    "",
    "# only a comment\n",
    "---\n",
    "a: 1\na: 2\n",
    "a: {b: 1, b: 2}\nc: [ {x: 1, x: 2} ]\n",
    "x: 0x1F\ny: 017\nz: 1_000\nw: 1:30\nf: 1.5\ng: .inf\nh: 2020-01-01\ni: -0\n",
    "k: yes\nl: No\nm: ~\nn: null\no: 'yes'\np: \"1\"\nq: -3\nr: +4\ns: ''\n",
    "1: a\ntrue: b\nnull: c\n",
    "'1': a\n1: b\n",
    "- - - 1\n  - a: {b: [c, {d: e, d: f}]}\n",
    "a:\nb: |\n  text\nc: >\n  folded\n",
    "x: 1e3\ny: 1.0e+3\nz: 0.\nw: .5\n",
    "plain scalar at the root\n",
]

# Each of these is left to PyYAML (anchors, aliases, tags, merge keys, complex keys, two
# documents, errors).
UNUSUAL = [
    "a: &x 1\nb: *x\n",
    "<<: {a: 1}\nb: 2\n",
    "!!str 1: a\n",
    "? [1]\n: 2\n",
    "a: 1\n---\nb: 2\n",
    "a: [1, 2\n",
    "a: !!binary aGk=\n",
    "s: =\n",
]


def reference(text: str) -> tuple[Any, list[tuple[str, int]]]:
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    dupes: list[tuple[tuple[str | int, ...], int]] = []
    if node is not None:
        _walk(node, (), {}, dupes)
    return data, [(format_loc(loc), line) for loc, line in dupes]


def events(text: str) -> tuple[Any, list[tuple[str, int]]]:
    loader = _LOADER(text)
    try:
        data, dupes = _read_events(loader, "f.yaml")
    finally:
        loader.dispose()
    return data, [(p.field, p.line) for p in dupes]


def spec_files() -> list[Path]:
    return sorted(
        p
        for d in ("examples", "tests/specs")
        for p in (REPO / d).rglob("*.yaml")
        if p.stat().st_size < 1_000_000
    )


@pytest.mark.parametrize("text", SAMPLES)
def test_events_give_what_pyyaml_gives(text: str) -> None:
    got, want = events(text), reference(text)
    assert repr(got) == repr(want)


@pytest.mark.parametrize("path", spec_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_events_give_what_pyyaml_gives_on_the_repository_specs(path: Path) -> None:
    text = path.read_text()
    try:
        want = reference(text)
    except yaml.YAMLError:
        # Invalid on purpose (a test spec of bad input): the event reader gives up on it too,
        # and PyYAML's path reports it.
        with pytest.raises((_Unusual, yaml.YAMLError)):
            events(text)
        return
    assert repr(events(text)) == repr(want)


@pytest.mark.parametrize("text", UNUSUAL)
def test_the_unusual_goes_pyyamls_way(text: str, tmp_path: Path) -> None:
    with pytest.raises((_Unusual, yaml.YAMLError)):
        events(text)
    path = tmp_path / "f.yaml"
    path.write_text(text)
    problems: list[Problem] = []
    data, _ = _read_yaml(path, "f.yaml", problems)
    try:
        want, dupes = reference(text)
    except yaml.YAMLError:
        assert data is None
        assert problems
        assert problems[0].message.startswith("invalid YAML")
        return
    assert repr(data) == repr(want)
    assert [(p.field, p.line) for p in problems] == dupes


def test_duplicate_keys_are_reported_at_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "n.yaml"
    path.write_text("name: a\ninstances:\n  - {name: x, port: 1, port: 2}\nname: b\n")
    problems: list[Problem] = []
    _read_yaml(path, "nodes/n.yaml", problems)
    assert [(p.file, p.line, p.field, p.message) for p in problems] == [
        ("nodes/n.yaml", 3, "instances[0].port", "duplicate key"),
        ("nodes/n.yaml", 4, "name", "duplicate key"),
    ]
