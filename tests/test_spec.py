"""The spec: the example is valid, every invalid spec names its file, line and field."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from olladist.cli import main
from olladist.errors import SpecError
from olladist.schema import schema
from olladist.spec import duration_ms
from olladist.specload import load_spec
from tests.conftest import EXAMPLE_SPEC, REPO, SPECS, olladist_cmd

INVALID = sorted(p for p in (SPECS / "invalid").iterdir() if p.is_dir())


def test_example_spec_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(EXAMPLE_SPEC)]) == 0
    assert "valid: cluster lab, 3 nodes, 6 instances, 4 models" in capsys.readouterr().out


def test_invalid_corpus_is_large_enough() -> None:
    assert len(INVALID) >= 30


@pytest.mark.parametrize("case", INVALID, ids=[p.name for p in INVALID])
def test_invalid_spec_names_file_line_field(case: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect = (case / "EXPECT").read_text().strip()
    assert main(["validate", str(case)]) == 2
    captured = capsys.readouterr()
    assert expect in captured.err
    assert "Traceback" not in captured.err
    assert captured.err.startswith("error: ")


def test_validate_exit_code_through_the_real_command() -> None:
    bad = subprocess.run(
        [*olladist_cmd(), "validate", str(SPECS / "invalid" / "bad-port-type")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert "cluster.yaml:12: nodes[0].instances[0].port:" in bad.stderr
    assert "Traceback" not in bad.stderr
    good = subprocess.run(
        [*olladist_cmd(), "validate", str(EXAMPLE_SPEC)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert good.returncode == 0, good.stderr


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path) -> None:
    (tmp_path / "cluster.yaml").write_text(
        "cluster: lab\nnodes:\n  - {name: a, address: x, instances: [{name: i, port: 0}]}\n"
        "  - {name: B, address: y}\n"
    )
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path)
    fields = [p.field for p in info.value.problems]
    assert "nodes[0].instances[0].port" in fields
    assert "nodes[1].name" in fields


def test_nodes_and_models_directories_merge(tmp_path: Path) -> None:
    (tmp_path / "nodes").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "cluster.yaml").write_text(
        "cluster: lab\nnodes: [{name: a, address: 10.0.0.1, instances: [{name: i, port: 11435}]}]\n"
    )
    (tmp_path / "nodes" / "b.yaml").write_text(
        "name: b\naddress: 10.0.0.2\ninstances: [{name: i, port: 11435}]\n"
    )
    (tmp_path / "models" / "m.yaml").write_text("name: llama3\nreplicas: 2\n")
    spec = load_spec(tmp_path)
    assert [n.name for n in spec.nodes] == ["a", "b"]
    assert spec.models[0].key == "llama3:latest"


def test_env_values_from_yaml_scalars_become_strings(tmp_path: Path) -> None:
    (tmp_path / "cluster.yaml").write_text(
        "cluster: lab\nollama: {env: {OLLAMA_FLASH_ATTENTION: true, OLLAMA_MAX_QUEUE: 64}}\n"
        "nodes: [{name: a, address: 10.0.0.1}]\n"
    )
    spec = load_spec(tmp_path)
    assert spec.ollama.env == {"OLLAMA_FLASH_ATTENTION": "true", "OLLAMA_MAX_QUEUE": "64"}


def test_durations() -> None:
    assert duration_ms("500ms") == 500
    assert duration_ms("15m") == 900_000
    with pytest.raises(ValueError, match="not a duration"):
        duration_ms("15 minutes")


@pytest.mark.parametrize("part", ["cluster", "node", "model"])
def test_schema_files_in_repo_match_the_code(part: str) -> None:
    kept = json.loads((REPO / "docs" / "schema" / f"{part}.schema.json").read_text())
    assert kept == schema(part), "regenerate: olladist schema --part PART > docs/schema/PART..."


def test_example_modeline_points_at_the_kept_schema() -> None:
    first = (EXAMPLE_SPEC / "cluster.yaml").read_text().splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    target = (EXAMPLE_SPEC / first.split("$schema=", 1)[1]).resolve()
    assert target == (REPO / "docs" / "schema" / "cluster.schema.json")
