"""doctor says what is missing and how to fix it; dev refuses taken ports, naming the holder."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from olladist.cli import main
from olladist.dev import DevCluster
from olladist.errors import OlladistError
from olladist.nodesetup import new_secret
from olladist.specload import load_spec
from tests.conftest import EXAMPLE_SPEC


def test_doctor_names_the_missing_binary_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OLLADIST_OLLAMA_BINARY", raising=False)
    code = main(["doctor", "--spec", str(EXAMPLE_SPEC), "--node", "gpu-a", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL ollama binary /usr/local/bin/ollama is missing or not executable" in out
    assert "fix: install Ollama" in out
    assert "ok   haproxy 2." in out
    assert "ok   node gpu-a is in the spec" in out


def test_doctor_passes_with_the_simulator_as_binary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLADIST_OLLAMA_BINARY", str(Path(sys.executable).parent / "olladist-sim"))
    # gpu-b has peers: its gateway loads the peer secret, which doctor checks for.
    secret = tmp_path / "peer.map"
    secret.write_text(new_secret())
    assert main(["secret", "install", str(secret), "--root", str(tmp_path)]) == 0
    capsys.readouterr()
    code = main(["doctor", "--spec", str(EXAMPLE_SPEC), "--node", "gpu-b", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert "FAIL" not in out, out
    assert code == 0
    assert out.rstrip().endswith("no problems found")


def test_doctor_reports_a_node_missing_from_the_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["doctor", "--spec", str(EXAMPLE_SPEC), "--node", "gpu-z", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL this node (gpu-z) is not in the spec" in out
    assert "one of: gpu-a, gpu-b, gpu-c" in out


def test_dev_refuses_a_taken_port_and_names_the_holder(tmp_path: Path) -> None:
    spec = load_spec(EXAMPLE_SPEC)
    inst = spec.nodes[1].instances[0]
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", inst.port))
        except OSError:
            pytest.fail(f"127.0.0.1:{inst.port} is already taken on this machine")
        s.listen()
        cluster = DevCluster(EXAMPLE_SPEC, tmp_path / "dev")
        with pytest.raises(OlladistError) as info:
            cluster.up(timeout=5)
    message = info.value.message
    assert f"127.0.0.1:{inst.port} (instance gpu0 of gpu-b) is taken by pid" in message
    # The holder is this process (python, or pytest when run through its own script).
    assert f"pid {os.getpid()} (" in message
    assert "olladist dev --down" in (info.value.hint or "")
