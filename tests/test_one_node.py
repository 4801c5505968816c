"""A one-node cluster as a user sets it up first: no peer secret, and a root it can start by hand.

`olladist apply --runtime none` writes files only; the gateway config it leaves must pass
`haproxy -c` without a peer secret (one node has no peers), and HAProxy started by hand on it
(`haproxy -f ROOT/etc/olladist/haproxy.cfg`) must come up and serve.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from olladist.cli import main
from tests.conftest import need
from tests.gateway.harness import wait_port
from tests.harness.ports import free_port

pytestmark = pytest.mark.integration


def one_node_spec(base: Path) -> tuple[Path, int, int]:
    """A spec of one node with one instance; returns (spec dir, gateway port, stats port)."""
    port, stats, peer, inst = (free_port() for _ in range(4))
    spec = base / "spec"
    (spec / "nodes").mkdir(parents=True)
    (spec / "cluster.yaml").write_text(
        "cluster: solo\n"
        f"gateway: {{port: {port}, peer_port: {peer}, stats_port: {stats}}}\n"
        f"ollama: {{binary: {Path(sys.prefix) / 'bin' / 'olladist-sim'}}}\n"
        "models:\n  - {name: qwen2.5:0.5b, nodes: all}\n"
    )
    (spec / "nodes" / "solo.yaml").write_text(
        "name: solo\naddress: 127.0.0.1\nlisten: 127.0.0.1\n"
        f"instances:\n  - {{name: gpu0, port: {inst}}}\n"
    )
    return spec, port, stats


def test_one_node_needs_no_peer_secret_and_starts_by_hand(short_root: Path) -> None:
    haproxy = need("haproxy")
    spec, port, stats = one_node_spec(short_root)
    root = short_root / "r"
    argv = ["apply", "--spec", str(spec), "--node", "solo", "--root", str(root)]
    assert main([*argv, "--runtime", "none"]) == 0
    assert not (root / "etc/olladist/secrets").exists()
    cfg = root / "etc/olladist/haproxy.cfg"
    text = cfg.read_text()
    assert "peer.map" not in text, "a node without peers must not name the peer secret"
    check = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # The folders systemd would make at start (RuntimeDirectory=, StateDirectory=) exist.
    assert (root / "run/olladist/gateway").is_dir()
    assert (root / "var/lib/olladist/gateway").is_dir()
    proc = subprocess.Popen(
        [haproxy, "-f", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_port("127.0.0.1", stats)
        assert proc.poll() is None
        # The admin socket the reconciler drains through lives in the runtime folder.
        assert (root / "run/olladist/gateway/admin.sock").is_socket()
        with httpx.Client(trust_env=False, timeout=5) as client:
            assert client.get(f"http://127.0.0.1:{stats}/metrics").status_code == 200
            # The instance is not running (files only): the gateway answers for it, in JSON.
            reply = client.post(
                f"http://127.0.0.1:{port}/api/generate", json={"model": "qwen2.5:0.5b"}
            )
            assert reply.status_code == 503
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=10)
