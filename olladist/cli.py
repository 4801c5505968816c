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
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from olladist import __version__
from olladist.errors import OlladistError, SpecError
from olladist.files import write_tree
from olladist.layout import ENV_FILE, Layout
from olladist.nodeconfig import FLAG_SETTINGS, NodeConfig
from olladist.report import format_placement, format_status, format_unplanned, print_plan
from olladist.state import State
from olladist.status import Status, gateway_health

# The imports left inside the commands below are the heavy ones (pydantic via the spec,
# jinja2, httpx, dulwich). `python -X importtime -m olladist --help` (best of 7, on a busy
# 2-core machine): olladist.cli takes 0.08 s as it is, 0.39 s with those at the top, so every
# `--help`, `status` or mistyped flag would wait 0.3 s for parsers it never uses. The light
# modules (state, status, report, files, nodeconfig) are imported here.

log = logging.getLogger("olladist")

Handler = Callable[[argparse.Namespace], int]


class Context:
    """What every command needs: its flags and the node's configuration, resolved once."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.commit = ""
        flags = {flag: getattr(args, flag, None) for flag in FLAG_SETTINGS}
        self.config = NodeConfig.load(args.root, flags)

    @property
    def layout(self) -> Layout:
        return self.config.layout

    @property
    def node(self) -> str:
        return self.config.node

    def spec_dir(self) -> Path:
        positional = getattr(self.args, "spec_dir", None)
        if positional:
            return Path(positional)
        if self.config.spec:
            return Path(self.config.spec)
        if not self.config.source:
            raise OlladistError(
                "no spec given",
                hint="pass --spec DIR (a cluster-spec directory) or --source URL, or set "
                f"OLLADIST_SOURCE in {ENV_FILE}",
            )
        # The tip of the node's source, as the reconciler would see it (fetched if it moved).
        status = State(self.layout).status() or {}
        fetched = self.config.open_source().poll(accepted=status.get("applied_commit") or None)
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
    from olladist.specload import load_spec  # noqa: PLC0415

    spec = load_spec(ctx.spec_dir())
    placement = place(spec)
    if ctx.args.json:
        print(json.dumps(placement.to_dict(), indent=2))
    else:
        print(format_placement(placement, [n.name for n in spec.nodes]))
    return 0


def cmd_render(ctx: Context) -> int:
    from olladist.render import render_node  # noqa: PLC0415
    from olladist.specload import load_spec  # noqa: PLC0415

    spec = load_spec(ctx.spec_dir())
    node = spec.this_node(ctx.node).name
    out = Path(ctx.args.out)
    files = render_node(spec, node, layout=Layout(out.resolve()) if ctx.args.rooted else ctx.layout)
    write_tree(files, out)
    for path in files:
        print(path)
    return 0


def _plan(ctx: Context) -> tuple[Any, Any, Any, Any]:
    from olladist.reconcile import full_plan, load_desired  # noqa: PLC0415

    desired = load_desired(
        ctx.spec_dir(),
        ctx.node,
        ctx.layout,
        validate=not ctx.args.no_validate,
        local=ctx.config.local,
    )
    runtime = ctx.config.make_runtime(ctx.args.default_runtime)
    state = State(ctx.layout)
    return full_plan(desired, ctx.layout, state, runtime), desired, state, runtime


def cmd_diff(ctx: Context) -> int:
    from olladist.rolloutstate import diff_view  # noqa: PLC0415
    from olladist.specload import load_spec  # noqa: PLC0415

    p, desired, state, _ = _plan(ctx)
    status = state.status() or {}
    source = ctx.config.open_source()
    first_parent = getattr(source, "first_parent", None)
    parent = None
    if first_parent is not None and not ctx.commit.startswith("dir:"):
        try:
            parent = first_parent(ctx.commit) or ""
        except OlladistError:
            parent = None  # not in the mirror: against the applied commit, as before
    rollout, rollout_json = diff_view(
        status.get("rollout") or {},
        desired.node,
        commit=ctx.commit,
        applied=status.get("applied_commit") or "",
        spec_of=lambda commit: load_spec(source.checkout(commit)),
        parent=parent,
    )
    if ctx.args.json:
        print(json.dumps({**p.to_dict(), "rollout": rollout_json}, indent=2))
    else:
        print_plan(p)
        for line in rollout:
            print(line)
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


def cmd_apply(ctx: Context) -> int:
    from olladist.progress import PullProgress  # noqa: PLC0415
    from olladist.reconcile import execute  # noqa: PLC0415

    p, desired, state, runtime = _plan(ctx)
    print_plan(p)
    if ctx.args.dry_run or not p.drift:
        return 0
    outcome = execute(
        p,
        desired,
        ctx.layout,
        state,
        runtime,
        on_progress=PullProgress(),
        tls=ctx.config.local.tls,  # peers-first transfers authenticate as the daemon does
    )
    if unplanned := format_unplanned(p, outcome.done):
        print(unplanned)
    skipped = [a for a in p.runtime_actions() if not runtime.executes]
    print(f"applied {len(outcome.done) - len(skipped)} action(s)")
    for a in skipped:
        print(f"  not executed (runtime {runtime.name}): {a.kind} {a.target}")
    for model, reason in sorted(outcome.model_errors.items()):
        print(f"error: model {model}: {reason}", file=sys.stderr)
    for what, reason in sorted(outcome.model_warnings.items()):
        print(f"warning: model {what}: {reason}", file=sys.stderr)
    return 0 if outcome.ok else 2


def cmd_reconcile(ctx: Context) -> int:
    from olladist.daemon import Daemon  # noqa: PLC0415
    from olladist.progress import PullProgress  # noqa: PLC0415

    daemon = Daemon(
        ctx.config,
        ctx.config.make_runtime(ctx.args.default_runtime),
        once=ctx.args.once,
        interval=ctx.args.interval,
        on_progress=PullProgress(),
    )
    return daemon.run()


def cmd_status(ctx: Context) -> int:

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


def cmd_dev(ctx: Context) -> int:
    from olladist.dev import DevCluster, default_state_dir  # noqa: PLC0415

    state_dir = Path(ctx.args.state_dir) if ctx.args.state_dir else default_state_dir()
    spec_dir = Path(ctx.args.spec) if ctx.args.spec else _example_spec()
    cluster = DevCluster(spec_dir, state_dir.resolve(), interval=ctx.args.interval)
    if ctx.args.down:
        cluster.down()
        print(f"olladist dev: stopped the cluster of {state_dir}")
        return 0
    if ctx.args.reset:
        cluster.reset()
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
        on_purpose, why = cluster.wait_stopped()
        print(f"olladist dev: {why}", file=sys.stderr)
        cluster.down()  # whatever is left of it, by PID
        return 0 if on_purpose else 2
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
    from olladist.gateway.topology import local_address  # noqa: PLC0415
    from olladist.specload import load_spec  # noqa: PLC0415

    spec = load_spec(ctx.spec_dir())
    names = [n.name for n in spec.nodes]
    node = spec.node(ctx.node) if ctx.node in names else spec.nodes[0]
    host = local_address(node)
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

    return 0 if run_doctor(ctx.config, print) else 1


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
    p.add_argument(
        "--reset", action="store_true", help="make the dev repository afresh from the spec"
    )
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
    from olladist.nodesetup import add_commands  # noqa: PLC0415

    add_commands(sub, _common, lambda f: lambda ctx: f(ctx.args, ctx.layout, ctx.config.settings))
    from olladist.apikeys import add_commands as add_key_commands  # noqa: PLC0415

    add_key_commands(sub, _common, lambda f: lambda ctx: f(ctx.args, ctx.layout))
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
