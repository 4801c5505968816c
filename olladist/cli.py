"""The ``olladist`` command line.

Exit codes: 0 success (``diff``: no drift), 1 drift (``diff``; ``wait``: still after its
timeout), 2 error (invalid spec, a tool
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
        self.commit = ""
        # OLLADIST_ROOT lets a unit (the systemd test sandbox) pass --root through its
        # EnvironmentFile=, as it passes every other setting.
        root = args.root or os.environ.get("OLLADIST_ROOT")
        self.layout = Layout(Path(root).resolve()) if root else Layout()
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
        if not source:
            raise OlladistError(
                "no spec given",
                hint="pass --spec DIR (a cluster-spec directory) or --source URL, or set "
                f"OLLADIST_SOURCE in {ENV_FILE}",
            )
        # The tip of the node's source, as the reconciler would see it (fetched if it moved).
        from olladist.state import State  # noqa: PLC0415

        status = State(self.layout).status() or {}
        fetched = open_source(self).poll(accepted=status.get("applied_commit") or None)
        self.commit = fetched.commit
        return Path(fetched.checkout)


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


def _plan(ctx: Context) -> tuple[Any, Any, Any, Any]:
    from olladist.nodelocal import NodeLocal  # noqa: PLC0415
    from olladist.reconcile import full_plan, load_desired  # noqa: PLC0415
    from olladist.state import State  # noqa: PLC0415

    desired = load_desired(
        ctx.spec_dir(),
        ctx.node,
        ctx.layout,
        validate=not ctx.args.no_validate,
        local=NodeLocal.from_env(ctx.env),
    )
    runtime = make_runtime(ctx)
    state = State(ctx.layout)
    return full_plan(desired, ctx.layout, state, runtime), desired, state, runtime


def cmd_diff(ctx: Context) -> int:
    from olladist.report import print_plan  # noqa: PLC0415

    p, _, _, _ = _plan(ctx)
    if ctx.args.json:
        print(json.dumps(p.to_dict(), indent=2))
    else:
        print_plan(p)
    return 1 if p.drift else 0


def cmd_wait(ctx: Context) -> int:
    """Wait until this node has no drift: its files, services and models match the spec and
    its gateway serves every model it holds and reaches every peer."""
    import time  # noqa: PLC0415

    from olladist.reconcile import full_plan  # noqa: PLC0415
    from olladist.report import print_plan  # noqa: PLC0415

    deadline = time.monotonic() + ctx.args.timeout
    p, desired, state, runtime = _plan(ctx)
    while p.drift:
        if time.monotonic() > deadline:
            if ctx.args.json:
                print(json.dumps(p.to_dict(), indent=2))
            else:
                print(f"olladist wait: {desired.node} not converged after {ctx.args.timeout:g}s")
                print_plan(p)
            return 1
        time.sleep(WAIT_STEP)
        p = full_plan(desired, ctx.layout, state, runtime)
    commit = f" at {desired.commit[:12]}" if desired.commit else ""
    if ctx.args.json:
        print(json.dumps(p.to_dict(), indent=2))
    else:
        print(f"{desired.node}: converged and serving{commit}")
    return 0


# How often `olladist wait` plans again; a plan reads files and asks the local gateway.
WAIT_STEP = 0.5


def make_runtime(ctx: Context) -> Any:
    from olladist.runtime import FilesOnly  # noqa: PLC0415
    from olladist.runtime.systemd import SystemdRuntime, booted_with_systemd  # noqa: PLC0415

    default = "systemd" if booted_with_systemd() else ctx.args.default_runtime
    name = ctx.setting(ctx.args.runtime, "OLLADIST_RUNTIME", default)
    if name == "none":
        return FilesOnly(ctx.layout)
    if name == "local":
        from olladist.runtime.local import LocalRuntime  # noqa: PLC0415

        return LocalRuntime(ctx.layout)
    if name == "systemd":
        if not booted_with_systemd():
            raise OlladistError(
                "--runtime systemd, but this machine was not booted with systemd",
                hint="use --runtime local: olladist then runs the services itself",
            )
        return SystemdRuntime()
    raise OlladistError(f"unknown runtime {name!r}", hint="use systemd, local or none")


def cmd_apply(ctx: Context) -> int:
    from olladist.progress import PullProgress  # noqa: PLC0415
    from olladist.reconcile import execute  # noqa: PLC0415
    from olladist.report import print_plan  # noqa: PLC0415

    p, desired, state, runtime = _plan(ctx)
    print_plan(p)
    if ctx.args.dry_run or not p.drift:
        return 0
    outcome = execute(p, desired, ctx.layout, state, runtime, on_progress=PullProgress())
    skipped = [a for a in p.runtime_actions() if not runtime.executes]
    print(f"applied {len(outcome.done) - len(skipped)} action(s)")
    for a in skipped:
        print(f"  not executed (runtime {runtime.name}): {a.kind} {a.target}")
    for model, reason in sorted(outcome.model_errors.items()):
        print(f"error: model {model}: {reason}", file=sys.stderr)
    return 0 if outcome.ok else 2


def open_source(ctx: Context) -> Any:
    from olladist.layout import STATE_DIR  # noqa: PLC0415
    from olladist.source import DirSource, open_source, verify_from_env  # noqa: PLC0415

    state_dir = ctx.layout.real(STATE_DIR) / "source"
    spec = ctx.setting(getattr(ctx.args, "spec", None), "OLLADIST_SPEC")
    if spec:
        return DirSource(Path(spec))
    location = ctx.setting(getattr(ctx.args, "source", None), "OLLADIST_SOURCE")
    if not location:
        raise OlladistError(
            "no source given",
            hint=f"pass --source URL (or --spec DIR), or set OLLADIST_SOURCE in {ENV_FILE}",
        )
    return open_source(
        location,
        state_dir=state_dir,
        ref=ctx.setting(getattr(ctx.args, "ref", None), "OLLADIST_REF", "main") or "main",
        path=ctx.setting(getattr(ctx.args, "path", None), "OLLADIST_PATH", ".") or ".",
        verify=verify_from_env(ctx.env, state_dir),
        allow_rollback=(ctx.env.get("OLLADIST_ALLOW_ROLLBACK", "").lower() in ("1", "true", "yes")),
    )


def cmd_reconcile(ctx: Context) -> int:
    from olladist.daemon import Daemon  # noqa: PLC0415
    from olladist.nodelocal import NodeLocal  # noqa: PLC0415
    from olladist.progress import PullProgress  # noqa: PLC0415

    daemon = Daemon(
        open_source(ctx),
        ctx.node,
        ctx.layout,
        make_runtime(ctx),
        once=ctx.args.once,
        interval=ctx.args.interval,
        on_progress=PullProgress(),
        local=NodeLocal.from_env(ctx.env),
    )
    return daemon.run()


def cmd_status(ctx: Context) -> int:
    from olladist.state import State  # noqa: PLC0415
    from olladist.status import Status, gateway_health  # noqa: PLC0415

    data = State(ctx.layout).status()
    if data is not None:
        live = gateway_health(ctx.layout)
        if live:
            data["health"] = live  # fresher than the last reconcile's
    if data is None:
        raise OlladistError(
            "no reconcile has run on this node yet",
            hint="start it: systemctl enable --now olladist-reconcile (or olladist reconcile)",
        )
    if ctx.args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    s = Status.load(State(ctx.layout), data.get("node", ctx.node))
    s.errors, s.notes = data.get("errors", []), data.get("notes", [])
    s.health = data.get("health", [])
    print(format_status(s))
    return 0 if s.ok else 1


def format_status(s: Any) -> str:
    import datetime as dt  # noqa: PLC0415

    def when(t: float) -> str:
        if not t:
            return "never"
        return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    lines = [
        f"node:       {s.node}",
        f"applied:    {s.applied_commit or 'none'} ({when(s.applied_at)})",
        f"attempted:  {s.attempted_commit or 'none'} ({when(s.attempted_at)})",
    ]
    if s.attempted_error:
        lines.append(f"refused:    {s.attempted_error}")
    lines += [
        f"last run:   {when(s.last_run_at)}, {s.duration_s:.2f}s, " + ("ok" if s.ok else "FAILED"),
        f"drift:      {len(s.drift)} item(s)",
    ]
    lines += [f"  {d['kind']} {d['target']} ({d['reason']})" for d in s.drift]
    lines.append(f"models:     {', '.join(s.models) or '(none)'}")
    for h in s.health:
        lines.append(
            f"{h['kind']:<10}  {h['name']:<16} {h['status']:<10} sessions {h['sessions']}"
            f" queued {h['queued']} ({h['check'] or 'no check'})"
        )
    lines += [f"note:       {n}" for n in s.notes]
    for e in s.errors:
        lines.append(f"error:      {e['message']}")
        if e.get("hint"):
            lines.append(f"            hint: {e['hint']}")
    return "\n".join(lines)


def cmd_dev(ctx: Context) -> int:
    import signal  # noqa: PLC0415

    from olladist.dev import DevCluster, default_state_dir  # noqa: PLC0415

    state_dir = Path(ctx.args.state_dir) if ctx.args.state_dir else default_state_dir()
    spec_dir = Path(ctx.args.spec) if ctx.args.spec else _example_spec()
    cluster = DevCluster(spec_dir, state_dir.resolve(), interval=ctx.args.interval)
    if ctx.args.down:
        cluster.down()
        print(f"olladist dev: stopped the cluster of {state_dir}")
        return 0
    stop = {"now": False}

    def on_signal(_signum: int, _frame: Any) -> None:
        stop["now"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        spec = cluster.up(timeout=ctx.args.timeout)
        print(dev_instructions(spec, cluster))
        if ctx.args.detach:
            return 0
        while True:
            signal.pause()
    except KeyboardInterrupt:
        print("\nolladist dev: stopping", file=sys.stderr)
        cluster.down()
        return 0
    except OlladistError:
        cluster.down()
        raise


def _example_spec() -> Path:
    here = Path(__file__).resolve().parent.parent / "examples" / "cluster-spec"
    if (here / "cluster.yaml").is_file():
        return here
    raise OlladistError(
        "no spec given and the example spec is not next to this installation",
        hint="pass --spec DIR (a cluster-spec directory, e.g. examples/cluster-spec)",
    )


def dev_instructions(spec: Any, cluster: Any) -> str:
    first = spec.nodes[0]
    url = f"http://{first.listen}:{spec.gateway.port}"
    model = spec.models[0].name if spec.models else "llama3.2:1b"
    repo = cluster.state_dir / "repo"
    root = cluster.node_root(first.name)
    gateways = ", ".join(f"{n.name} http://{n.listen}:{spec.gateway.port}" for n in spec.nodes)
    roots = " ".join(f"--node-root {cluster.node_root(n.name)}" for n in spec.nodes)
    return f"""
The cluster is up. Every node's gateway speaks the Ollama API:
  {gateways}

Talk to it:
  curl {url}/api/tags
  curl {url}/api/generate -d '{{"model": "{model}", "prompt": "Why is the sky blue?"}}'
  OLLAMA_HOST={url} ollama run {model}            # the official CLI, if installed
  OpenAI clients: base_url={url}/v1

See drift and status of a node:
  olladist diff --root {root}
  olladist status --root {root}
  olladist check --spec {repo} --gateway {url} {roots}

Change the cluster: edit {repo}, then `git -C {repo} commit -am "..."`; the nodes converge
within a few seconds. Logs: {cluster.state_dir / "logs"}.
Stop: Ctrl-C here, or `olladist dev --down` from another terminal.
"""


def cmd_check(ctx: Context) -> int:
    from olladist.check import run_checks  # noqa: PLC0415
    from olladist.specload import load_spec  # noqa: PLC0415

    spec = load_spec(ctx.spec_dir())
    names = [n.name for n in spec.nodes]
    node = spec.node(ctx.node) if ctx.node in names else spec.nodes[0]
    host = node.listen if node.loopback else "127.0.0.1"
    gateway = ctx.args.gateway or f"http://{host}:{spec.gateway.port}"
    stats = ctx.args.stats or f"http://{host}:{spec.gateway.stats_port}"
    roots = [Path(r) for r in ctx.args.node_root]
    if not roots and ctx.args.root:
        roots = [ctx.layout.root]
    ok = run_checks(spec, gateway.rstrip("/"), stats, roots, lambda r: print(r.line(), flush=True))
    print("all checks passed" if ok else "some checks FAILED")
    return 0 if ok else 1


def cmd_doctor(ctx: Context) -> int:
    from olladist.doctor import run_doctor  # noqa: PLC0415

    env = dict(ctx.env)
    for flag, key in (
        ("source", "OLLADIST_SOURCE"),
        ("ref", "OLLADIST_REF"),
        ("path", "OLLADIST_PATH"),
    ):
        value = getattr(ctx.args, flag, None)
        if value:
            env[key] = value
    if ctx.args.spec:
        env["OLLADIST_SOURCE"] = ctx.args.spec
    return 0 if run_doctor(ctx.layout, env, ctx.node, print) else 1


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
        (
            "wait",
            cmd_wait,
            "wait until this node is converged and serving: exit 0, 1 on timeout, 2 error",
        ),
    ):
        p = add(name, handler, help_)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument(
            "--no-validate", action="store_true", help="skip haproxy -c / systemd-analyze verify"
        )
        p.add_argument(
            "--runtime",
            choices=["none", "local", "systemd"],
            help="what runs the services ($OLLADIST_RUNTIME; default systemd when booted "
            "with it, else none: files only)",
        )
        p.set_defaults(default_runtime="none")
        if name == "apply":
            p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
        if name == "wait":
            p.add_argument(
                "--timeout", type=float, default=300.0, metavar="S", help="default 300 seconds"
            )
    p = add("reconcile", cmd_reconcile, "the reconciler daemon (Type=notify under systemd)")
    p.add_argument("--once", action="store_true", help="reconcile once and exit")
    p.add_argument(
        "--runtime",
        choices=["none", "local", "systemd"],
        help="what runs the services ($OLLADIST_RUNTIME; default systemd when booted with "
        "it, else local: olladist runs them itself)",
    )
    p.set_defaults(default_runtime="local")
    p.add_argument(
        "--interval", type=float, metavar="SECONDS", help="override policy.interval (tests)"
    )
    p = add("status", cmd_status, "the last reconcile's result on this node")
    p.add_argument("--json", action="store_true")
    p = add("dev", cmd_dev, "run a whole cluster on this machine (the example spec by default)")
    p.add_argument("--state-dir", metavar="DIR", help="default ~/.local/state/olladist/dev")
    p.add_argument("--down", action="store_true", help="stop a running dev cluster")
    p.add_argument("--detach", action="store_true", help="return once converged")
    p.add_argument("--interval", type=float, default=5.0, help="reconcile interval (seconds)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for convergence")
    p = add("check", cmd_check, "end-to-end smoke test of a running cluster through a gateway")
    p.add_argument("--gateway", metavar="URL", help="default: this node's gateway")
    p.add_argument("--stats", metavar="URL", help="HAProxy stats listener of that gateway")
    p.add_argument(
        "--node-root",
        action="append",
        default=[],
        metavar="DIR",
        help="also check that the node under DIR has converged (repeatable)",
    )
    add("doctor", cmd_doctor, "what this machine lacks to run a node, and how to fix it")
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
