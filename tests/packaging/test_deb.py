"""The Debian package: its file list against the layout of packaging/README.md, lintian, and a
whole life inside the systemd sandbox: `dpkg -i`, a node set up with the set-up commands,
`systemctl enable --now olladist-reconcile` against git over loopback with the package's
olladist-sim as the Ollama binary, an upgrade under load, `dpkg --purge`.

The sandbox runs with `overlay_system`: /etc, /usr and /var are overlays of the host's whose
writes land in the sandbox's workdir, so dpkg, systemd-sysusers and the reconciler change no
file of the host (checked at the end)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from olladist.units import GATEWAY_UNIT, RECONCILE_UNIT, shipped_unit
from tests.conftest import REPO, need
from tests.harness.gitserver import serve_git_http
from tests.harness.systemd_sandbox import SystemdSandbox
from tests.packaging.conftest import Built, build_deb
from tests.packaging.test_wheel import package_files
from tests.system.node import MODELS, Ports, cluster_yaml, free_port, git, loopback_address

PREFIX = "usr/lib/olladist"
SITE = f"{PREFIX}/lib/python3.11/site-packages"
UNITS = ("olladist-gateway.service", "olladist-ollama@.service", "olladist-reconcile.service")
INSTANCES = ("olladist-ollama@i0.service", "olladist-ollama@i1.service")


def _members(deb: Path) -> dict[str, tarfile.TarInfo]:
    """The data archive of `deb`, by path (without the leading ./)."""
    listing = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True)
    assert listing.returncode == 0, listing.stderr
    with tarfile.open(fileobj=io.BytesIO(listing.stdout)) as tar:
        members = {os.path.normpath(m.name): m for m in tar.getmembers()}
    members.pop(".", None)
    return members


def _control(deb: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), field], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.slow
def test_deb_file_list_matches_the_layout(deb: Path, tmp_path: Path) -> None:
    files = _members(deb)
    tops = {name.split("/")[0] for name in files}
    assert tops == {"etc", "usr"}, "the package installs into /etc and /usr only (never /opt)"
    assert all(m.uname == "root" and m.gname == "root" for m in files.values())
    assert files["usr/bin/olladist"].linkname == "../lib/olladist/bin/olladist"
    assert files["usr/bin/olladist-sim"].linkname == "../lib/olladist/bin/olladist-sim"
    assert files[f"{PREFIX}/bin/python3"].linkname == "../../../bin/python3"
    assert {n.split("/")[-1] for n in files if n.startswith(f"{PREFIX}/bin/")} == {
        "olladist", "olladist-sim", "python", "python3",
    }  # fmt: skip
    # Every file of the package in git, in the environment's site-packages.
    missing = {f for f in package_files() if f"{SITE}/{f}" not in files}
    assert not missing, f"not in the .deb: {sorted(missing)}"
    assert not [n for n in files if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in files if n.endswith("direct_url.json")]
    # The units exactly as the package ships them in its data.
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    for unit in UNITS:
        assert files[f"usr/lib/systemd/system/{unit}"].mode == 0o644
        assert (tmp_path / "usr/lib/systemd/system" / unit).read_text() == shipped_unit(unit)
    assert (tmp_path / "usr/lib/sysusers.d/olladist.conf").read_text() == (
        REPO / "packaging/olladist.sysusers.conf"
    ).read_text()
    assert (
        "d /var/lib/olladist 0755 root root"
        in (tmp_path / "usr/lib/tmpfiles.d/olladist.conf").read_text()
    )
    env = files["etc/olladist/olladist.env"]
    assert env.mode == 0o600
    template = (tmp_path / "etc/olladist/olladist.env").read_text().splitlines()
    assert not [x for x in template if x.strip() and not x.startswith("#")], "sets nothing"
    for doc in ("copyright", "changelog.Debian.gz", "operating.md.gz", "cli.md.gz"):
        assert f"usr/share/doc/olladist/{doc}" in files
    assert "usr/share/man/man1/olladist.1.gz" in files

    control = subprocess.run(
        ["dpkg-deb", "-e", str(deb), str(tmp_path / "DEBIAN")], capture_output=True
    )
    assert control.returncode == 0
    assert (tmp_path / "DEBIAN/conffiles").read_text().split() == ["/etc/olladist/olladist.env"]
    depends = _control(deb, "Depends")
    for dep in ("haproxy (>= 2.6)", "python3 (>= 3.11)", "python3 (<< 3.12)", "systemd"):
        assert dep in depends
    assert "openssh-client" in _control(deb, "Recommends")
    assert "gnupg" in _control(deb, "Suggests")
    # Never enable anything; start only what an upgrade stopped (checked live below).
    for script in ("postinst", "prerm", "postrm"):
        text = (tmp_path / "DEBIAN" / script).read_text()
        assert not re.search(r"\benable\b", text.replace("enable --now", "")), script


def _justified_tags() -> set[str]:
    """The lintian tags packaging/README.md justifies: the first column of its tag table."""
    text = (REPO / "packaging/README.md").read_text()
    return set(re.findall(r"^\| `([a-z0-9-]+)` \|", text, re.MULTILINE))


@pytest.mark.slow
def test_lintian_finds_nothing_unjustified(deb: Path) -> None:
    lintian = need("lintian")
    result = subprocess.run(
        [lintian, "--tag-display-limit", "0", str(deb)], capture_output=True, text=True
    )
    tags = set(re.findall(r"^[EWIXP]: olladist: ([a-z0-9-]+)", result.stdout, re.MULTILINE))
    unjustified = tags - _justified_tags()
    assert not unjustified, (
        f"lintian tags without a reason in packaging/README.md:\n{result.stdout}"
    )


# -- the sandbox ------------------------------------------------------------------------------


def _digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except FileNotFoundError:
        return "absent"


HOST_FILES = (
    "/var/lib/dpkg/status",
    "/etc/passwd",
    "/etc/group",
    "/etc/shadow",
    "/usr/bin/olladist",
    "/usr/lib/olladist",
    "/etc/olladist",
    "/var/lib/olladist",
    "/usr/lib/sysusers.d/olladist.conf",
    "/usr/sbin/policy-rc.d",
)


def _host_state() -> dict[str, str]:
    state = {p: (_digest(p) if Path(p).is_file() else str(Path(p).exists())) for p in HOST_FILES}
    for folder in ("/usr/lib/systemd/system", "/etc/systemd/system", "/usr/lib/tmpfiles.d"):
        state[folder] = " ".join(sorted(p.name for p in Path(folder).iterdir()))
    return state


class Client(threading.Thread):
    """Sequential generate requests through the gateway until stopped; counts failures."""

    def __init__(self, url: str, limit: int = 5000) -> None:
        super().__init__(daemon=True)
        self.url, self.limit = url, limit
        self.ok = 0
        self.failed: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        body = {"model": "qwen2.5:0.5b", "prompt": "hi", "stream": False}
        with httpx.Client(trust_env=False, timeout=30) as client:
            while not self.stop.is_set() and self.ok + len(self.failed) < self.limit:
                try:
                    reply = client.post(f"{self.url}/api/generate", json=body)
                    if reply.status_code == 200 and reply.json().get("done"):
                        self.ok += 1
                    else:
                        self.failed.append(f"{reply.status_code} {reply.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failed.append(repr(exc))


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    repo = tmp_path / "upstream"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    with serve_git_http(repo, tmp_path / "http.log") as server:
        yield repo, server.url


@pytest.mark.system
@pytest.mark.slow
def test_install_set_up_upgrade_purge_in_the_sandbox(
    sandbox_available: None, built: Built, deb: Path, tmp_path: Path, upstream: tuple[Path, str]
) -> None:
    repo, url = upstream
    address = loopback_address()
    ports = Ports(
        free_port(address), free_port(address), free_port(address), (free_port(), free_port())
    )
    (repo / "cluster.yaml").write_text(cluster_yaml(address, ports, MODELS))
    git(repo, "add", "cluster.yaml")
    git(repo, "commit", "-q", "-m", "one node")
    head = git(repo, "rev-parse", "HEAD")
    newer = build_deb(built, "0.1.0-2")  # before the sandbox: building takes a while
    logs = tmp_path / "logs"
    logs.mkdir()
    host_before = _host_state()

    with SystemdSandbox(tmp_path / "sb", share=(deb.parent, logs), overlay_system=True) as sb:
        sb.wait_until_running()

        def run(*cmd: str, timeout: float = 60) -> str:
            return sb.run(*cmd, timeout=timeout).stdout

        def status() -> dict[str, object]:
            return json.loads(run("olladist", "status", "--json"))  # type: ignore[no-any-return]

        # Docker images ship a policy-rc.d that refuses every service start; a real machine
        # has none. Removed in the overlay only.
        run("rm", "-f", "/usr/sbin/policy-rc.d")
        run("dpkg", "-i", str(deb), timeout=180)
        assert "olladist" in run("id", "olladist")
        assert run("stat", "-c", "%a %U", "/etc/olladist/olladist.env").split() == ["600", "root"]
        # Installed, and nothing enabled or started unasked.
        for unit in (RECONCILE_UNIT, GATEWAY_UNIT):
            assert sb.systemctl("is-enabled", unit, check=False).stdout.strip() == "disabled"
            assert sb.systemctl("is-active", unit, check=False).stdout.strip() == "inactive"
        assert run("olladist", "--version").strip() == "olladist 0.1.0"

        # The node, set up with the commands of docs/operating.md.
        init = run("olladist", "node", "init", "--source", url, "--node", "n1",
                   "--ollama-binary", "/usr/bin/olladist-sim")  # fmt: skip
        assert "source reachable" in init
        run("sh", "-c", "olladist secret new | olladist secret install -")
        assert run("stat", "-c", "%a %U:%G", "/etc/olladist/secrets/peer.map").split() == [
            "640", "root:olladist",
        ]  # fmt: skip
        doctor = sb.run("olladist", "doctor", check=False, timeout=60)
        assert doctor.returncode == 0, doctor.stdout
        assert "ok   user olladist exists" in doctor.stdout
        assert "fix: systemctl enable --now olladist-reconcile" in doctor.stdout

        # No journald in the sandbox: the services' output goes to files the test can show.
        for unit in (RECONCILE_UNIT, GATEWAY_UNIT, "olladist-ollama@.service"):
            sb.install_file(
                f"{unit}.d/60-test-log.conf",
                f"[Service]\nStandardOutput=append:{logs}/{unit}.log\n"
                f"StandardError=append:{logs}/{unit}.log\n",
                reload=False,
            )
        sb.systemctl("daemon-reload")
        run("systemctl", "enable", "--now", RECONCILE_UNIT, timeout=180)

        def show_logs() -> str:
            return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs.iterdir())

        deadline = time.monotonic() + 90
        current: dict[str, object] = {}
        while time.monotonic() < deadline:
            current = status()
            if current["applied_commit"] == head and current["ok"] and not current["drift"]:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"not converged: {current}\n{show_logs()}")
        for unit in (GATEWAY_UNIT, *INSTANCES):
            sb.wait_active(unit)
        gateway = f"http://{address}:{ports.gateway}"
        with httpx.Client(trust_env=False, timeout=30) as client:
            reply = client.post(
                f"{gateway}/api/generate",
                json={"model": "qwen2.5:0.5b", "prompt": "hello", "stream": False},
            )
        assert reply.status_code == 200 and reply.json()["response"], reply.text
        # The gateway and the instances run as the package's user.
        assert sb.show(GATEWAY_UNIT, "User") == "olladist"

        # Upgrade under load: the reconciler restarts, nothing else does, no request fails.
        pids = {u: sb.main_pid(u) for u in (RECONCILE_UNIT, GATEWAY_UNIT, *INSTANCES)}
        client = Client(gateway)
        client.start()
        try:
            time.sleep(1)
            run("dpkg", "-i", str(newer), timeout=180)
            sb.wait_active(RECONCILE_UNIT, timeout=60)
            time.sleep(1)
        finally:
            client.stop.set()
            client.join(60)
        assert "Version: 0.1.0-2" in run("dpkg", "-s", "olladist")
        after = {u: sb.main_pid(u) for u in pids}
        assert after[RECONCILE_UNIT] not in (0, pids[RECONCILE_UNIT]), (pids, after)
        for unit in (GATEWAY_UNIT, *INSTANCES):
            assert after[unit] == pids[unit], f"{unit} restarted by the upgrade"
        assert client.failed == [], client.failed[:5]
        assert client.ok > 0
        assert status()["applied_commit"] == head

        # Purge: only what docs/operating.md says is kept (the model store, the user) is left.
        # The test's own drop-ins are an operator's files, which purge leaves; remove them.
        for unit in (RECONCILE_UNIT, GATEWAY_UNIT, "olladist-ollama@.service"):
            (sb.unit_dir / f"{unit}.d" / "60-test-log.conf").unlink()
            (sb.unit_dir / f"{unit}.d").rmdir()
        run("dpkg", "--purge", "olladist", timeout=120)
        assert (
            "olladist"
            not in sb.systemctl(
                "list-units", "--state=active", "--plain", "--no-legend", "olladist-*"
            ).stdout
        )
        left = run("find", "/etc", "/usr", "/var", "/run", "-path", "/var/tmp", "-prune", "-o",
                   "-name", "*olladist*", "-print")  # fmt: skip
        assert sorted(left.split()) == ["/var/lib/olladist"], left
        assert run("ls", "-A", "/var/lib/olladist").split() == ["models"]
        assert run("find", "/var/lib/olladist/models", "-name", "sha256*", "-print")
        assert "olladist" in run("getent", "passwd", "olladist")
        assert sorted(p.name for p in sb.unit_dir.iterdir()) == sorted(
            ["basic.target", "multi-user.target", "sandbox.target", "shutdown.target",
             "sysinit.target"]
        )  # fmt: skip
        assert "not installed" in sb.run("dpkg", "-s", "olladist", check=False).stderr + (
            sb.run("dpkg-query", "-W", "-f", "${Status}", "olladist", check=False).stdout
        )
        # Writes went to the overlay, not the host.
        assert (sb.overlay_upper("usr") / "lib" / "olladist").exists() is False  # purged
        assert (sb.overlay_upper("var") / "lib" / "dpkg" / "status").is_file()

    assert _host_state() == host_before
