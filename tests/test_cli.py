"""The small commands: render, placement, schema, and errors on stderr with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from olladist.cli import main
from tests.conftest import EXAMPLE_SPEC


def test_render_writes_the_node_files_as_under_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["render", "--spec", str(EXAMPLE_SPEC), "--node", "gpu-b", "--out", str(out)]) == 0
    listed = capsys.readouterr().out.split()
    assert "/etc/olladist/haproxy.cfg" in listed
    assert "/etc/systemd/system/olladist-ollama@gpu1.service.d/10-olladist.conf" in listed
    for path in listed:
        assert (out / path.lstrip("/")).is_file()
    # As on the node: paths inside point at /, not at the output folder.
    assert str(out) not in (out / "etc/olladist/haproxy.cfg").read_text()


def test_placement_json_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["placement", str(EXAMPLE_SPEC), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_model = {m["model"]: m for m in data["models"]}
    nomic = by_model["nomic-embed-text:latest"]["nodes"]
    assert sorted(nomic) == ["gpu-a", "gpu-b", "gpu-c"]
    assert by_model["llama3.1:8b"]["nodes"] == ["gpu-a"]
    assert "selector gpu=big" in by_model["llama3.1:8b"]["reason"]
    assert main(["placement", str(EXAMPLE_SPEC)]) == 0
    table = capsys.readouterr().out
    assert "per node:" in table and "gpu-c:" in table


def test_schema_is_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"].endswith("2020-12/schema")
    assert "nodes" in schema["required"]


def test_errors_go_to_stderr_with_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid spec")
    assert "not a directory" in err
    assert "hint: give the spec directory" in err


def test_status_before_any_reconcile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no reconcile has run on this node yet" in err


def test_wait_exits_1_on_timeout_and_0_once_converged(
    short_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from olladist.layout import Layout
    from olladist.specload import load_spec
    from tests.conftest import node_secrets

    node_secrets(Layout(short_root), load_spec(EXAMPLE_SPEC))
    base = ["--spec", str(EXAMPLE_SPEC), "--node", "gpu-b", "--root", str(short_root)]
    base += ["--runtime", "none", "--no-validate"]  # no ollama binary here
    # Nothing written yet: drift, and `wait` gives up after its timeout with the plan.
    assert main(["wait", *base, "--timeout", "0.5"]) == 1
    out = capsys.readouterr().out
    assert "not converged after 0.5s" in out and "haproxy.cfg" in out
    assert main(["apply", *base]) == 0
    capsys.readouterr()
    assert main(["wait", *base, "--timeout", "5"]) == 0
    assert capsys.readouterr().out.startswith("gpu-b: converged and serving")
