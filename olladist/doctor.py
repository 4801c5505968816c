"""``olladist doctor``: what this machine lacks to run an olladist node, and how to fix it.

Each finding is one line, ``ok``, ``warn`` or ``FAIL``, with the fix on the next line. Exit 0
when nothing failed. It only reads: it changes nothing on the machine.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from olladist.errors import OlladistError, ToolError
from olladist.gateway.topology import listeners
from olladist.layout import ENV_FILE, STATE_DIR, Layout
from olladist.nodeconfig import NodeConfig
from olladist.ports import who_listens
from olladist.runtime.systemd import booted_with_systemd
from olladist.spec import Spec
from olladist.specload import load_spec
from olladist.validators import haproxy_version


@dataclass(frozen=True)
class Finding:
    level: str  # ok | warn | FAIL
    what: str
    fix: str = ""

    def lines(self) -> str:
        head = f"{self.level:<4} {self.what}"
        return head + (f"\n     fix: {self.fix}" if self.fix and self.level != "ok" else "")


def check_python() -> Finding:
    v = sys.version_info
    if v < (3, 11):
        return Finding("FAIL", f"Python {v.major}.{v.minor}", "olladist needs Python >= 3.11")
    return Finding("ok", f"Python {v.major}.{v.minor}.{v.micro}")


def check_haproxy() -> Finding:
    try:
        exe, version = haproxy_version()
    except ToolError as exc:
        return Finding("FAIL", exc.message, exc.hint or "")
    return Finding("ok", f"haproxy {version} at {exe}")


def check_systemd() -> list[Finding]:
    out = []
    if booted_with_systemd():
        out.append(Finding("ok", "systemd is PID 1: --runtime systemd"))
    else:
        out.append(
            Finding(
                "warn",
                "not booted with systemd",
                "olladist runs the services itself: --runtime local (containers, dev)",
            )
        )
    for tool in ("systemctl", "systemd-analyze"):
        if shutil.which(tool) is None:
            out.append(Finding("FAIL", f"{tool} not found", "apt-get install systemd"))
    return out


def check_binary(spec: Spec | None, config: NodeConfig) -> Finding:
    try:
        binary = config.local.binary or (spec.ollama.binary if spec else None)
    except OlladistError as exc:
        return Finding("FAIL", exc.message, exc.hint or "")
    if binary is None:
        binary = shutil.which("ollama") or "/usr/local/bin/ollama"
    if os.access(binary, os.X_OK):
        return Finding("ok", f"ollama binary {binary}")
    return Finding(
        "FAIL",
        f"ollama binary {binary} is missing or not executable",
        "install Ollama (https://ollama.com/download), or for a node without GPUs set "
        "OLLADIST_OLLAMA_BINARY=$(command -v olladist-sim) in " + ENV_FILE,
    )


def _root_flag(layout: Layout) -> str:
    return "" if layout.root.as_posix() == "/" else f" --root {layout.root}"


def check_env_file(config: NodeConfig) -> list[Finding]:
    from olladist.nodesetup import has_settings, redact  # noqa: PLC0415

    layout = config.layout
    path = layout.real(ENV_FILE)
    location = config.spec or config.source
    out = []
    init = f"olladist node init --source URL --node NAME{_root_flag(layout)}"
    if not has_settings(path):
        # The unit reads its settings from this file only: without it the reconciler cannot
        # start, whatever this command was given on its command line.
        out.append(
            Finding(
                "warn" if location else "FAIL",
                f"{path} " + ("sets nothing" if path.exists() else "does not exist"),
                init,
            )
        )
    elif path.stat().st_mode & 0o077:
        out.append(
            Finding(
                "warn",
                f"{path} is readable by others (mode {path.stat().st_mode & 0o777:04o}); "
                "its source URL may hold a token",
                f"chmod 0600 {path}",
            )
        )
    if not location:
        out.append(Finding("FAIL", "OLLADIST_SOURCE is not set", init))
    else:
        out.append(Finding("ok", f"source {redact(location)}"))
    return out


def check_node_local(
    spec: Spec | None, node: str, layout: Layout, env: Mapping[str, str]
) -> list[Finding]:
    """The node-local files this node's gateway loads (never in git): the peer secret, the
    API keys file. HAProxy refuses its config while one is missing."""
    from olladist.gateway.topology import build  # noqa: PLC0415
    from olladist.layout import PEER_SECRET_FILE, ROOT  # noqa: PLC0415
    from olladist.nodelocal import node_tls_from_env  # noqa: PLC0415
    from olladist.placement import place  # noqa: PLC0415

    if spec is None or node not in [n.name for n in spec.nodes]:
        return []
    out = []
    try:
        topology = build(spec, node, place(spec), ROOT, node_tls_from_env(dict(env)))
    except OlladistError as exc:
        return [Finding("FAIL", exc.message, exc.hint or "")]
    root = _root_flag(layout)
    secret = layout.real(PEER_SECRET_FILE)
    if topology.needs_peer_secret:
        if secret.is_file():
            out.append(Finding("ok", f"peer secret {secret}"))
        else:
            out.append(
                Finding(
                    "FAIL",
                    f"peer secret {secret} is missing (this node has peers)",
                    "once, on any machine: olladist secret new > peer.map; then on every "
                    f"node: olladist secret install peer.map{root}",
                )
            )
    keys = spec.gateway.api_keys_file
    if keys and not layout.real(keys).is_file():
        out.append(
            Finding(
                "FAIL",
                f"API keys file {layout.real(keys)} is missing (gateway.api_keys_file)",
                "create it with the SHA-256 of each key, one a line: docs/operating.md, section 3",
            )
        )
    return out


def check_installed(layout: Layout) -> list[Finding]:
    """On a real node (root /): the olladist user and the reconciler enabled."""
    import pwd  # noqa: PLC0415

    if layout.root.as_posix() != "/":
        return []
    out = []
    try:
        pwd.getpwnam("olladist")
        out.append(Finding("ok", "user olladist exists"))
    except KeyError:
        out.append(
            Finding(
                "FAIL",
                "user olladist does not exist (the gateway and instances run as it)",
                "install the olladist package, or: systemd-sysusers "
                "packaging/olladist.sysusers.conf",
            )
        )
    if booted_with_systemd() and shutil.which("systemctl"):
        state = subprocess.run(
            ["systemctl", "is-enabled", "olladist-reconcile.service"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if state == "enabled":
            out.append(Finding("ok", "olladist-reconcile.service is enabled"))
        else:
            out.append(
                Finding(
                    "warn",
                    f"olladist-reconcile.service is {state or 'not installed'}",
                    "systemctl enable --now olladist-reconcile",
                )
            )
    return out


def check_source(config: NodeConfig) -> tuple[Finding, Spec | None]:
    if not (config.spec or config.source):
        return Finding("warn", "source not checked (OLLADIST_SOURCE unset)"), None
    with tempfile.TemporaryDirectory(prefix="olladist-doctor-") as tmp:
        try:
            src = config.open_source(state_dir=Path(tmp))
            fetched = src.poll()
            spec = load_spec(fetched.checkout)
        except OlladistError as exc:
            return Finding("FAIL", f"source: {exc.message}", exc.hint or ""), None
    return Finding("ok", f"source reachable, commit {fetched.commit[:12]}, spec valid"), spec


def check_node(spec: Spec | None, node: str) -> Finding:
    if spec is None:
        return Finding("warn", "node not checked (no spec)")
    names = [n.name for n in spec.nodes]
    if node not in names:
        return Finding(
            "FAIL",
            f"this node ({node}) is not in the spec",
            f"set OLLADIST_NODE in {ENV_FILE} to one of: {', '.join(names)}",
        )
    return Finding("ok", f"node {node} is in the spec")


def check_ports(spec: Spec | None, node: str) -> list[Finding]:
    if spec is None or node not in [n.name for n in spec.nodes]:
        return []
    out = []
    for addr, port, what in listeners(spec, spec.node(node)):
        holder = who_listens(addr, port)
        if holder and "haproxy" not in holder and "ollama" not in holder:
            out.append(
                Finding("FAIL", f"{addr}:{port} ({what}) is taken by {holder}", "free the port")
            )
    if not out:
        out.append(Finding("ok", "ports are free or held by olladist's own services"))
    return out


def check_permissions(layout: Layout) -> Finding:
    target = layout.real(STATE_DIR)
    probe = target if target.exists() else target.parent
    while not probe.exists():
        probe = probe.parent
    if os.access(probe, os.W_OK):
        return Finding("ok", f"can write {target}")
    return Finding("FAIL", f"cannot write {target}", "run olladist as root (the unit does)")


def check_fds() -> Finding:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        return Finding("warn", f"file descriptor limit {soft}", "raise LimitNOFILE (units do)")
    return Finding("ok", f"file descriptor limit {soft}")


def run_doctor(config: NodeConfig, emit: Callable[[str], object]) -> bool:
    node = config.node
    findings: list[Finding] = [check_python(), check_haproxy(), *check_systemd()]
    findings += check_env_file(config)
    src, spec = check_source(config)
    findings += [src, check_node(spec, node), check_binary(spec, config), *check_ports(spec, node)]
    findings += check_node_local(spec, node, config.layout, config.settings)
    findings += [check_permissions(config.layout), check_fds(), *check_installed(config.layout)]
    for f in findings:
        emit(f.lines())
    failed = sum(f.level == "FAIL" for f in findings)
    emit(f"{failed} problem(s) found" if failed else "no problems found")
    return failed == 0
