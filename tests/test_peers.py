"""The peer client against real sockets on loopback: a peer that answers, one that accepts the
connection and never answers, one that refuses; the secret header; last-seen times."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from olladist.layout import Layout
from olladist.nodeconfig import write_peer_secret
from olladist.peers import (
    MAX_BODY,
    PEER_HEADER,
    Credentials,
    Peer,
    PeerError,
    Peers,
    peers_of,
)
from olladist.specload import load_spec
from tests.conftest import EXAMPLE_SPEC
from tests.harness.ports import free_port


class _Answer(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        self.seen.append(dict(self.headers))
        body = json.dumps({"node": "good", "path": self.path}).encode()
        if self.path == "/big":
            body = b"[" + b"0," * MAX_BODY + b"0]"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hangs up early (the size limit) is the point, not an error


@pytest.fixture
def good() -> Iterator[ThreadingHTTPServer]:
    _Answer.seen = []
    server = _Quiet(("127.0.0.1", 0), _Answer)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def silent() -> Iterator[int]:
    """Accepts connections (the kernel does, from the backlog) and never answers: a hung peer."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def test_every_peer_is_asked_at_once_and_a_hung_one_is_cut_at_the_timeout(
    good: ThreadingHTTPServer, silent: int
) -> None:
    peers = Peers(
        [
            Peer("good", "127.0.0.1", good.server_address[1]),
            Peer("hung", "127.0.0.1", silent),
            Peer("gone", "127.0.0.1", free_port()),
            Peer("edge", "127.0.0.1", 1, reachable=False),
        ],
        Credentials(secret="s" * 64),
        timeout=0.5,
    )
    got = peers.fetch("/olladist/v1/status")
    assert list(got) == ["good", "hung", "gone", "edge"]
    assert got["good"].ok and got["good"].data == {"node": "good", "path": "/olladist/v1/status"}
    assert got["good"].last_seen == got["good"].fetched_at
    assert _Answer.seen[0][PEER_HEADER] == "s" * 64
    assert got["hung"].error == "no answer in 0.5s" and got["hung"].last_seen is None
    assert got["gone"].error is not None and got["gone"].error.startswith("cannot connect")
    assert got["edge"].error == "no peer port: it has no instances"


def test_last_seen_survives_a_peer_going_away(good: ThreadingHTTPServer) -> None:
    port = good.server_address[1]
    peers = Peers([Peer("p", "127.0.0.1", port)], Credentials(), timeout=1.0)
    first = peers.fetch("/x")["p"]
    assert first.ok
    good.shutdown()
    good.server_close()
    second = peers.fetch("/x")["p"]
    assert not second.ok and second.last_seen == first.fetched_at
    assert PEER_HEADER not in _Answer.seen[0]  # no secret configured: no header


def test_an_answer_past_the_size_limit_is_not_read(good: ThreadingHTTPServer) -> None:
    peers = Peers([Peer("p", "127.0.0.1", good.server_address[1])], Credentials(), timeout=5)
    got = peers.fetch("/big")["p"]
    assert got.error == f"answer over {MAX_BODY} bytes" and got.data is None


def test_a_path_without_slash_is_refused() -> None:
    with pytest.raises(ValueError, match="must start with"):
        Peers([], Credentials()).fetch("olladist/v1/status")


def test_credentials_come_from_the_peer_secret_file(short_root: Path) -> None:
    layout = Layout(short_root)
    assert Credentials.load(layout) == Credentials()  # no file: no secret, nothing sent
    path = write_peer_secret(layout)
    secret = path.read_text().split()[1]
    assert Credentials.load(layout).secret == secret
    path.unlink()
    path.mkdir()  # unreadable as a file
    with pytest.raises(PeerError, match="cannot read the peer secret"):
        Credentials.load(layout)


def test_peers_of_a_spec_are_the_other_nodes_on_the_peer_port() -> None:
    spec = load_spec(EXAMPLE_SPEC)
    got = peers_of(spec, "gpu-a")
    assert [p.name for p in got] == [n.name for n in spec.nodes if n.name != "gpu-a"]
    assert {p.port for p in got} == {spec.gateway.peer_port}
    peers = Peers.of(spec, "gpu-a", Layout(Path("/nonexistent")))
    # Loopback nodes bind 127.0.0.N: the peer port only accepts node addresses, so the
    # client leaves from this node's own.
    assert peers.source_address == spec.node("gpu-a").listen
    assert peers.url(got[0], "/olladist/v1/status").startswith(f"http://{got[0].address}:")
