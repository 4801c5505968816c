"""The node's configuration: built once from the env file, the environment and the flags.

Every command that acts as a node (the CLI's commands, the reconciler daemon, doctor, dev)
reads its settings here, so they cannot disagree on what a setting means:

    /etc/olladist/olladist.env  <  OLLADIST_* in the environment  <  command-line flags

``--root`` (or ``OLLADIST_ROOT``, which lets a unit pass it through its EnvironmentFile=)
decides where the env file is read from. The settings a source needs are parsed by
``olladist.source.source_from_env``, the one parser of them (booleans included).

Kept light on purpose (no pydantic, jinja2, httpx or dulwich at import): the CLI imports it
at start-up for every command; what is heavy is imported by the factories that need it.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from olladist.errors import OlladistError
from olladist.files import write_atomic
from olladist.layout import ACCEPTED_FILE, ENV_FILE, PEER_SECRET_FILE, STATE_DIR, Layout
from olladist.nodelocal import NodeLocal

if TYPE_CHECKING:
    from olladist.runtime import Runtime
    from olladist.source import DirSource, GitSource

# Flags that override a setting of the env file, and the setting each one overrides.
FLAG_SETTINGS = {
    "spec": "OLLADIST_SPEC",
    "source": "OLLADIST_SOURCE",
    "ref": "OLLADIST_REF",
    "path": "OLLADIST_PATH",
    "node": "OLLADIST_NODE",
    "runtime": "OLLADIST_RUNTIME",
}
RUNTIMES = ("none", "local", "systemd")


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


def format_env_file(settings: Mapping[str, str], comment: str) -> str:
    """An env file that ``read_env_file`` (and systemd) read back as ``settings``."""
    for key, value in settings.items():
        if not key.isidentifier() or "\n" in value:
            raise ValueError(f"cannot write {key}={value!r} to an env file")
    return f"# {comment}\n" + "".join(f"{k}={v}\n" for k, v in settings.items())


@dataclass(frozen=True)
class NodeConfig:
    layout: Layout
    settings: Mapping[str, str]  # OLLADIST_* after env file, environment and flags

    @classmethod
    def load(
        cls,
        root: str | None = None,
        flags: Mapping[str, str | None] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> NodeConfig:
        """``flags``: values given on the command line (None: not given), by ``FLAG_SETTINGS``
        name."""
        environ = os.environ if environ is None else environ
        root = root or environ.get("OLLADIST_ROOT")
        layout = Layout(Path(root).resolve()) if root else Layout()
        settings = read_env_file(layout.real(ENV_FILE))
        settings.update({k: v for k, v in environ.items() if k.startswith("OLLADIST_")})
        for flag, value in (flags or {}).items():
            if value is not None:
                settings[FLAG_SETTINGS[flag]] = value
        return cls(layout, settings)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.settings.get(key, default)

    @property
    def node(self) -> str:
        """This node's name: OLLADIST_NODE, else the short hostname."""
        return self.settings.get("OLLADIST_NODE") or socket.gethostname().split(".")[0]

    @property
    def spec(self) -> str | None:
        """A spec directory used as it is (``--spec``), instead of a source."""
        return self.settings.get("OLLADIST_SPEC") or None

    @property
    def source(self) -> str | None:
        return self.settings.get("OLLADIST_SOURCE") or None

    @property
    def local(self) -> NodeLocal:
        return NodeLocal.from_env(self.settings)

    def open_source(self, state_dir: Path | None = None) -> GitSource | DirSource:
        """The node's source: ``--spec DIR`` as it is, else what OLLADIST_SOURCE and its
        companions say. ``state_dir``: where a git source keeps its clone (default: the
        node's state directory)."""
        from olladist.source import DirSource, source_from_env  # noqa: PLC0415 - dulwich

        if self.spec:
            return DirSource(Path(self.spec))
        if not self.source:
            raise OlladistError(
                "no source given",
                hint=f"pass --source URL (or --spec DIR), or set OLLADIST_SOURCE in {ENV_FILE}",
            )
        return source_from_env(
            self.settings,
            state_dir or self.layout.real(STATE_DIR) / "source",
            # Kept outside the state directory: deleting /var/lib/olladist must not let an older
            # signed commit back in (docs/security.md).
            floor_file=self.layout.real(ACCEPTED_FILE),
        )

    def make_runtime(self, default: str) -> Runtime:
        """What runs the services: OLLADIST_RUNTIME (``--runtime``), else systemd when this
        machine was booted with it, else ``default`` (the command's own)."""
        # Deferred like the source: subprocess and the unit parser, for commands that act.
        from olladist.runtime import FilesOnly  # noqa: PLC0415
        from olladist.runtime.systemd import SystemdRuntime, booted_with_systemd  # noqa: PLC0415

        booted = booted_with_systemd()
        name = self.settings.get("OLLADIST_RUNTIME", "systemd" if booted else default)
        if name == "none":
            return FilesOnly(self.layout)
        if name == "local":
            from olladist.runtime.local import LocalRuntime  # noqa: PLC0415

            return LocalRuntime(self.layout)
        if name == "systemd":
            if not booted:
                raise OlladistError(
                    "--runtime systemd, but this machine was not booted with systemd",
                    hint="use --runtime local: olladist then runs the services itself",
                )
            return SystemdRuntime()
        raise OlladistError(f"unknown runtime {name!r}", hint="use systemd, local or none")


def write_peer_secret(layout: Layout) -> Path:
    """Create the peer secret file under ``layout`` if it is missing, with a random secret.

    For one-machine clusters and tests, where every node shares the root. On real clusters the
    operator puts the same file on every node (a per-node random one would lock peers out).
    The gateway config only names this file: render never writes it."""
    target = layout.real(PEER_SECRET_FILE)
    if not target.exists():
        write_atomic(target, f"secret {secrets.token_hex(32)}\n".encode(), 0o640)
    return target
