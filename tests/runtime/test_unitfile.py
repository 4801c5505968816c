from __future__ import annotations

from pathlib import Path

import pytest

from olladist.layout import Layout
from olladist.render import render_node
from olladist.specload import load_spec
from olladist.unitfile import UnitFileError, load_unit, split_words
from tests.conftest import EXAMPLE_SPEC


def test_instance_unit_merges_template_and_dropin(tmp_path: Path) -> None:
    spec = load_spec(EXAMPLE_SPEC)
    files = render_node(spec, "gpu-b", layout=Layout(tmp_path))
    for path, f in files.items():
        target = tmp_path / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f.content)
    unit = load_unit(tmp_path / "etc/systemd/system", "olladist-ollama@gpu1.service")
    env = unit.environment()
    assert env["OLLAMA_HOST"] == "127.0.0.1:11512"
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert unit.commands("ExecStart", env) == [["/usr/local/bin/ollama", "serve"]]
    assert unit.get("Unit", "Description", "").startswith("Ollama instance gpu1 of node gpu-b")


def test_gateway_unit_expands_variables(tmp_path: Path) -> None:
    spec = load_spec(EXAMPLE_SPEC)
    files = render_node(spec, "gpu-b", layout=Layout(tmp_path))
    unit_dir = tmp_path / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    (unit_dir / "olladist-gateway.service").write_text(
        files["/etc/systemd/system/olladist-gateway.service"].content
    )
    unit = load_unit(unit_dir, "olladist-gateway.service")
    env = unit.environment()
    env["MAINPID"] = "42"
    start = unit.commands("ExecStart", env)[0]
    assert start[:3] == ["/usr/sbin/haproxy", "-Ws", "-f"]
    assert start[3] == f"{tmp_path}/etc/olladist/haproxy.cfg"
    assert unit.commands("ExecReload", env)[-1] == ["/bin/kill", "-USR2", "42"]


def test_split_words_and_errors(tmp_path: Path) -> None:
    assert split_words('"A=b c" D=e') == ["A=b c", "D=e"]
    assert split_words('"Q=a\\"b"') == ['Q=a"b']
    with pytest.raises(UnitFileError, match="not found"):
        load_unit(tmp_path, "nothing.service")
    (tmp_path / "bad.service").write_text("[Service]\nthis is not a key\n")
    with pytest.raises(UnitFileError, match=r"bad\.service:2"):
        load_unit(tmp_path, "bad.service")
