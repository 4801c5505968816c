"""Read systemd unit files the way systemd does, for the local runtime.

Only what olladist's own units use: sections and keys, comments, line continuations, drop-ins
(``NAME.d/*.conf``, and ``TEMPLATE@.service.d`` for instances), an empty value resetting a list
(``ExecStart=``), ``Environment=`` with quoting, ``EnvironmentFile=``, the specifiers ``%i``,
``%I``, ``%n``, ``%%``, and ``$VAR``/``${VAR}`` in command lines.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from olladist.errors import OlladistError

LIST_KEYS = {
    "ExecStart",
    "ExecStartPre",
    "ExecStartPost",
    "ExecReload",
    "ExecStop",
    "Environment",
    "EnvironmentFile",
}


class UnitFileError(OlladistError):
    pass


@dataclass
class Unit:
    name: str
    sections: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def get(self, section: str, key: str, default: str | None = None) -> str | None:
        values = self.sections.get(section, {}).get(key)
        return values[-1] if values else default

    def all(self, section: str, key: str) -> list[str]:
        return list(self.sections.get(section, {}).get(key, []))

    @property
    def instance(self) -> str:
        stem = self.name.rsplit(".", 1)[0]
        return stem.split("@", 1)[1] if "@" in stem else ""

    def environment(self, base_dir: Path | None = None) -> dict[str, str]:
        env: dict[str, str] = {}
        for spec in self.all("Service", "EnvironmentFile"):
            optional = spec.startswith("-")
            path = Path(spec.lstrip("-"))
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                if optional:
                    continue
                raise UnitFileError(f"{self.name}: EnvironmentFile {path} not found") from None
            for line in text.splitlines():
                line = line.strip()  # noqa: PLW2901
                if not line or line[0] in "#;" or "=" not in line:
                    continue
                k, v = line.split("=", 1)
                env[k.strip()] = _unquote_env_value(v.strip())
        for value in self.all("Service", "Environment"):
            for word in split_words(value):
                if "=" in word:
                    k, v = word.split("=", 1)
                    env[k] = v
        return env

    def commands(self, key: str, env: dict[str, str]) -> list[list[str]]:
        """The argv lists of Exec*=, with prefixes (-@+!:) dropped and variables expanded."""
        out = []
        for value in self.all("Service", key):
            value = value.lstrip("-@+!:")  # noqa: PLW2901
            argv: list[str] = []
            for word in split_words(value):
                whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
                if whole:
                    # $VAR alone is split on whitespace, as systemd does.
                    argv += env.get(whole.group(1), "").split()
                    continue
                argv.append(
                    re.sub(
                        r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word
                    )
                )
            if argv:
                out.append(argv)
        return out


def _unquote_env_value(v: str) -> str:
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        return v[1:-1]
    return v


def split_words(value: str) -> list[str]:
    """Split like systemd: double/single quotes group, backslash escapes."""
    try:
        lexer = shlex.shlex(value, posix=True)
        lexer.whitespace_split = True
        lexer.commenters = ""
        return list(lexer)
    except ValueError as exc:
        raise UnitFileError(f"cannot parse {value!r}: {exc}") from exc


def _specifiers(text: str, unit_name: str) -> str:
    stem = unit_name.rsplit(".", 1)[0]
    inst = stem.split("@", 1)[1] if "@" in stem else ""
    table = {"i": inst, "I": inst, "n": unit_name, "N": stem, "%": "%"}

    def sub(m: re.Match[str]) -> str:
        return table.get(m.group(1), m.group(0))

    return re.sub(r"%(.)", sub, text)


def parse_into(unit: Unit, text: str, source: str) -> None:
    section = ""
    pending = ""
    for n, raw in enumerate(text.splitlines(), 1):
        line = pending + raw.strip() if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            unit.sections.setdefault(section, {})
            continue
        if "=" not in line or not section:
            raise UnitFileError(f"{source}:{n}: cannot parse {raw!r}")
        key, value = (s.strip() for s in line.split("=", 1))
        value = _specifiers(value, unit.name)
        values = unit.sections[section].setdefault(key, [])
        if key in LIST_KEYS:
            if value == "":
                values.clear()
            else:
                values.append(value)
        else:
            values[:] = [value]


def load_unit(unit_dir: Path, name: str) -> Unit:
    """Load ``name`` (e.g. ``olladist-ollama@gpu0.service``) from ``unit_dir`` with drop-ins."""
    unit = Unit(name)
    stem, _, suffix = name.rpartition(".")
    template = f"{stem.split('@', 1)[0]}@.{suffix}" if "@" in stem else None
    main = unit_dir / name
    if not main.is_file() and template:
        main = unit_dir / template
    if not main.is_file():
        raise UnitFileError(f"unit {name} not found in {unit_dir}")
    parse_into(unit, main.read_text(encoding="utf-8"), str(main))
    dropin_dirs = [unit_dir / f"{template}.d"] if template else []
    dropin_dirs.append(unit_dir / f"{name}.d")
    confs: dict[str, Path] = {}
    for d in dropin_dirs:
        if d.is_dir():
            for p in d.glob("*.conf"):
                confs[p.name] = p  # an instance's drop-in overrides the template's of that name
    for conf_name in sorted(confs):
        parse_into(unit, confs[conf_name].read_text(encoding="utf-8"), str(confs[conf_name]))
    return unit
