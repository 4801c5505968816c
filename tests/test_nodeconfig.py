"""The node's configuration: one reading of env file, environment and flags, shared by every
command (the CLI, the daemon, doctor, dev)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from olladist.errors import OlladistError
from olladist.layout import ENV_FILE, Layout
from olladist.nodeconfig import NodeConfig, format_env_file, read_env_file
from olladist.source import DirSource, GitSource


def _root_with_env(tmp_path: Path, text: str) -> Path:
    env = Layout(tmp_path).real(ENV_FILE)
    env.parent.mkdir(parents=True)
    env.write_text(text)
    return tmp_path


def test_env_file_then_environment_then_flags(tmp_path: Path) -> None:
    root = _root_with_env(
        tmp_path, "# node\nOLLADIST_NODE=from-file\nOLLADIST_REF='prod'\nOLLADIST_PATH=x\n"
    )
    environ = {"OLLADIST_REF": "from-env", "HOME": "/ignored"}
    config = NodeConfig.load(str(root), {"node": "from-flag", "ref": None}, environ)
    assert config.layout == Layout(root.resolve())
    assert config.node == "from-flag"
    assert config.get("OLLADIST_REF") == "from-env"
    assert config.get("OLLADIST_PATH") == "x"
    assert "HOME" not in config.settings


def test_root_from_the_environment_and_hostname_default(tmp_path: Path) -> None:
    config = NodeConfig.load(None, {}, {"OLLADIST_ROOT": str(tmp_path)})
    assert config.layout.root == tmp_path.resolve()
    assert config.node == socket.gethostname().split(".")[0]


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        ("1", True),
        ("true", True),
        ("yes", True),
        ("on", True),
        ("ON", True),
        ("", False),
        ("no", False),
    ],
)
def test_allow_rollback_means_one_thing_for_every_command(
    tmp_path: Path, value: str, allowed: bool
) -> None:
    """The daemon and doctor open the source through the same NodeConfig; `on` used to be true
    for one and false for the other."""
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    environ = {"OLLADIST_SOURCE": str(repo), "OLLADIST_ALLOW_ROLLBACK": value}
    source = NodeConfig.load(str(tmp_path / "root"), {}, environ).open_source()
    assert isinstance(source, GitSource)
    assert source.allow_rollback is allowed


def test_spec_flag_wins_over_the_source(tmp_path: Path) -> None:
    environ = {"OLLADIST_SOURCE": "https://git.invalid/x.git"}
    config = NodeConfig.load(str(tmp_path), {"spec": str(tmp_path / "spec")}, environ)
    source = config.open_source()
    assert isinstance(source, DirSource)


def test_no_source_is_an_error_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(OlladistError, match="no source given") as info:
        NodeConfig.load(str(tmp_path), {}, {}).open_source()
    assert "OLLADIST_SOURCE" in (info.value.hint or "")


def test_unknown_runtime_is_refused(tmp_path: Path) -> None:
    config = NodeConfig.load(str(tmp_path), {"runtime": "docker"}, {})
    with pytest.raises(OlladistError, match="unknown runtime 'docker'"):
        config.make_runtime("none")


def test_env_file_round_trip(tmp_path: Path) -> None:
    settings = {"OLLADIST_SOURCE": "/srv/repo", "OLLADIST_NODE": "gpu-a"}
    path = tmp_path / "olladist.env"
    path.write_text(format_env_file(settings, "written by a test"))
    assert read_env_file(path) == settings
    with pytest.raises(ValueError, match="cannot write"):
        format_env_file({"OLLADIST_NODE": "a\nOLLADIST_SOURCE=evil"}, "x")


def test_a_malformed_env_file_names_the_line(tmp_path: Path) -> None:
    root = _root_with_env(tmp_path, "OLLADIST_NODE=a\nnot a setting\n")
    with pytest.raises(OlladistError, match=r"olladist.env:2: expected KEY=value"):
        NodeConfig.load(str(root), {}, {})
