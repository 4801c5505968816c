"""Node set-up as commands: `olladist node init`, `olladist secret new|install`, and doctor
naming the exact command for what is missing. Against a git repository served over loopback."""

from __future__ import annotations

import io
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from olladist.cli import main
from olladist.errors import OlladistError
from olladist.layout import ENV_FILE, PEER_SECRET_FILE, Layout
from olladist.nodesetup import new_secret, parse_secret, redact, secret_install
from tests.conftest import EXAMPLE_SPEC
from tests.harness.gitserver import serve_git_http
from tests.harness.ports import free_port

pytestmark = pytest.mark.integration


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def spec_url(tmp_path: Path) -> Iterator[str]:
    """The example spec, committed to a repository served by dulwich.web on 127.0.0.1."""
    repo = tmp_path / "upstream"
    shutil.copytree(EXAMPLE_SPEC, repo)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "spec")
    with serve_git_http(repo, tmp_path / "http.log") as server:
        yield server.url


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_node_init_checks_the_source_and_writes_the_env_file_0600(
    tmp_path: Path, short_root: Path, spec_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = short_root
    argv = ["node", "init", "--source", spec_url, "--node", "gpu-b", "--root", str(root)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "source reachable: commit " in out and "cluster lab, node gpu-b" in out
    env = Layout(root).real(ENV_FILE)
    assert _mode(env) == 0o600
    lines = env.read_text().splitlines()
    assert f"OLLADIST_SOURCE={spec_url}" in lines and "OLLADIST_NODE=gpu-b" in lines
    assert f"wrote {env} (mode 0600)" in out
    # Every olladist command now acts as that node, from that source.
    (tmp_path / "peer.map").write_text(new_secret())
    assert main(["secret", "install", str(tmp_path / "peer.map"), "--root", str(root)]) == 0
    assert main(["diff", "--root", str(root), "--runtime", "none", "--no-validate"]) == 1
    assert "node gpu-b:" in capsys.readouterr().out


def test_node_init_refuses_to_overwrite_without_force(
    tmp_path: Path, spec_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    argv = ["node", "init", "--source", spec_url, "--root", str(root)]
    assert main([*argv, "--node", "gpu-a"]) == 0
    assert main([*argv, "--node", "gpu-a"]) == 0  # the same settings: nothing to do
    assert "already holds these settings" in capsys.readouterr().out
    assert main([*argv, "--node", "gpu-b"]) == 2
    err = capsys.readouterr().err
    assert "already exists with settings of its own" in err and "--force" in err
    assert "OLLADIST_NODE=gpu-a" in Layout(root).real(ENV_FILE).read_text()
    assert main([*argv, "--node", "gpu-b", "--force"]) == 0
    assert "OLLADIST_NODE=gpu-b" in Layout(root).real(ENV_FILE).read_text()


def test_node_init_replaces_the_package_template_without_force(
    tmp_path: Path, spec_url: str
) -> None:
    env = Layout(tmp_path).real(ENV_FILE)
    env.parent.mkdir(parents=True)
    template = Path(__file__).resolve().parents[1] / "packaging" / "olladist.env"
    shutil.copyfile(template, env)
    argv = ["node", "init", "--source", spec_url, "--node", "gpu-c", "--root", str(tmp_path)]
    assert main(argv) == 0
    assert "OLLADIST_NODE=gpu-c" in env.read_text()


def test_node_init_refuses_an_unreachable_source_or_an_unknown_node(
    tmp_path: Path, spec_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/spec.git"
    assert main(["node", "init", "--source", dead, "--node", "a", "--root", str(tmp_path)]) == 2
    assert "127.0.0.1" in capsys.readouterr().err
    argv = ["node", "init", "--source", spec_url, "--node", "gpu-z", "--root", str(tmp_path)]
    assert main(argv) == 2
    assert "node 'gpu-z' is not in the spec" in capsys.readouterr().err
    assert not Layout(tmp_path).real(ENV_FILE).exists()
    # Offline installs: --no-check writes it anyway.
    assert main([*argv[:-2], "--no-check", "--root", str(tmp_path)]) == 0


def test_secret_new_and_install_from_a_file_and_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["secret", "new"]) == 0
    printed = capsys.readouterr().out
    value = parse_secret(printed, "stdout")
    assert printed == f"secret {value}\n" and len(value) == 64
    assert new_secret() != printed
    file = tmp_path / "peer.map"
    file.write_text(printed)
    node_a, node_b = Layout(tmp_path / "a"), Layout(tmp_path / "b")
    assert main(["secret", "install", str(file), "--root", str(node_a.root)]) == 0
    target = node_a.real(PEER_SECRET_FILE)
    assert target.read_text() == printed
    assert _mode(target) == 0o640 and _mode(target.parent) == 0o750
    assert "installed the peer secret as" in capsys.readouterr().out
    secret_install(node_b, "-", stdin=io.StringIO(value + "\n"), say=lambda _: None)
    assert node_b.real(PEER_SECRET_FILE).read_text() == printed
    # Another secret over it: refused without --force, the file untouched.
    other = tmp_path / "other.map"
    other.write_text(new_secret())
    assert main(["secret", "install", str(other), "--root", str(node_a.root)]) == 2
    assert "already holds another secret" in capsys.readouterr().err
    assert target.read_text() == printed
    assert main(["secret", "install", str(other), "--root", str(node_a.root), "--force"]) == 0
    assert target.read_text() == other.read_text()


def test_secret_install_refuses_what_the_gateway_could_not_use(tmp_path: Path) -> None:
    for bad in ("secret short\n", "secret a b\n", "x" * 10, "secret " + "é" * 40):
        with pytest.raises(OlladistError, match="stdin"):
            parse_secret(bad, "stdin")
    assert not Layout(tmp_path).real(PEER_SECRET_FILE).exists()


def test_doctor_names_the_command_for_each_missing_piece(
    tmp_path: Path,
    spec_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OLLADIST_OLLAMA_BINARY", str(Path(sys.executable).parent / "olladist-sim"))
    root = str(tmp_path)
    assert main(["doctor", "--root", root]) == 1
    out = capsys.readouterr().out
    assert f"fix: olladist node init --source URL --node NAME --root {root}" in out
    assert main(["node", "init", "--source", spec_url, "--node", "gpu-a", "--root", root]) == 0
    capsys.readouterr()
    assert main(["doctor", "--root", root]) == 1
    out = capsys.readouterr().out
    assert "FAIL peer secret" in out
    assert f"olladist secret install peer.map --root {root}" in out
    (tmp_path / "peer.map").write_text(new_secret())
    assert main(["secret", "install", str(tmp_path / "peer.map"), "--root", root]) == 0
    capsys.readouterr()
    assert main(["doctor", "--root", root]) == 0, capsys.readouterr().out


def test_redact_hides_tokens() -> None:
    assert (
        redact("https://deploy:TOKEN@git.example.com/x.git") == "https://***@git.example.com/x.git"
    )
    assert redact("https://git.example.com/x.git") == "https://git.example.com/x.git"
    assert redact("/srv/spec") == "/srv/spec"
