"""The Jinja environment every rendered file goes through, and its filters.

Its own module so that both renderers (``olladist.render`` for the node, ``olladist.gateway.
render`` for HAProxy) use one environment without importing each other. Strict: an undefined
name is an error naming the template, never an empty string in a config file.
"""

from __future__ import annotations

from functools import cache

import jinja2

from olladist.errors import RenderError


def systemd_quote(value: str) -> str:
    """Quote one word for a unit file: backslash and double quote escaped, `%` doubled so that
    systemd does not expand specifiers. The spec already refuses control characters."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("olladist", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - we render config files, not HTML
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["systemd_quote"] = systemd_quote
    return env


def render_template(name: str, **context: object) -> str:
    try:
        return environment().get_template(name).render(**context)
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"template {exc.name or name}:{exc.lineno}: {exc.message}") from exc
    except jinja2.UndefinedError as exc:
        raise RenderError(f"template {name}: {exc.message}") from exc
