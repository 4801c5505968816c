"""The README's commands, run as written in a fresh clone: they cannot drift from the code.

The two set-up commands sit in blocks marked `<!-- readme-command: dev|test -->`, the tour in
blocks marked `<!-- tour -->`. CI runs the test command itself (.ci/run calls it); this test
runs the dev command, the tour against the cluster it brings up, then stops it with Ctrl-C
and checks that nothing it started is left running or listening.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from olladist.ports import who_listens
from olladist.specload import load_spec
from tests.conftest import EXAMPLE_SPEC, REPO

README = REPO / "README.md"


def blocks(marker: str) -> list[str]:
    text = README.read_text()
    pattern = re.compile(rf"<!-- {re.escape(marker)} -->\s*```sh\n(.*?)```", re.S)
    return [m.group(1) for m in pattern.finditer(text)]


def command(name: str) -> str:
    found = blocks(f"readme-command: {name}")
    assert len(found) == 1, f"README needs exactly one `readme-command: {name}` block"
    return found[0].strip()


def test_readme_gives_the_two_commands_and_ci_runs_the_test_command() -> None:
    assert command("dev") == "./scripts/dev"
    test = command("test")
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(rf"^{re.escape(test.removeprefix('./'))}\b", ci, re.M), (
        f".ci/run must call the README's test command ({test})"
    )
    assert len(blocks("tour")) >= 5


def processes_under(path: Path) -> list[str]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmd:
            out.append(f"{pid}: {cmd[:200]}")
    return out


@pytest.mark.slow
@pytest.mark.integration
def test_dev_command_and_tour_work_as_written(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    state = Path("/tmp") / f"od-readme-{os.getpid()}"  # short: HAProxy socket path limit
    env = {**os.environ, "XDG_STATE_HOME": str(state), "NO_COLOR": "1"}
    env.pop("VIRTUAL_ENV", None)
    spec = load_spec(EXAMPLE_SPEC)
    ports = [(n.listen, spec.gateway.port) for n in spec.nodes]
    busy = [f"{a}:{p} ({who})" for a, p in ports if (who := who_listens(a, p))]
    if busy:
        pytest.fail(f"the example cluster's ports are taken: {busy} (a dev cluster running?)")
    dev = subprocess.Popen(
        ["bash", "-c", command("dev")],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
        # Ctrl-C as in a terminal, even when this test runs under a shell that started it in
        # the background (nohup, `&`), which leaves SIGINT ignored for all it starts.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    output: list[str] = []
    up = threading.Event()

    def read() -> None:
        assert dev.stdout is not None
        for line in dev.stdout:
            output.append(line)
            if "The cluster is up" in line:
                up.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not up.wait(timeout=600):
            pytest.fail("the dev cluster did not come up:\n" + "".join(output[-60:]))
        tour = "\n".join(blocks("tour"))
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", tour],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"tour failed:\n{result.stdout}\n{result.stderr}"
        assert "request 10: ok" in result.stdout
        assert "all checks passed" in result.stdout
        assert '"done":true' in result.stdout.replace(" ", "")
    finally:
        # Ctrl-C, as a user would.
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGINT)
        try:
            code = dev.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()
            code = None
        reader.join(timeout=5)
        if dev.stdout is not None:
            dev.stdout.close()
        left = processes_under(clone)
        listening = [f"{a}:{p}" for a, p in ports if who_listens(a, p)]
        subprocess.run(["rm", "-rf", str(state)], check=False)
    assert code == 0, "".join(output[-40:])
    assert left == [], f"processes left running: {left}"
    assert listening == [], f"still listening: {listening}"
