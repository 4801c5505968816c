"""Lua the gateway loads: what olladist ships (the same bytes on every node) and the literals
it writes into a node's own Lua settings (live-config.lua, fair-config.lua)."""

from __future__ import annotations

import re
from importlib import resources


def shipped_lua(name: str) -> str:
    """A Lua file shipped with olladist (olladist/data/lua/), the same on every node: it is
    installed with the rendered files, so a package upgrade that changes it is drift, and the
    gateway reloads, like a change of any rendered gateway file."""
    return resources.files("olladist").joinpath("data", "lua", name).read_text(encoding="utf-8")


# Printable ASCII except `"` and backslash: the characters lua_literal writes as they are.
_PLAIN_LUA = re.compile(r"[ !#-\[\]-~]*")


def lua_literal(value: object, indent: str = "") -> str:
    """``value`` (dicts with str keys, lists, str, int, bool, None) as a Lua table constructor.

    Strings are written with decimal escapes for anything outside printable ASCII, so no value
    can end the string or the file early."""
    inner = indent + "  "
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if _PLAIN_LUA.fullmatch(value):
            return '"' + value + '"'  # nothing to escape: most names (render of 1,000 nodes)
        out = []
        for b in value.encode():
            c = chr(b)
            out.append(c if 32 <= b < 127 and c not in '"\\' else f"\\{b:03d}")
        return '"' + "".join(out) + '"'
    if isinstance(value, list | tuple):
        if not value:
            return "{}"
        return "{\n" + "".join(f"{inner}{lua_literal(v, inner)},\n" for v in value) + indent + "}"
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = "".join(
            f"{inner}[{lua_literal(str(k))}] = {lua_literal(v, inner)},\n"
            for k, v in sorted(value.items())
        )
        return "{\n" + items + indent + "}"
    raise TypeError(f"no Lua literal for {type(value).__name__}")
