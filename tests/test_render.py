"""Render: golden files for every template, and every rendered file passes its real validator.

Regenerate the golden files on purpose with OLLADIST_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest

from olladist.gateway.render import node_local_files
from olladist.layout import Layout
from olladist.placement import place
from olladist.render import render_node
from olladist.spec import Spec
from olladist.specload import load_spec
from olladist.templating import systemd_quote
from olladist.validators import validate_render
from tests.conftest import (
    EXAMPLE_SPEC,
    HASH_SEEDS,
    SPECS,
    assert_golden,
    need,
    node_secrets,
    python_with_hash_seed,
)

GOLDEN = Path(__file__).resolve().parent / "golden"
SPEC_DIRS = {"example": EXAMPLE_SPEC, "large": SPECS / "large"}


def with_real_binary(spec: Spec) -> Spec:
    """systemd-analyze checks that ExecStart= exists; point it at a program that does."""
    return spec.model_copy(
        update={"ollama": spec.ollama.model_copy(update={"binary": sys.executable})}
    )


def cases() -> list[tuple[str, str]]:
    out = []
    for name, spec_dir in SPEC_DIRS.items():
        spec = load_spec(spec_dir)
        out += [(name, n.name) for n in spec.nodes]
    return out


@pytest.mark.parametrize(("spec_name", "node"), cases())
def test_golden(spec_name: str, node: str) -> None:
    spec = load_spec(SPEC_DIRS[spec_name])
    files = render_node(spec, node)
    assert_golden(GOLDEN / spec_name / node, files)


@pytest.mark.parametrize(("spec_name", "node"), cases())
def test_rendered_files_pass_their_validators(spec_name: str, node: str, tmp_path: Path) -> None:
    need("haproxy")
    need("systemd-analyze")
    spec = with_real_binary(load_spec(SPEC_DIRS[spec_name]))
    placement = place(spec)
    live = node_secrets(Layout(tmp_path / "live"), spec)
    # HAProxy limits unix socket paths to 97 characters: keep the staging root short.
    with tempfile.TemporaryDirectory(prefix="od-") as short:
        staging = Path(short)
        validate_render(
            lambda layout: render_node(spec, node, placement, layout),
            staging=staging,
            live=live,
            node_local=node_local_files(spec, node, placement),
        )
        assert (staging / "etc/olladist/haproxy.cfg").is_file()


RENDER_EVERY_NODE = """
import json, sys
from pathlib import Path
from olladist.render import render_node
from olladist.specload import load_spec
spec = load_spec(Path(sys.argv[1]))
files = {n.name: render_node(spec, n.name) for n in spec.nodes}
print(json.dumps({n: [[p, f.content, f.mode] for p, f in fs.items()] for n, fs in files.items()}))
"""


@pytest.mark.parametrize("spec_dir", [SPECS / "large", EXAMPLE_SPEC], ids=["large", "example"])
def test_render_is_pure_across_processes_and_sorted(spec_dir: Path) -> None:
    """Every node's files, instances and gateway, are the same bytes in the same order in
    interpreters with different hash seeds, and in this one."""
    outputs = {python_with_hash_seed(RENDER_EVERY_NODE, str(spec_dir), seed=s) for s in HASH_SEEDS}
    assert len(outputs) == 1
    rendered = json.loads(outputs.pop())
    spec = load_spec(spec_dir)
    for n in spec.nodes:
        here = render_node(spec, n.name)
        assert rendered[n.name] == [[p, f.content, f.mode] for p, f in here.items()]
        assert list(here) == sorted(here)


def test_paths_inside_files_follow_the_root(tmp_path: Path) -> None:
    spec = load_spec(EXAMPLE_SPEC)
    files = render_node(spec, "gpu-a", layout=Layout(tmp_path))
    dropin = files["/etc/systemd/system/olladist-ollama@gpu0.service.d/10-olladist.conf"]
    assert f'"OLLAMA_MODELS={tmp_path}/var/lib/olladist/models"' in dropin.content
    unit = files["/etc/systemd/system/olladist-gateway.service"].content
    assert f"{tmp_path}/etc/olladist/haproxy.cfg" in unit
    assert "User=" not in unit


def test_instance_dropin_carries_the_instance() -> None:
    spec = load_spec(SPECS / "large")
    files = render_node(spec, "gpu-01")
    text = files["/etc/systemd/system/olladist-ollama@pair.service.d/10-olladist.conf"].content
    for line in (
        'Environment="OLLAMA_HOST=127.0.0.1:11437"',
        'Environment="CUDA_VISIBLE_DEVICES=2,3"',
        'Environment="OLLAMA_NUM_PARALLEL=2"',
        'Environment="OLLAMA_SCHED_SPREAD=1"',
        'Environment="OLLAMA_KEEP_ALIVE=1h"',
        "ExecStart=/usr/bin/ollama serve",
    ):
        assert line in text.splitlines()
    # The node's gateway config is part of the same render and health-checks this instance.
    cfg = files["/etc/olladist/haproxy.cfg"].content.splitlines()
    assert "    server pair 127.0.0.1:11437 check" in cfg


def test_systemd_quote_escapes_what_systemd_would_interpret() -> None:
    assert systemd_quote('a"b\\c%d') == '"a\\"b\\\\c%%d"'
