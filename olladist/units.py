"""The unit files olladist ships, rendered for a layout.

``units/`` (``olladist/data/units``) holds them as they are installed on a real node (root
``/``). Packaging installs ``olladist-reconcile.service``; the reconciler itself renders the
gateway unit and the instance template into ``/etc/systemd/system`` so that they are upgraded
with olladist and, under ``--root``, point into the root.

Under a root other than ``/`` (tests, the systemd sandbox, dev clusters) a rendered unit:
- has every path under /etc/olladist, /run/olladist and /var/lib/olladist moved into the root;
- drops ``User=``/``Group=`` (no olladist user need exist), ``StateDirectory=`` and
  ``RuntimeDirectory=`` (they would create directories outside the root), and ``PrivateTmp=``
  and ``ProtectHome=`` (the root itself may live under /tmp or /home).
"""

from __future__ import annotations

import re
from importlib import resources

from olladist.files import File
from olladist.layout import SYSTEMD_DIR, Layout

GATEWAY_UNIT = "olladist-gateway.service"
INSTANCE_TEMPLATE = "olladist-ollama@.service"
RECONCILE_UNIT = "olladist-reconcile.service"
RENDERED_UNITS = (GATEWAY_UNIT, INSTANCE_TEMPLATE)

_ROOTED_PREFIXES = ("/etc/olladist", "/run/olladist", "/var/lib/olladist")
_DROPPED_UNDER_ROOT = re.compile(
    r"^(User|Group|StateDirectory|RuntimeDirectory|RuntimeDirectoryPreserve|PrivateTmp|ProtectHome)="
)


def shipped_unit(name: str) -> str:
    return resources.files("olladist").joinpath("data", "units", name).read_text(encoding="utf-8")


def for_layout(text: str, layout: Layout) -> str:
    if layout.root.as_posix() == "/":
        return text
    out = []
    for line in text.splitlines(keepends=True):
        if _DROPPED_UNDER_ROOT.match(line):
            continue
        for prefix in _ROOTED_PREFIXES:
            pattern = rf"(?<![\w/]){re.escape(prefix)}(?=[/\s,]|$)"
            line = re.sub(pattern, layout.path(prefix), line)  # noqa: PLW2901
        out.append(line)
    return "".join(out)


def unit_files(layout: Layout) -> dict[str, File]:
    return {
        f"{SYSTEMD_DIR}/{name}": File(for_layout(shipped_unit(name), layout), 0o644)
        for name in RENDERED_UNITS
    }
