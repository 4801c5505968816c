"""Load a cluster-spec directory and report every problem as ``file:line: field: message``.

A spec directory holds ``cluster.yaml`` (required) and optionally ``nodes/*.yaml`` (one node a
file) and ``models/*.yaml`` (one model a file). The files are merged into one document; each
value remembers the file and line it came from, so that pydantic's errors and our own
cross-checks can point at the exact place.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from olladist.errors import Loc, Problem, SpecError
from olladist.placement import placement_problems
from olladist.spec import Spec

MAX_FILE_BYTES = 4 * 1024 * 1024


@dataclass
class _Origin:
    """Where a part of the merged document came from."""

    prefix: Loc  # path of this part in the merged document
    file: str
    file_prefix: Loc  # path of the same part inside `file`
    text: str  # the file's text, parsed again for its lines only when a problem is reported

    @functools.cached_property
    def lines(self) -> dict[Loc, int]:
        """Path inside ``file`` -> line. Computed on demand: a valid spec never needs it, and
        walking every node of a 1,000-node spec for its lines took a fifth of loading it."""
        return _lines(self.text)


@dataclass
class Located:
    """A merged document plus the map from its paths back to files and lines."""

    data: dict[str, Any]
    origins: list[_Origin] = field(default_factory=list)

    def locate(self, loc: Loc) -> tuple[str, int, Loc]:
        """The file, line and in-file path of ``loc`` (longest known prefix wins)."""
        best = max(
            (o for o in self.origins if loc[: len(o.prefix)] == o.prefix),
            key=lambda o: len(o.prefix),
        )
        in_file = best.file_prefix + loc[len(best.prefix) :]
        for n in range(len(in_file), -1, -1):
            line = best.lines.get(in_file[:n])
            if line is not None:
                return best.file, line, in_file
        return best.file, 0, in_file

    def problem(self, loc: Loc, message: str) -> Problem:
        file, line, in_file = self.locate(loc)
        return Problem(file, line, format_loc(in_file), message)


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def _walk(node: yaml.Node, path: Loc, lines: dict[Loc, int], dupes: list[tuple[Loc, int]]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                dupes.append((path + (key,), key_node.start_mark.line + 1))
            seen.add(key)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _walk(value_node, path + (key,), lines, dupes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, path + (i,), lines, dupes)


# libyaml's parser when PyYAML has it (Debian's and PyPI's wheels do): the same nodes, marks and
# errors, about 10 times faster; the pure-Python one took most of loading a 1,000-node spec.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _lines(text: str) -> dict[Loc, int]:
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
    finally:
        loader.dispose()
    lines: dict[Loc, int] = {}
    if node is not None:
        _walk(node, (), lines, [])
    return lines


_UNREAD = object()


class _Unusual(Exception):
    """The event reader met something it leaves to PyYAML's own composer and constructor."""


_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_DECIMAL = re.compile(r"[-+]?[1-9][0-9]*")
_COMPLEX_TAGS = ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")
_BOOLS = yaml.SafeLoader.bool_values
_RESOLVED = yaml.SafeLoader.yaml_implicit_resolvers


_CONSTRUCT = object()
_RESOLVER: Any = yaml.resolver.Resolver()


@functools.lru_cache(maxsize=4096)
def _plain(value: str) -> Any:
    """A plain scalar's value when it is a string, null, a boolean or a decimal integer (those
    repeat: keys, ports, counts; hence the cache), else _CONSTRUCT. PyYAML's resolver and
    safe constructor's rules, by the tag that resolver gives it."""
    if value[:1] not in _RESOLVED:
        return value  # no implicit type starts with its first character
    tag = _RESOLVER.resolve(yaml.ScalarNode, value, (True, False))
    if tag == _STR:
        return value
    if tag == _NULL:
        return None
    if tag == _BOOL:
        return _BOOLS[value.lower()]
    if tag == _INT and (value == "0" or _DECIMAL.fullmatch(value)):
        return int(value)
    return _CONSTRUCT


def _scalar(loader: Any, ev: yaml.ScalarEvent) -> Any:
    """The value PyYAML's safe constructor gives a scalar."""
    if ev.tag is not None and ev.tag != "!":
        raise _Unusual
    if not ev.implicit[0]:
        return ev.value  # quoted (or a block scalar): a string
    value = _plain(ev.value)
    if value is not _CONSTRUCT:
        return value
    tag = _RESOLVER.resolve(yaml.ScalarNode, ev.value, ev.implicit)
    if tag in _COMPLEX_TAGS:
        raise _Unusual
    # Octal, hex, sexagesimal, floats, timestamps: the constructor's own conversion.
    node = yaml.ScalarNode(tag, ev.value, None, None, ev.style)
    return loader.construct_object(node, deep=True)


def _read_events(loader: Any, rel: str) -> tuple[Any, list[Problem]]:
    """One document built straight from the parser's events, and its duplicate keys.

    PyYAML's composer makes a node (with two marks) for every value and its constructor then
    walks them: most of loading a 1,000-node spec. This builds the same plain values from the
    events in one pass. Anchors, aliases, explicit tags, merge keys, complex keys and several
    documents raise _Unusual: the caller then takes PyYAML's own path, which gives the same
    data or the error wording of the reference loader."""
    get = loader.get_event
    get()  # StreamStartEvent
    ev = get()
    if isinstance(ev, yaml.StreamEndEvent):
        return None, []
    dupes: list[Problem] = []
    # A frame: [dict, seen keys, key (raw), key (value), has key] or [list].
    stack: list[list[Any]] = []
    root: Any = None
    while True:
        ev = get()
        cls = type(ev)
        if cls is yaml.ScalarEvent:
            if ev.anchor is not None:
                raise _Unusual
            top = stack[-1] if stack else None
            if top is not None and len(top) == 5 and not top[4]:
                raw = ev.value
                if raw in top[1]:
                    loc = _stack_loc(stack) + (raw,)
                    dupes.append(
                        Problem(rel, ev.start_mark.line + 1, format_loc(loc), "duplicate key")
                    )
                top[1].add(raw)
                top[2] = raw
                top[3] = _scalar(loader, ev)
                top[4] = True
                continue
            value = _scalar(loader, ev)
        elif cls is yaml.MappingStartEvent or cls is yaml.SequenceStartEvent:
            if ev.anchor is not None or (ev.tag is not None and ev.tag != "!"):
                raise _Unusual
            top = stack[-1] if stack else None
            if top is not None and len(top) == 5 and not top[4]:
                raise _Unusual  # a mapping or sequence as a key
            stack.append([{}, set(), None, None, False] if cls is yaml.MappingStartEvent else [[]])
            continue
        elif cls is yaml.MappingEndEvent or cls is yaml.SequenceEndEvent:
            value = stack.pop()[0]
        elif cls is yaml.DocumentEndEvent:
            if not isinstance(get(), yaml.StreamEndEvent):
                raise _Unusual  # another document: the composer's error
            return root, dupes
        else:  # an alias
            raise _Unusual
        if not stack:
            root = value
            continue
        top = stack[-1]
        if len(top) == 5:
            top[0][top[3]] = value
            top[4] = False
        else:
            top[0].append(value)


def _stack_loc(stack: list[list[Any]]) -> Loc:
    """The in-file path of the mapping on top of ``stack`` (the key of each mapping below it,
    the index in each sequence), as _walk names it."""
    return tuple(str(f[2]) if len(f) == 5 else len(f[0]) for f in stack[:-1])


def _read_yaml(path: Path, rel: str, problems: list[Problem]) -> tuple[Any, str]:
    """Parse one YAML file; on failure record a problem and return (None, "")."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            problems.append(Problem(rel, 0, "", f"file larger than {MAX_FILE_BYTES} bytes"))
            return None, ""
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        problems.append(Problem(rel, 0, "", f"not UTF-8 text: {exc.reason}"))
        return None, ""
    except OSError as exc:
        problems.append(Problem(rel, 0, "", f"cannot read: {exc.strerror}"))
        return None, ""
    loader = _LOADER(text)
    try:
        data, dupes = _read_events(loader, rel)
    except Exception:
        # Anything the event reader leaves out (or trips on) goes PyYAML's own way below,
        # which gives the reference data or the reference error wording.
        data, dupes = _UNREAD, []
    finally:
        loader.dispose()
    if data is not _UNREAD:
        problems.extend(dupes)
        return data, text
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        msg = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        problems.append(Problem(rel, line, "", f"invalid YAML: {msg}"))
        return None, ""
    except yaml.YAMLError as exc:
        problems.append(Problem(rel, 0, "", f"invalid YAML: {exc}"))
        return None, ""
    finally:
        loader.dispose()
    dupes_: list[tuple[Loc, int]] = []
    if node is not None:
        _walk(node, (), {}, dupes_)
    for loc, line in dupes_:
        problems.append(Problem(rel, line, format_loc(loc), "duplicate key"))
    return data, text


def _merge_dir(spec_dir: Path, problems: list[Problem]) -> Located:
    cluster = spec_dir / "cluster.yaml"
    if not cluster.is_file():
        raise SpecError(
            [Problem("cluster.yaml", 0, "", f"not found in {spec_dir}")],
            hint="a spec directory holds cluster.yaml, plus optional nodes/*.yaml, models/*.yaml",
        )
    data, text = _read_yaml(cluster, "cluster.yaml", problems)
    if data is None and not problems:
        data = {}
    if problems:
        raise SpecError(problems)
    if not isinstance(data, dict):
        raise SpecError([Problem("cluster.yaml", 1, "", "must be a mapping (key: value)")])
    doc = Located(dict(data), [_Origin((), "cluster.yaml", (), text)])

    for section in ("nodes", "models"):
        sub = spec_dir / section
        if not sub.is_dir():
            continue
        files = sorted(p for p in sub.iterdir() if p.suffix in (".yaml", ".yml"))
        if not files:
            continue
        base = doc.data.get(section)
        if base is None:
            base = []
        if not isinstance(base, list):
            # pydantic will report the wrong type in cluster.yaml; do not merge into it.
            continue
        merged = list(base)
        for path in files:
            rel = f"{section}/{path.name}"
            item, item_text = _read_yaml(path, rel, problems)
            if item is None:
                if not problems or problems[-1].file != rel:
                    problems.append(Problem(rel, 0, "", "file is empty"))
                continue
            doc.origins.append(_Origin((section, len(merged)), rel, (), item_text))
            merged.append(item)
        doc.data[section] = merged
    if problems:
        raise SpecError(problems)
    return doc


def _pydantic_problems(doc: Located, exc: ValidationError) -> list[Problem]:
    out = []
    for err in exc.errors(include_url=False):
        loc: Loc = tuple(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            parent_fields = _fields_at(loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), parent_fields, n=1)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
        elif err["type"] == "string_pattern_mismatch":
            pattern = err["ctx"]["pattern"]
            msg = f"{err['input']!r} has characters that are not allowed (pattern {pattern})"
        elif msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
        # Literal["all"] | list[...] unions report one error per branch; keep them readable.
        loc = tuple(p for p in loc if p not in ("list[str]", "literal['all']", "str", "[key]"))
        out.append(doc.problem(loc, msg))
    return out


def _fields_at(loc: Loc) -> list[str]:
    """Field names valid at ``loc`` of the merged document (for 'did you mean')."""
    model: type[BaseModel] = Spec
    for part in loc:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        if info is None:
            return []
        inner = _model_in(info.annotation)
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def _model_in(annotation: object) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def cross_check(spec: Spec, doc: Located) -> list[Problem]:
    """Rules that span fields: unique names, ports, GPUs, references to nodes."""
    p: list[Problem] = []
    names = Counter(n.name for n in spec.nodes)
    for i, node in enumerate(spec.nodes):
        if names[node.name] > 1:
            p.append(doc.problem(("nodes", i, "name"), f"duplicate node name {node.name!r}"))
        gw = spec.gateway
        ports: dict[int, str] = {}
        for what, port in (("gateway.port", gw.port), ("gateway.peer_port", gw.peer_port)):
            ports.setdefault(port, what)
        if gw.stats_port in ports:
            p.append(
                doc.problem(
                    ("gateway", "stats_port"),
                    f"port {gw.stats_port} is also {ports[gw.stats_port]}",
                )
            )
        ports.setdefault(gw.stats_port, "gateway.stats_port")
        if gw.peer_port == gw.port:
            p.append(doc.problem(("gateway", "peer_port"), f"port {gw.port} is also gateway.port"))
        inst_names: set[str] = set()
        gpus: dict[str, str] = {}
        for j, inst in enumerate(node.instances):
            here = ("nodes", i, "instances", j)
            if inst.name in inst_names:
                p.append(doc.problem(here + ("name",), f"duplicate instance name {inst.name!r}"))
            inst_names.add(inst.name)
            # Instances bind 127.0.0.1; a gateway on a loopback listen address shares it.
            other = ports.get(inst.port)
            if other is not None:
                p.append(doc.problem(here + ("port",), f"port {inst.port} is also {other}"))
            ports.setdefault(inst.port, f"instance {inst.name!r}")
            for k, gpu in enumerate(inst.gpus):
                if gpu in gpus and gpus[gpu] != inst.name:
                    p.append(
                        doc.problem(
                            here + ("gpus", k), f"GPU {gpu!r} is also given to {gpus[gpu]!r}"
                        )
                    )
                gpus.setdefault(gpu, inst.name)
    p.extend(_one_machine_ports(spec, doc))
    model_keys: dict[str, int] = {}
    for i, model in enumerate(spec.models):
        if model.key in model_keys:
            first = spec.models[model_keys[model.key]].name
            p.append(
                doc.problem(
                    ("models", i, "name"),
                    f"duplicate model {model.name!r} (same as {first!r})",
                )
            )
        model_keys.setdefault(model.key, i)
        if isinstance(model.nodes, list):
            if model.replicas is not None:
                p.append(
                    doc.problem(
                        ("models", i, "replicas"),
                        "give either `nodes` (exact placement) or `replicas`, not both",
                    )
                )
            for k, name in enumerate(model.nodes):
                if name not in names:
                    p.append(doc.problem(("models", i, "nodes", k), f"unknown node {name!r}"))
        elif model.nodes == "all" and model.replicas is not None:
            p.append(
                doc.problem(("models", i, "replicas"), "`nodes: all` places on every node; drop it")
            )
    return p


def _one_machine_ports(spec: Spec, doc: Located) -> list[Problem]:
    """Nodes whose gateways bind loopback addresses share one machine (a dev cluster), and all
    their instances bind 127.0.0.1: their instance ports must differ across nodes too."""
    p: list[Problem] = []
    owner: dict[int, str] = {}
    for i, node in enumerate(spec.nodes):
        if not node.loopback:
            continue
        for j, inst in enumerate(node.instances):
            prev = owner.get(inst.port)
            if prev is not None and prev != node.name:
                p.append(
                    doc.problem(
                        ("nodes", i, "instances", j, "port"),
                        f"port {inst.port} is also used by node {prev!r} on this machine "
                        "(loopback nodes share 127.0.0.1)",
                    )
                )
            owner.setdefault(inst.port, node.name)
    return p


def load_located(spec_dir: Path) -> tuple[Spec, Located]:
    problems: list[Problem] = []
    if not spec_dir.is_dir():
        raise SpecError(
            [Problem(str(spec_dir), 0, "", "not a directory")],
            hint="give the spec directory (the one holding cluster.yaml) with --spec",
        )
    doc = _merge_dir(spec_dir, problems)
    try:
        spec = Spec.model_validate(doc.data)
    except ValidationError as exc:
        raise SpecError(_pydantic_problems(doc, exc)) from None
    problems = cross_check(spec, doc)
    if not problems:
        problems = [doc.problem(loc, msg) for loc, msg in placement_problems(spec)]
    if problems:
        raise SpecError(problems)
    return spec, doc


def load_spec(spec_dir: Path) -> Spec:
    """Load and fully validate a spec directory; raises SpecError listing every problem."""
    return load_located(spec_dir)[0]
