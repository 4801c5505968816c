"""Setting a node up as commands, not recipes: ``olladist node init``, ``olladist secret``.

- ``node init --source URL --node NAME`` writes ``/etc/olladist/olladist.env`` (``0600``) after
  checking that the source answers, holds a valid spec and that spec has the node;
- ``secret new`` prints a fresh peer secret in the form the gateway loads (a one-line map);
- ``secret install FILE|-`` installs one as ``/etc/olladist/secrets/peer.map``, owned
  ``root:olladist`` mode ``0640`` (HAProxy runs as ``olladist`` and only reads it).

Each refuses to replace a file that differs without ``--force`` and says what it did. The
same secret goes to every node: ``olladist secret new > peer.map`` once, then ``olladist secret
install peer.map`` on each (or ``olladist secret new | ssh root@NODE olladist secret install -``).
"""

from __future__ import annotations

import argparse
import grp
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from olladist.errors import OlladistError
from olladist.files import write_atomic
from olladist.layout import ENV_FILE, MIN_SECRET_LEN, PEER_SECRET_FILE, SECRETS_DIR, Layout

# The system group that runs HAProxy and the instances (packaging/olladist.sysusers.conf).
GROUP = "olladist"
ENV_MODE = 0o600
SECRET_MODE = 0o640
SECRETS_DIR_MODE = 0o750
# A map value is one token: no whitespace, nothing HAProxy's header syntax would mangle.
_SECRET_TOKEN = re.compile(r"[A-Za-z0-9_+/=.-]+")

# Optional settings, commented, as in the package's template (packaging/olladist.env).
_OPTIONAL = """\
# Optional (every variable: docs/cli.md#environment-variables):
# OLLADIST_PATH=clusters/prod
# OLLADIST_VERIFY_SSH_ALLOWED_SIGNERS=/etc/olladist/allowed_signers
# OLLADIST_VERIFY_GPG_KEYS=FINGERPRINT
# OLLADIST_PEER_CERT=/etc/olladist/tls/peer.pem
# OLLADIST_PEER_CA=/etc/olladist/tls/peers-ca.pem
# OLLADIST_GATEWAY_CERT=/etc/olladist/tls/public.pem
"""


def redact(url: str) -> str:
    """``url`` with any password or token in it replaced, for printing."""
    parts = urlsplit(url)
    if parts.password is None and not (parts.username and parts.scheme in ("http", "https")):
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def has_settings(path: Path) -> bool:
    """Whether an env file sets anything (the package's template is comments only)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return False
    return any(
        line.strip() and not line.lstrip().startswith(("#", ";")) for line in text.split("\n")
    )


def env_text(settings: Mapping[str, str]) -> str:
    lines = [
        "# olladist: this node's local settings (written by `olladist node init`).",
        "# Read by olladist-reconcile.service and every olladist command. Keep it 0600:",
        "# the source URL may hold a token. After an edit: systemctl restart olladist-reconcile",
    ]
    lines += [f"{k}={v}" for k, v in settings.items()]
    return "\n".join(lines) + "\n" + _OPTIONAL


def check_source(settings: Mapping[str, str], node: str) -> str:
    """Fetch the source into a temporary directory, load the spec, find the node; returns a
    line saying what was found. Raises what the reconciler would raise, with its hint."""
    from olladist.source import source_from_env  # noqa: PLC0415
    from olladist.specload import load_spec  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="olladist-init-") as tmp:
        fetched = source_from_env(settings, Path(tmp)).poll()
        spec = load_spec(fetched.checkout)
    names = [n.name for n in spec.nodes]
    if node not in names:
        raise OlladistError(
            f"node {node!r} is not in the spec at {redact(settings['OLLADIST_SOURCE'])} "
            f"(nodes: {', '.join(names)})",
            hint="pass --node with one of those names, or add the node to the spec first",
        )
    return f"source reachable: commit {fetched.commit[:12]}, cluster {spec.cluster}, node {node}"


def node_init(
    layout: Layout,
    settings: dict[str, str],
    *,
    force: bool = False,
    check: bool = True,
    say: Callable[[str], object] = print,
) -> Path:
    """Write the env file of this node from ``settings`` (OLLADIST_* keys)."""
    source, node = settings.get("OLLADIST_SOURCE"), settings.get("OLLADIST_NODE")
    if not source or not node:
        raise OlladistError(
            "olladist node init needs --source URL and --node NAME",
            hint="olladist node init --source https://git.example.com/ops/cluster-spec.git "
            "--node gpu-a",
        )
    target = layout.real(ENV_FILE)
    text = env_text(settings)
    if has_settings(target) and not force:
        if target.read_text(encoding="utf-8") == text:
            say(f"{target} already holds these settings; nothing to do")
            return target
        raise OlladistError(
            f"{target} already exists with settings of its own",
            hint="look at it first; add --force to replace it",
        )
    if check:
        say(check_source(settings, node))
    write_atomic(target, text.encode(), ENV_MODE)
    os.chmod(target, ENV_MODE)
    say(
        f"wrote {target} (mode 0600): "
        + ", ".join(
            f"{k}={redact(v) if k == 'OLLADIST_SOURCE' else v}" for k, v in settings.items()
        )
    )
    return target


def new_secret() -> str:
    """A fresh peer secret as the gateway loads it: the one-line map ``secret VALUE``."""
    return f"secret {secrets.token_hex(32)}\n"


def parse_secret(text: str, where: str) -> str:
    """The secret value from ``secret VALUE`` (what ``secret new`` prints) or a bare VALUE."""
    words = text.split()
    if len(words) == 2 and words[0] == "secret":
        value = words[1]
    elif len(words) == 1:
        value = words[0]
    else:
        raise OlladistError(
            f"{where}: expected one line `secret VALUE` (as `olladist secret new` prints it)",
            hint="make one with: olladist secret new > peer.map",
        )
    if len(value) < MIN_SECRET_LEN or not _SECRET_TOKEN.fullmatch(value):
        raise OlladistError(
            f"{where}: the secret must be at least {MIN_SECRET_LEN} characters of "
            "letters, digits and _+/=.-",
            hint="make one with: olladist secret new > peer.map",
        )
    return value


def _group_id(layout: Layout) -> int | None:
    """The olladist group's id; None under a test root where it need not exist."""
    try:
        return grp.getgrnam(GROUP).gr_gid
    except KeyError:
        if layout.root.as_posix() != "/":
            return None
        raise OlladistError(
            f"the {GROUP} group does not exist, so the gateway could not read the secret",
            hint="install the olladist package (it creates the user), or run "
            "systemd-sysusers with packaging/olladist.sysusers.conf",
        ) from None


def secret_install(
    layout: Layout,
    source: str,
    *,
    force: bool = False,
    stdin: TextIO | None = None,
    say: Callable[[str], object] = print,
) -> Path:
    """Install the peer secret read from ``source`` (a file, or ``-`` for standard input)."""
    if source == "-":
        text, where = (stdin or sys.stdin).read(), "standard input"
    else:
        try:
            text, where = Path(source).read_text(encoding="utf-8"), source
        except OSError as exc:
            raise OlladistError(
                f"cannot read {source}: {exc.strerror}",
                hint="pass the file `olladist secret new` wrote, or - for standard input",
            ) from exc
    content = f"secret {parse_secret(text, where)}\n"
    target = layout.real(PEER_SECRET_FILE)
    gid = _group_id(layout)
    if target.exists() and not force:
        if target.read_text(encoding="utf-8") == content:
            say(f"{target} already holds this secret; nothing to do")
            return target
        raise OlladistError(
            f"{target} already holds another secret",
            hint="every node needs the same one: replacing it locks this node out of its "
            "peers until they have the new one too. Add --force to replace it",
        )
    folder = layout.real(SECRETS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, SECRETS_DIR_MODE)
    write_atomic(target, content.encode(), SECRET_MODE)
    os.chmod(target, SECRET_MODE)
    owner = "mode 0640"
    if gid is not None:
        os.chown(folder, 0, gid)
        os.chown(target, 0, gid)
        owner = f"root:{GROUP} 0640"
    say(f"installed the peer secret as {target} ({owner})")
    return target


def add_commands(
    sub: Any, common: Callable[[argparse.ArgumentParser], None], to_handler: Callable[..., Any]
) -> None:
    """The ``node`` and ``secret`` commands, under the CLI's subparsers ``sub``. ``common``
    adds the common options; ``to_handler`` wraps ``f(args, layout, env)`` as a CLI handler."""
    node = sub.add_parser("node", help="set this node up", description="set this node up")
    node_sub = node.add_subparsers(dest="node_command", required=True, metavar="COMMAND")
    init = node_sub.add_parser(
        "init",
        help=f"write {ENV_FILE} (mode 0600), after checking the source",
        description=f"write {ENV_FILE} (mode 0600), after checking the source has the node",
    )
    common(init)
    init.add_argument("--force", action="store_true", help="replace an existing env file")
    init.add_argument(
        "--no-check", action="store_true", help="write it without fetching the source"
    )
    init.add_argument(
        "--ollama-binary", metavar="PATH", help="OLLADIST_OLLAMA_BINARY (default: the spec's)"
    )
    init.set_defaults(handler=to_handler(_cmd_node_init))

    secret = sub.add_parser("secret", help="the peer secret", description="the peer secret")
    secret_sub = secret.add_subparsers(dest="secret_command", required=True, metavar="COMMAND")
    new = secret_sub.add_parser("new", help="print a fresh peer secret")
    common(new)
    new.set_defaults(handler=to_handler(_cmd_secret_new))
    install = secret_sub.add_parser(
        "install", help=f"install a peer secret as {PEER_SECRET_FILE} (root:{GROUP} 0640)"
    )
    common(install)
    install.add_argument("file", metavar="FILE", help="the secret file, or - for standard input")
    install.add_argument("--force", action="store_true", help="replace a different secret")
    install.set_defaults(handler=to_handler(_cmd_secret_install))


def _cmd_node_init(args: argparse.Namespace, layout: Layout, env: Mapping[str, str]) -> int:
    source = args.source or ""
    if source and "://" not in source and Path(source).exists():
        source = str(Path(source).resolve())  # the unit runs from /, not from here
    settings = {"OLLADIST_SOURCE": source, "OLLADIST_NODE": args.node or ""}
    for key, value in (
        ("OLLADIST_REF", args.ref),
        ("OLLADIST_PATH", args.path),
        ("OLLADIST_OLLAMA_BINARY", args.ollama_binary),
    ):
        if value:
            settings[key] = value
    node_init(layout, settings, force=args.force, check=not args.no_check)
    root = "" if layout.root.as_posix() == "/" else f" --root {layout.root}"
    print(f"next: olladist doctor{root}")
    return 0


def _cmd_secret_new(args: argparse.Namespace, layout: Layout, env: Mapping[str, str]) -> int:
    sys.stdout.write(new_secret())
    print(
        "# the same secret goes to every node: olladist secret install FILE (or -)",
        file=sys.stderr,
    )
    return 0


def _cmd_secret_install(args: argparse.Namespace, layout: Layout, env: Mapping[str, str]) -> int:
    secret_install(layout, args.file, force=args.force)
    return 0
