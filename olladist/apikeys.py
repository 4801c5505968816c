"""The API keys file (``gateway.api_keys_file``) and the ``olladist key`` commands.

The file is node-local (never in git) and holds no key, only each key's SHA-256 digest, one
key a line, optionally followed by its settings::

    # comments and blank lines are ignored
    3b0c...64 lowercase hex digits...e1
    9f86...64 lowercase hex digits...08  name=batch weight=1 class=low requests_per_minute=600
    2c26...64 lowercase hex digits...ae  name=chat weight=4 max_concurrent=8

A line with the digest alone is the old format and stays valid. Settings (docs/security.md):

- ``name=LABEL``: for people (the file, ``olladist key list``); the gateway never shows it;
- ``weight=N`` (1-1000, default 1): share of the queue when keys compete (docs/gateway.md);
- ``class=high|normal|low``: a strict priority class, served before any lower class;
- ``max_concurrent=N`` and ``requests_per_minute=N``: the key's own limits (429 beyond them),
  replacing ``gateway.clients``' defaults; ``none`` lifts a default for this key.

HAProxy reads the file at start and reload twice: its ACL (``-M -f``: the first word of a
line) checks the key, and the shipped ``fair.lua`` reads the settings, refusing the whole
config on a bad line with the same ``file:line: message`` as :func:`parse_keys`. So a bad
edit fails ``haproxy -c``, which the gateway unit and the reconciler run before every reload:
the running gateway keeps its old keys.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import hashlib
import os
import re
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from olladist.errors import OlladistError
from olladist.files import write_atomic
from olladist.layout import Layout

DEFAULT_FILE = "/etc/olladist/api-keys"
GROUP = "olladist"  # runs HAProxy, which only reads the file
MODE = 0o640
MAX_WEIGHT = 1000
MAX_CONCURRENT = 100000
MAX_RPM = 1000000
_DIGEST = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
# The order settings are written in; the parser takes any order.
SETTINGS = ("name", "weight", "class", "max_concurrent", "requests_per_minute")
HINT = (
    "one key a line: DIGEST [name=N] [weight=N] [class=high|normal|low] [max_concurrent=N] "
    "[requests_per_minute=N]; docs/security.md"
)


class KeyClass(StrEnum):
    """Strict priority classes; HAProxy's ``set-priority-class`` serves lower numbers first."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def priority(self) -> int:
        return {"high": -1, "normal": 0, "low": 1}[self.value]


@dataclass(frozen=True)
class ApiKey:
    digest: str  # SHA-256 of the key, lowercase hex
    name: str | None = None
    weight: int = 1
    klass: KeyClass = KeyClass.NORMAL
    # None: the spec's default (gateway.clients); 0: no limit for this key ("none").
    max_concurrent: int | None = None
    requests_per_minute: int | None = None

    def line(self) -> str:
        parts = [self.digest]
        if self.name:
            parts.append(f"name={self.name}")
        if self.weight != 1:
            parts.append(f"weight={self.weight}")
        if self.klass is not KeyClass.NORMAL:
            parts.append(f"class={self.klass}")
        for field, value in (
            ("max_concurrent", self.max_concurrent),
            ("requests_per_minute", self.requests_per_minute),
        ):
            if value is not None:
                parts.append(f"{field}={value or 'none'}")
        return " ".join(parts) + "\n"


class KeysFileError(OlladistError):
    pass


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _limit(value: str, top: int) -> int | None:
    if value == "none":
        return 0
    if not value.isdigit() or not 1 <= int(value) <= top:
        return None
    return int(value)


def _parse_line(words: list[str]) -> ApiKey | str:
    """The key a line holds, or what is wrong with it."""
    digest = words[0]
    if not _DIGEST.fullmatch(digest):
        if _DIGEST.fullmatch(digest.lower()):
            return "the digest must be lowercase hex (HAProxy compares it as written)"
        return (
            f"'{digest[:20]}' is not a SHA-256 digest (64 hex digits); the file holds digests, "
            "never keys"
        )
    found: dict[str, Any] = {}
    for word in words[1:]:
        field, sep, value = word.partition("=")
        if not sep or field not in SETTINGS:
            return f"unknown setting '{word[:40]}'"
        if field in found:
            return f"{field} is set twice"
        if field == "name":
            if not _NAME.fullmatch(value):
                return "name must be 1-64 letters, digits or _.@-"
            found["name"] = value
        elif field == "weight":
            if not value.isdigit() or not 1 <= int(value) <= MAX_WEIGHT:
                return f"weight must be a whole number from 1 to {MAX_WEIGHT}"
            found["weight"] = int(value)
        elif field == "class":
            if value not in {c.value for c in KeyClass}:
                return "class must be high, normal or low"
            found["klass"] = KeyClass(value)
        else:
            top = MAX_CONCURRENT if field == "max_concurrent" else MAX_RPM
            limit = _limit(value, top)
            if limit is None:
                return f"{field} must be a whole number from 1 to {top}, or none"
            found[field] = limit
    return ApiKey(digest, **found)


def parse_keys(text: str, where: str) -> tuple[ApiKey, ...]:
    """Every key in a keys file's ``text``; the first bad line raises, naming ``where:line``."""
    keys: list[ApiKey] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        parsed = _parse_line(words)
        if isinstance(parsed, str):
            raise KeysFileError(f"{where}:{n}: not a valid API key line: {parsed}", hint=HINT)
        if parsed.digest in seen:
            raise KeysFileError(
                f"{where}:{n}: this digest is already on line {seen[parsed.digest]}",
                hint="one line a key: remove one of them",
            )
        seen[parsed.digest] = n
        keys.append(parsed)
    return tuple(keys)


def read_keys(path: Path) -> tuple[ApiKey, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysFileError(f"cannot read {path}: {exc}", hint="check its owner and mode") from exc
    return parse_keys(text, str(path))


def new_key() -> str:
    """A fresh API key: 256 random bits, in a shape clients accept as a bearer token."""
    return "olk-" + secrets.token_urlsafe(32)


def add_key(path: Path, key: ApiKey) -> None:
    """Append ``key``'s line to the file at ``path`` (created if missing), after checking the
    file as it is: a broken file is refused, not made longer."""
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    if any(k.digest == key.digest for k in parse_keys(existing, str(path))):
        raise KeysFileError(f"{path} already holds this key", hint="nothing to do")
    if existing and not existing.endswith("\n"):
        existing += "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (existing + key.line()).encode(), MODE)
    os.chmod(path, MODE)
    # A test root, or a machine without the package's group: mode 0640 stays.
    with contextlib.suppress(KeyError, PermissionError):
        os.chown(path, 0, grp.getgrnam(GROUP).gr_gid)


def _keys_file(args: argparse.Namespace, layout: Layout) -> Path:
    return Path(args.file) if args.file else layout.real(DEFAULT_FILE)


def _cmd_add(args: argparse.Namespace, layout: Layout) -> int:
    path = _keys_file(args, layout)
    key = new_key()
    found: dict[str, Any] = {}
    for field in SETTINGS:
        value = getattr(args, field, None)
        if value is not None:
            found[field] = str(value)
    words = [digest_of(key)] + [f"{f}={v}" for f, v in found.items()]
    parsed = _parse_line(words)
    if isinstance(parsed, str):
        raise KeysFileError(f"bad setting for the new key: {parsed}", hint=HINT)
    add_key(path, parsed)
    # The key itself goes to stdout once, alone, so it can be piped; it is stored nowhere.
    print(key)
    print(
        f"# added its digest to {path}; the key is shown only now. Copy the file to every "
        "node, then reload: systemctl reload olladist-gateway",
        file=sys.stderr,
    )
    return 0


def _cmd_check(args: argparse.Namespace, layout: Layout) -> int:
    path = _keys_file(args, layout)
    if not path.exists():
        raise KeysFileError(f"{path} does not exist", hint="create it: olladist key add")
    keys = read_keys(path)
    limited = sum(1 for k in keys if k.max_concurrent is not None or k.requests_per_minute)
    print(f"{path}: {len(keys)} keys, {limited} with their own limits; valid")
    return 0


def _cmd_list(args: argparse.Namespace, layout: Layout) -> int:
    for k in read_keys(_keys_file(args, layout)):
        # The first 12 digits identify a key in logs and stick tables; never the whole digest.
        print(k.line().replace(k.digest, k.digest[:12] + "...", 1), end="")
    return 0


def add_commands(
    sub: Any, common: Callable[[argparse.ArgumentParser], None], to_handler: Callable[..., Any]
) -> None:
    """``olladist key add|check|list`` under the CLI's subparsers ``sub``; ``to_handler``
    wraps ``f(args, layout)`` as a CLI handler."""
    key = sub.add_parser(
        "key", help="the gateway's API keys file", description="the gateway's API keys file"
    )
    key_sub = key.add_subparsers(dest="key_command", required=True, metavar="COMMAND")

    def with_file(p: argparse.ArgumentParser) -> None:
        common(p)
        p.add_argument(
            "--file", metavar="PATH", help=f"the keys file (default {DEFAULT_FILE} under --root)"
        )

    add = key_sub.add_parser(
        "add", help="make a key, print it once, append its digest to the keys file"
    )
    with_file(add)
    add.add_argument("--name", help="a label for people (never shown by the gateway)")
    add.add_argument("--weight", type=int, help="share of the queue when keys compete (1)")
    add.add_argument("--class", dest="class", choices=[c.value for c in KeyClass])
    add.add_argument("--max-concurrent", dest="max_concurrent", help="N or none")
    add.add_argument("--requests-per-minute", dest="requests_per_minute", help="N or none")
    add.set_defaults(handler=to_handler(_cmd_add))
    check = key_sub.add_parser("check", help="validate the keys file: exit 0 valid, 2 not")
    with_file(check)
    check.set_defaults(handler=to_handler(_cmd_check))
    ls = key_sub.add_parser("list", help="the keys file's keys, digests shortened")
    with_file(ls)
    ls.set_defaults(handler=to_handler(_cmd_list))
