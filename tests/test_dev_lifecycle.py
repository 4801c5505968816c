"""`olladist dev` says what it runs: a repository made from another spec is refused with the
way out, and a foreground `olladist dev` ends when `olladist dev --down` stops its cluster."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from olladist.dev import ORIGIN_RECORD, DevCluster, ensure_repo
from olladist.errors import OlladistError
from olladist.ports import who_listens
from tests.test_one_node import one_node_spec


def test_a_repository_made_from_another_spec_is_refused_with_the_way_out(tmp_path: Path) -> None:
    first, _, _ = one_node_spec(tmp_path / "a")
    other, _, _ = one_node_spec(tmp_path / "b")
    state = tmp_path / "dev"
    ensure_repo(first, state / "repo")
    with pytest.raises(OlladistError) as info:
        DevCluster(other, state).up(timeout=5)
    assert f"was made from {first.resolve()}, not from {other.resolve()}" in info.value.message
    hint = info.value.hint or ""
    assert "--reset" in hint and f"olladist dev --spec {first.resolve()}" in hint
    # A repository made before the record existed: its first commit still names the spec.
    (state / ORIGIN_RECORD).unlink()
    with pytest.raises(OlladistError, match=f"made from {first.resolve()}"):
        DevCluster(other, state).up(timeout=5)
    DevCluster(other, state).reset()
    assert not (state / "repo").exists()


def _dev(*args: str) -> list[str]:
    return [sys.executable, "-m", "olladist", "dev", *args]


@pytest.mark.integration
def test_foreground_dev_exits_when_down_from_elsewhere(short_root: Path) -> None:
    spec, port, _ = one_node_spec(short_root)
    state = short_root / "dev"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLADIST_")}
    fg = subprocess.Popen(
        _dev("--spec", str(spec), "--state-dir", str(state), "--interval", "1", "--timeout", "60"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert fg.stdout is not None
        seen = []
        for line in fg.stdout:
            seen.append(line)
            if line.startswith("The cluster is up"):
                break
        else:
            pytest.fail("olladist dev ended before the cluster was up:\n" + "".join(seen))
        assert "(created from " in "".join(seen)
        down = subprocess.run(
            _dev("--down", "--state-dir", str(state)), capture_output=True, text=True, env=env
        )
        assert down.returncode == 0, down.stderr
        _, err = fg.communicate(timeout=60)
        assert fg.returncode == 0, err
        assert "stopped from elsewhere (olladist dev --down)" in err
        assert who_listens("127.0.0.1", port) is None
    finally:
        if fg.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(fg.pid, signal.SIGTERM)
            fg.wait(30)
        subprocess.run(_dev("--down", "--state-dir", str(state)), capture_output=True, env=env)
