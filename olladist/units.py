"""The unit files olladist ships, rendered for a layout.

``units/`` (``olladist/data/units``) holds them as they are installed on a real node (root
``/``). Packaging installs ``olladist-reconcile.service``; the reconciler itself renders the
gateway unit and the instance template into ``/etc/systemd/system`` so that they are upgraded
with olladist and, under ``--root``, point into the root.

Under a root other than ``/`` (tests, the systemd sandbox, dev clusters) a rendered unit:
- has every path under /etc/olladist, /run/olladist, /var/lib/olladist and /etc/systemd/system
  moved into the root;
- drops ``User=``/``Group=`` (no olladist user need exist), ``PrivateTmp=`` and
  ``ProtectHome=`` (the root itself may live under /tmp or /home);
- replaces ``StateDirectory=`` and ``RuntimeDirectory=``, which would create directories outside
  the root, with their equivalent inside it: a privileged ``ExecStartPre=+mkdir`` and
  ``ReadWritePaths=`` (under ``ProtectSystem=strict`` nothing else is writable);
- keeps ``/tmp`` writable where ``PrivateTmp=`` gave the unit a writable one (the reconciler
  stages renders there for validation).
"""

from __future__ import annotations

import re
from importlib import resources

from olladist.files import File
from olladist.layout import SYSTEMD_DIR, Layout

GATEWAY_UNIT = "olladist-gateway.service"
INSTANCE_PREFIX = "olladist-ollama@"
INSTANCE_TEMPLATE = f"{INSTANCE_PREFIX}.service"
RECONCILE_UNIT = "olladist-reconcile.service"
RENDERED_UNITS = (GATEWAY_UNIT, INSTANCE_TEMPLATE)
DROPIN_NAME = "10-olladist.conf"


# Instance units are named, and their names read back, only here.
def instance_unit(instance: str) -> str:
    """The unit of instance ``instance``: ``olladist-ollama@NAME.service``."""
    return f"{INSTANCE_PREFIX}{instance}.service"


def instance_name(unit: str) -> str | None:
    """The instance a unit runs (None: not an instance unit, or the template itself)."""
    if unit.startswith(INSTANCE_PREFIX) and unit.endswith(".service"):
        return unit.removeprefix(INSTANCE_PREFIX).removesuffix(".service") or None
    return None


def instance_dropin_path(instance: str) -> str:
    """Node path of the drop-in olladist renders for ``instance``."""
    return f"{SYSTEMD_DIR}/{instance_unit(instance)}.d/{DROPIN_NAME}"


def dropin_unit(path: str) -> str | None:
    """The instance unit whose drop-in directory holds ``path``, if it is one."""
    head, sep, _ = path.removeprefix(SYSTEMD_DIR + "/").partition(".d/")
    if path.startswith(SYSTEMD_DIR + "/") and sep and "/" not in head and instance_name(head):
        return head
    return None


_ROOTED_PREFIXES = ("/etc/olladist", "/run/olladist", "/var/lib/olladist", "/etc/systemd/system")
_DROPPED_UNDER_ROOT = re.compile(r"^(User|Group|RuntimeDirectoryPreserve|ProtectHome)=")
# systemd's managed directories and where they live on a node.
_MANAGED_DIRS = {"StateDirectory": "/var/lib", "RuntimeDirectory": "/run"}
_MANAGED_DIR = re.compile(rf"^({'|'.join(_MANAGED_DIRS)})=(.*)$")
_PRIVATE_TMP = re.compile(r"^PrivateTmp=(yes|true|on|1)\s*$")


def shipped_unit(name: str) -> str:
    return resources.files("olladist").joinpath("data", "units", name).read_text(encoding="utf-8")


def for_layout(text: str, layout: Layout) -> str:
    if layout.root.as_posix() == "/":
        return text
    out = []
    dirs: list[str] = []
    private_tmp = False
    for line in text.splitlines(keepends=True):
        managed = _MANAGED_DIR.match(line.rstrip("\n"))
        if managed:
            base = _MANAGED_DIRS[managed.group(1)]
            dirs += [layout.path(f"{base}/{d}") for d in managed.group(2).split()]
            continue
        if _PRIVATE_TMP.match(line):
            private_tmp = True
            continue
        if _DROPPED_UNDER_ROOT.match(line):
            continue
        for prefix in _ROOTED_PREFIXES:
            pattern = rf"(?<![\w/]){re.escape(prefix)}(?=[/\s,]|$)"
            line = re.sub(pattern, layout.path(prefix), line)  # noqa: PLW2901
        out.append(line)
    extra = []
    if dirs:
        extra += [
            "# Under a root: the directories StateDirectory=/RuntimeDirectory= would make.\n",
            f"ExecStartPre=+/bin/mkdir -p {' '.join(dirs)}\n",
            f"ReadWritePaths={' '.join(dirs)}\n",
        ]
    if private_tmp:
        extra += ["# Under a root: /tmp is shared (the root may be in it) but stays writable.\n"]
        extra += ["ReadWritePaths=/tmp\n"]
    if extra:
        at = out.index("[Service]\n") + 1
        out[at:at] = extra
    return "".join(out)


def managed_dirs(text: str, layout: Layout) -> list[str]:
    """Real paths of the directories systemd makes for a unit at start (``StateDirectory=``,
    ``RuntimeDirectory=``), under ``layout``."""
    dirs: list[str] = []
    for line in text.splitlines():
        managed = _MANAGED_DIR.match(line)
        if managed:
            base = _MANAGED_DIRS[managed.group(1)]
            dirs += [layout.path(f"{base}/{d}") for d in managed.group(2).split()]
    return dirs


def unit_files(layout: Layout) -> dict[str, File]:
    return {
        f"{SYSTEMD_DIR}/{name}": File(for_layout(shipped_unit(name), layout), 0o644)
        for name in RENDERED_UNITS
    }
