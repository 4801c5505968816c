"""The ``olladist`` command line.

Exit codes: 0 success (``diff``: no drift), 1 drift (``diff`` only), 2 error (invalid spec, a tool
missing, a failed apply), 130 interrupted. Errors print ``error: ...`` and ``hint: ...`` on
stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from olladist import __version__
from olladist.errors import OlladistError, SpecError
from olladist.layout import ENV_FILE, Layout

log = logging.getLogger("olladist")

Handler = Callable[[argparse.Namespace], int]


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines as systemd's EnvironmentFile= reads them (comments, quotes)."""
    out: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return out
    except OSError as exc:
        raise OlladistError(f"cannot read {path}: {exc.strerror}") from exc
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            raise OlladistError(f"{path}:{n}: expected KEY=value, got {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


class Context:
    """What every command needs, resolved once from flags, environment and the env file."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.layout = Layout(Path(args.root).resolve()) if args.root else Layout()
        env = read_env_file(self.layout.real(ENV_FILE))
        env.update({k: v for k, v in os.environ.items() if k.startswith("OLLADIST_")})
        self.env = env

    def setting(self, flag: str | None, key: str, default: str | None = None) -> str | None:
        return flag if flag is not None else self.env.get(key, default)

    @property
    def node(self) -> str:
        name = self.setting(getattr(self.args, "node", None), "OLLADIST_NODE")
        return name or socket.gethostname().split(".")[0]

    def spec_dir(self) -> Path:
        spec = self.setting(getattr(self.args, "spec", None), "OLLADIST_SPEC")
        positional = getattr(self.args, "spec_dir", None)
        if positional:
            spec = positional
        if spec:
            return Path(spec)
        source = self.setting(getattr(self.args, "source", None), "OLLADIST_SOURCE")
        if source and "://" not in source and Path(source).is_dir():
            path = self.setting(getattr(self.args, "path", None), "OLLADIST_PATH", ".")
            return Path(source) / (path or ".")
        raise OlladistError(
            "no spec given",
            hint=f"pass --spec DIR (a cluster-spec directory) or set OLLADIST_SOURCE in {ENV_FILE}",
        )


def cmd_validate(ctx: Context) -> int:
    from olladist.placement import place  # noqa: PLC0415
    from olladist.specload import load_spec  # noqa: PLC0415

    spec_dir = ctx.spec_dir()
    spec = load_spec(spec_dir)
    placement = place(spec)
    n_inst = sum(len(n.instances) for n in spec.nodes)
    print(
        f"{spec_dir}: valid: cluster {spec.cluster}, {len(spec.nodes)} nodes, {n_inst} instances, "
        f"{len(spec.models)} models ({sum(len(a.nodes) for a in placement.assignments)} placements)"
    )
    return 0


def cmd_placement(ctx: Context) -> int:
    from olladist.placement import place  # noqa: PLC0415
    from olladist.report import format_placement  # noqa: PLC0415
    from olladist.specload import load_spec  # noqa: PLC0415

    spec = load_spec(ctx.spec_dir())
    placement = place(spec)
    if ctx.args.json:
        print(json.dumps(placement.to_dict(), indent=2))
    else:
        print(format_placement(placement, [n.name for n in spec.nodes]))
    return 0


def cmd_render(ctx: Context) -> int:
    from olladist.render import render_node, write_tree  # noqa: PLC0415
    from olladist.specload import load_spec  # noqa: PLC0415

    spec = load_spec(ctx.spec_dir())
    node = _known_node(spec, ctx.node)
    out = Path(ctx.args.out)
    files = render_node(spec, node, layout=Layout(out.resolve()) if ctx.args.rooted else ctx.layout)
    write_tree(files, out)
    for path in files:
        print(path)
    return 0


def _known_node(spec: Any, name: str) -> str:
    names = [n.name for n in spec.nodes]
    if name not in names:
        raise OlladistError(
            f"node {name!r} is not in the spec (nodes: {', '.join(names)})",
            hint="pass --node NAME or set OLLADIST_NODE in /etc/olladist/olladist.env",
        )
    return name


def _plan(ctx: Context) -> tuple[Any, Any, Any]:
    from olladist.observe import observe  # noqa: PLC0415
    from olladist.plan import plan  # noqa: PLC0415
    from olladist.render import render_node  # noqa: PLC0415
    from olladist.specload import load_spec  # noqa: PLC0415
    from olladist.state import State  # noqa: PLC0415
    from olladist.validators import validate_render  # noqa: PLC0415

    spec = load_spec(ctx.spec_dir())
    node = _known_node(spec, ctx.node)
    if not ctx.args.no_validate:
        validate_render(lambda layout: render_node(spec, node, layout=layout))
    desired = render_node(spec, node, layout=ctx.layout)
    state = State(ctx.layout)
    return plan(node, desired, observe(ctx.layout, desired, state)), state, spec


def cmd_diff(ctx: Context) -> int:
    from olladist.report import print_plan  # noqa: PLC0415

    p, _, _ = _plan(ctx)
    if ctx.args.json:
        print(json.dumps(p.to_dict(), indent=2))
    else:
        print_plan(p)
    return 1 if p.drift else 0


def make_runtime(ctx: Context) -> Any:
    from olladist.runtime import FilesOnly  # noqa: PLC0415

    name = ctx.setting(ctx.args.runtime, "OLLADIST_RUNTIME", "none")
    if name == "none":
        return FilesOnly(ctx.layout)
    raise OlladistError(
        f"runtime {name!r} is not available in this build",
        hint="use --runtime none (files and unit enablement only)",
    )


def cmd_apply(ctx: Context) -> int:
    from olladist.apply import apply  # noqa: PLC0415
    from olladist.report import print_plan  # noqa: PLC0415

    p, state, _ = _plan(ctx)
    print_plan(p)
    if ctx.args.dry_run or not p.drift:
        return 0
    runtime = make_runtime(ctx)
    done = apply(p, ctx.layout, state, runtime)
    skipped = [a for a in p.runtime_actions() if not runtime.executes]
    print(f"applied {len(done) - len(skipped)} action(s)")
    for a in skipped:
        print(f"  not executed (runtime {runtime.name}): {a.kind} {a.target}")
    return 0


def cmd_schema(ctx: Context) -> int:
    from olladist.schema import schema  # noqa: PLC0415

    print(json.dumps(schema(ctx.args.part), indent=2))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("common options")
    g.add_argument("--spec", metavar="DIR", help="cluster-spec directory (default: $OLLADIST_SPEC)")
    g.add_argument("--source", metavar="URL", help="git URL or directory ($OLLADIST_SOURCE)")
    g.add_argument("--ref", metavar="REF", help="branch or tag ($OLLADIST_REF, default main)")
    g.add_argument("--path", metavar="P", help="spec directory inside the repo ($OLLADIST_PATH)")
    g.add_argument("--node", metavar="NAME", help="this node's name ($OLLADIST_NODE, hostname)")
    g.add_argument(
        "--root", metavar="DIR", help="write every path under DIR instead of / (tests, sandboxes)"
    )
    g.add_argument("--debug", action="store_true", help="log debug lines and show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="olladist",
        description="Declarative GitOps reconciler for an Ollama cluster.",
    )
    parser.add_argument("--version", action="version", version=f"olladist {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[Context], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        _common(p)
        p.set_defaults(handler=handler)
        return p

    p = add("validate", cmd_validate, "check a spec: exit 0 valid, 2 invalid")
    p.add_argument("spec_dir", nargs="?", metavar="SPEC", help="spec directory")
    p = add("placement", cmd_placement, "which models go to which nodes, and why")
    p.add_argument("spec_dir", nargs="?", metavar="SPEC", help="spec directory")
    p.add_argument("--json", action="store_true")
    p = add("render", cmd_render, "write the node's files under DIR, as they would be under /")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument(
        "--rooted",
        action="store_true",
        help="make paths inside the files point into DIR (default: as on the node)",
    )
    for name, handler, help_ in (
        ("diff", cmd_diff, "drift of this node: exit 0 none, 1 drift, 2 error"),
        ("apply", cmd_apply, "converge this node once"),
    ):
        p = add(name, handler, help_)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument(
            "--no-validate", action="store_true", help="skip haproxy -c / systemd-analyze verify"
        )
        p.add_argument(
            "--runtime",
            choices=["none", "local", "systemd"],
            help="what runs the services ($OLLADIST_RUNTIME, default none: files only)",
        )
        if name == "apply":
            p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    p = add("schema", cmd_schema, "print the JSON Schema of the spec")
    p.add_argument("--part", choices=["cluster", "node", "model"], default="cluster")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(Context(args)))
    except SpecError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except OlladistError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
