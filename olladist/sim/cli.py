"""Command line: ``olladist-sim serve`` (like ``ollama serve``) and ``olladist-sim catalogue``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from typing import Any

import olladist.sim
from olladist import __version__
from olladist.errors import OlladistError
from olladist.sim import faults as faults_module
from olladist.sim import registry
from olladist.sim.catalogue import load_catalogue
from olladist.sim.config import DEFAULT_VERSION, config_from_env
from olladist.sim.server import serve


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="olladist-sim",
        description="An Ollama API simulator for olladist tests, benchmarks and dev mode.",
    )
    parser.add_argument(
        "-v",
        "--version",
        action="version",
        version=f"ollama version is {_reported_version()} (olladist-sim {__version__})",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="serve the Ollama API (reads the same environment as `ollama serve`)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(olladist.sim.__doc__ or "") + "\n" + (faults_module.__doc__ or ""),
    )
    serve.add_argument("--quiet", action="store_true", help="no per-request log lines")
    catalogue = sub.add_parser("catalogue", help="list the models /api/pull can fetch")
    catalogue.add_argument("--json", action="store_true", help="machine-readable output")
    registry.add_parser(sub)
    return parser


def _reported_version() -> str:
    # Only this variable: a bad value elsewhere must not break --version.
    return os.environ.get("OLLADIST_SIM_VERSION", "").strip() or DEFAULT_VERSION


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "catalogue":
            return _catalogue(as_json=args.json)
        if args.command == "registry":
            asyncio.run(registry.serve(args))
            return 0
        config = config_from_env()
        if config.faults.exit_at_start:
            print("error: fault exit_at_start: exiting before listening", file=sys.stderr)
            return 1
        if args.quiet:
            config = dataclasses.replace(config, quiet=True)
        asyncio.run(serve(config))
    except OlladistError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # e.g. the port is taken
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _human(size: int) -> str:
    """Sizes as `ollama list` prints them (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _catalogue(*, as_json: bool) -> int:
    config = config_from_env()
    rows: list[dict[str, Any]] = []
    for entry in load_catalogue(config.catalogue_file).entries:
        rows.append(
            {
                "name": entry.name,
                "aliases": list(entry.aliases),
                "size": entry.size,
                "digest": entry.artifacts().digest,
                "family": entry.family,
                "parameter_size": entry.parameter_size,
                "quantization": entry.quantization,
                "capabilities": list(entry.capabilities),
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'NAME':<26}{'ID':<14}{'SIZE':>9}  {'PARAMS':<9}{'QUANT':<8}ALIASES")
    for row in rows:
        size = _human(row["size"])
        print(
            f"{row['name']:<26}{row['digest'][:12]:<14}{size:>9}  "
            f"{row['parameter_size']:<9}{row['quantization']:<8}{', '.join(row['aliases'])}"
        )
    return 0
