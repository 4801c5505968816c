"""The wheel and the sdist hold every file of the package, and the installed wheel works from
a fresh virtual environment, away from the source tree: `olladist render`, `olladist-sim
serve`. The install is offline, from the wheelhouse packaging/build-wheels made."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.conftest import EXAMPLE_SPEC, REPO
from tests.packaging.conftest import Built

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def package_files() -> set[str]:
    """Every file of the olladist package in git (code and data), as a wheel names it."""
    out = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "olladist"], capture_output=True, text=True
    ).stdout.split()
    assert "olladist/cli.py" in out
    return set(out)


def test_wheel_and_sdist_hold_every_package_file(built: Built) -> None:
    wanted = package_files()
    with zipfile.ZipFile(built.wheel) as whl:
        in_wheel = {n for n in whl.namelist() if not n.startswith("olladist-")}
    assert wanted - in_wheel == set(), "missing from the wheel (pyproject package-data)"
    assert in_wheel - wanted == set(), "in the wheel but not in git"
    with tarfile.open(built.sdist) as sdist:
        top = sdist.getnames()[0].split("/")[0]
        in_sdist = {n.removeprefix(top + "/") for n in sdist.getnames()}
    assert wanted - in_sdist == set(), "missing from the sdist"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLADIST_", "PYTHON"))}
    return {**env, **extra}


def test_installed_wheel_renders_and_serves(built: Built, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--quiet", "--no-index", "--find-links", str(built.wheels), "olladist"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import olladist; print(olladist.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, env=_clean_env(), check=True,
    ).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(venv), where

    out = tmp_path / "render"
    rendered = subprocess.run(
        [str(venv / "bin" / "olladist"), "render", "--spec", str(EXAMPLE_SPEC), "--node",
         "gpu-a", "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path, env=_clean_env(),
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    # Templates and unit files came from the installed package's data.
    assert "frontend public" in (out / "etc/olladist/haproxy.cfg").read_text()
    unit = out / "etc/systemd/system/olladist-gateway.service"
    assert "ExecStart=/usr/sbin/haproxy" in unit.read_text()
    assert (out / "etc/systemd/system/olladist-ollama@gpu0.service.d/10-olladist.conf").is_file()

    sim = subprocess.Popen(
        [str(venv / "bin" / "olladist-sim"), "serve"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env=_clean_env(
            OLLAMA_HOST="127.0.0.1:0",
            OLLAMA_MODELS=str(tmp_path / "models"),
            OLLADIST_SIM_QUIET="1",
        ),
    )  # fmt: skip
    try:
        assert sim.stderr is not None
        port = None
        for line in sim.stderr:
            found = re.search(r"Listening on 127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        assert port, "olladist-sim did not say where it listens"
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(trust_env=False, timeout=30) as client:
            assert client.get(f"{base}/api/version").status_code == 200
            pull = client.post(f"{base}/api/pull", json={"model": "all-minilm", "stream": False})
            assert pull.json().get("status") == "success", pull.text
            names = {m["name"] for m in client.get(f"{base}/api/tags").json()["models"]}
            assert "all-minilm:latest" in names
            embed = client.post(f"{base}/api/embed", json={"model": "all-minilm", "input": "x"})
            assert embed.status_code == 200 and embed.json()["embeddings"]
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.communicate(timeout=10)  # reaps it and closes the pipe
