"""Fairness and limits per client (issue 17 part 3) with real HAProxy and olladist-sim.

Every instance is a simulator with ``OLLAMA_NUM_PARALLEL`` set like its ``num_parallel``, so
the gateway queues what it cannot run (``maxconn``) in HAProxy's own queue, which the fair
order sorts. Orders are read from the order requests finished on a one-slot instance, never
from timings.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from olladist.apikeys import parse_keys
from olladist.errors import OlladistError
from olladist.files import write_atomic
from olladist.gateway.render import gateway_files
from olladist.layout import Layout
from olladist.placement import place
from olladist.sim.process import SimProcess, start_sim
from olladist.spec import Spec
from olladist.specload import load_spec
from olladist.validators import check_haproxy
from tests.conftest import node_secrets
from tests.gateway.harness import (
    Gateway,
    all_ready,
    cluster_ports,
    live,
    loopback_hosts,
    start_gateway,
    stop_pid,
    wait_until,
)

MODEL = "qwen2.5:0.5b"
KEYS_FILE = "/etc/olladist/api-keys"
# A request of TOKENS tokens takes about TOKENS / rate seconds at the simulator.
SIM_ENV = {
    "OLLADIST_SIM_LOAD_GBPS": "100",
    "OLLADIST_SIM_PULL_GBPS": "200",
    "OLLADIST_SIM_TOKEN_RATE": "200",
    "OLLADIST_SIM_PROMPT_RATE": "100000",
    "OLLADIST_SIM_QUIET": "1",
    # Without num_predict an answer goes on until the client hangs up (holding a slot).
    "OLLADIST_SIM_RESPONSE_TOKENS": "20000",
}


def key_line(key: str, settings: str = "") -> str:
    return f"{hashlib.sha256(key.encode()).hexdigest()} {settings}".rstrip() + "\n"


@contextlib.contextmanager
def gateway(
    base: Path,
    num_parallel: int,
    keys: str | None = None,
    clients: dict[str, Any] | None = None,
) -> Iterator[Gateway]:
    """One node whose one instance is a simulator holding MODEL, behind a real HAProxy."""
    sim: SimProcess = start_sim(base / "sim", {**SIM_ENV, "OLLAMA_NUM_PARALLEL": str(num_parallel)})
    gw: Gateway | None = None
    try:
        with httpx.Client(base_url=sim.url, timeout=30, trust_env=False) as c:
            c.post("/api/pull", json={"model": MODEL, "stream": False}).raise_for_status()
        host = loopback_hosts(1)[0]
        ports = cluster_ports([host], 3)
        gw_spec: dict[str, Any] = {
            "port": ports[0],
            "peer_port": ports[1],
            "stats_port": ports[2],
            "health": {"interval": "300ms", "fall": 2, "rise": 1},
            "timeouts": {"connect": "1s", "queue": "20s", "server": "30s", "client": "30s"},
            "clients": clients or {},
        }
        if keys is not None:
            gw_spec["api_keys_file"] = KEYS_FILE
        spec = Spec.model_validate(
            {
                "cluster": "test",
                "gateway": gw_spec,
                "nodes": [
                    {
                        "name": "n0",
                        "address": host,
                        "listen": host,
                        "instances": [
                            {"name": "i0", "port": sim.port, "num_parallel": num_parallel}
                        ],
                    }
                ],
                "models": [{"name": MODEL, "nodes": ["n0"]}],
            }
        )
        local = {KEYS_FILE: keys} if keys is not None else None
        gw = start_gateway(spec, "n0", base, local_files=local)
        wait_until(lambda: all_ready(gw, [MODEL]), timeout=30)
        yield gw
    finally:
        if gw is not None:
            stop_pid(gw.proc)
        sim.stop()


def http(source: str | None = None) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=source) if source else None
    return httpx.Client(timeout=30, trust_env=False, transport=transport)


def generate(key: str | None, tokens: int = 2) -> dict[str, Any]:
    body = {"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": tokens}}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return {"json": body, "headers": headers}


@contextlib.contextmanager
def holding(gw: Gateway, key: str | None, source: str | None = None) -> Iterator[None]:
    """A streaming request that runs on the instance until the block ends (the client hangs
    up, which frees the simulator's slot)."""
    req = generate(key)
    req["json"]["stream"] = True
    del req["json"]["options"]
    with http(source) as c, c.stream("POST", gw.url + "/api/generate", **req) as r:
        assert r.status_code == 200
        # Generating: the slot is taken. The iterator is kept: dropping it would close the
        # stream (and the request) as soon as it is collected.
        lines = r.iter_lines()
        next(lines)
        yield
        del lines


def queued(gw: Gateway) -> int:
    """Requests waiting for an instance: in HAProxy's queues (the routes backends' for the
    older strategies, the instances' admission backends' as loaded-first's last resort, each
    backend's own queue and its servers', a row each, none counted twice) and held by
    loaded-first in live.lua (the live report's `hold.waiting`)."""
    text = gw.runtime.command("show stat").lstrip("# ")
    in_haproxy = sum(
        int(row["qcur"] or 0)
        for row in csv.DictReader(io.StringIO(text))
        if row["pxname"].startswith(("route.", "admit."))
    )
    hold = live(gw).get("hold") or {}
    return in_haproxy + int(hold.get("waiting", 0))


def test_a_key_over_its_concurrency_limit_gets_429_with_retry_after(gw_tmp: Path) -> None:
    keys = key_line("sk-one-at-a-time", "name=one max_concurrent=1") + key_line("sk-free")
    with gateway(gw_tmp, num_parallel=2, keys=keys) as gw, http() as c:
        with holding(gw, "sk-one-at-a-time"):
            r = c.post(gw.url + "/api/generate", **generate("sk-one-at-a-time"))
            assert r.status_code == 429
            assert r.headers["retry-after"] == "1"
            assert r.headers["content-type"] == "application/json"
            assert "max_concurrent" in r.json()["error"]
            assert "may have 1 requests" in r.json()["error"]
            # Another key is not limited by this one's count.
            assert c.post(gw.url + "/api/generate", **generate("sk-free")).status_code == 200
        # The held request has ended: the key may run one again.
        wait_until(
            lambda: (
                c.post(gw.url + "/api/generate", **generate("sk-one-at-a-time")).status_code == 200
            )
        )


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(gw_tmp: Path) -> None:
    keys = key_line("sk-three", "requests_per_minute=3") + key_line("sk-free")
    with gateway(gw_tmp, num_parallel=2, keys=keys) as gw, http() as c:
        codes = [
            c.post(gw.url + "/api/generate", **generate("sk-three")).status_code for _ in range(3)
        ]
        assert codes == [200, 200, 200]
        r = c.post(gw.url + "/api/generate", **generate("sk-three"))
        assert r.status_code == 429
        assert r.headers["retry-after"] == "20"  # 60 s / 3 requests
        assert "requests_per_minute" in r.json()["error"]
        assert "3 requests a minute" in r.json()["error"]
        assert c.post(gw.url + "/api/generate", **generate("sk-free")).status_code == 200


def test_without_keys_the_spec_limits_apply_per_client_address(gw_tmp: Path) -> None:
    with gateway(gw_tmp, num_parallel=2, clients={"max_concurrent": 1}) as gw:
        me, other = "127.0.0.1", "127.0.0.2"
        with holding(gw, None, source=me):
            with http(me) as c:
                r = c.post(gw.url + "/api/generate", **generate(None))
            assert r.status_code == 429
            assert "max_concurrent" in r.json()["error"]
            with http(other) as c:
                assert c.post(gw.url + "/api/generate", **generate(None)).status_code == 200


def run_in_order(gw: Gateway, keys: list[str], by_address: bool = False) -> list[str]:
    """Queue one request per entry of ``keys`` (in that order) behind a held slot, then free
    the slot; the keys in the order their requests finished. ``by_address``: the entries are
    client addresses, the requests carry no key."""
    done: list[str] = []
    lock = threading.Lock()

    def send(key: str) -> None:
        with http(key if by_address else None) as c:
            r = c.post(gw.url + "/api/generate", **generate(None if by_address else key))
        assert r.status_code == 200, r.text
        with lock:
            done.append(key)

    threads = [threading.Thread(target=send, args=(k,)) for k in keys]
    with holding(gw, None if by_address else "sk-holder", "127.0.0.1" if by_address else None):
        for n, t in enumerate(threads, 1):
            t.start()
            # Queued in this order, each soon after the one before: the fair offsets are a
            # second or so, and the test reads the order they make, not the arrival gaps.
            wait_until(lambda n=n: queued(gw) == n, step=0.01)
    for t in threads:
        t.join(60)
    return done


@pytest.mark.parametrize("fair", [True, False])
def test_a_flooding_key_does_not_starve_a_light_one(gw_tmp: Path, fair: bool) -> None:
    keys = key_line("sk-holder") + key_line("sk-flood") + key_line("sk-light")
    with gateway(gw_tmp, num_parallel=1, keys=keys, clients={"fair": fair}) as gw:
        order = run_in_order(gw, ["sk-flood"] * 6 + ["sk-light"] * 2)
    light = [n for n, k in enumerate(order) if k == "sk-light"]
    if fair:
        # The flood's requests sort one second of virtual time apart; the light key's first
        # goes right after the flood's first, its second after the flood's second: [1, 3].
        # The offsets scale with the pace fair.lua measures, which a loaded machine can move
        # by a place; first come, first served would put both last.
        assert light[0] <= 2 and light[1] <= 4, order
    else:
        # Without fairness HAProxy's queue is first come, first served: the light key last.
        assert light == [6, 7], order


def test_without_keys_a_flooding_address_does_not_starve_a_light_one(gw_tmp: Path) -> None:
    with gateway(gw_tmp, num_parallel=1) as gw:
        order = run_in_order(gw, ["127.0.0.2"] * 6 + ["127.0.0.3"] * 2, by_address=True)
    light = [n for n, k in enumerate(order) if k == "127.0.0.3"]
    # A client's first request is alone at the gateway (offset 0, no Lua action) and its
    # clock starts with its second: each address's first two go at their arrival, the
    # flood's third and later a step apart after them. First come, first served: [6, 7].
    assert light == [2, 3], order


def test_weights_share_the_queue_in_their_ratio(gw_tmp: Path) -> None:
    keys = key_line("sk-holder") + key_line("sk-one") + key_line("sk-three", "weight=3")
    with gateway(gw_tmp, num_parallel=1, keys=keys) as gw:
        order = run_in_order(gw, ["sk-one"] * 4 + ["sk-three"] * 6)
    # Virtual starts: weight 1 at 0, 1000, 2000, 3000; weight 3 at 0, 333, 667, 1000, ...
    # (arrival order breaks the near-ties): three of the heavier key's per one of the other's.
    assert order[:5].count("sk-three") >= 3, order
    assert order[-1] == "sk-one", order


def test_a_high_class_key_goes_first(gw_tmp: Path) -> None:
    keys = (
        key_line("sk-holder") + key_line("sk-batch", "class=low") + key_line("sk-vip", "class=high")
    )
    with gateway(gw_tmp, num_parallel=1, keys=keys) as gw:
        order = run_in_order(gw, ["sk-batch"] * 3 + ["sk-vip"])
    assert order[0] == "sk-vip", order


BAD_LINES = [
    "deadbeef",
    hashlib.sha256(b"x").hexdigest().upper(),
    hashlib.sha256(b"x").hexdigest() + " weight=0",
    hashlib.sha256(b"x").hexdigest() + " class=urgent",
    hashlib.sha256(b"x").hexdigest() + " max_concurrent=many",
    hashlib.sha256(b"x").hexdigest() + " rpm=5",
    hashlib.sha256(b"x").hexdigest() + " name=a weight=2 name=b",
    hashlib.sha256(b"test-key").hexdigest(),  # the same digest as line 2
]


@pytest.mark.parametrize("bad", BAD_LINES)
def test_a_bad_keys_line_fails_haproxy_c_as_olladist_reports_it(
    gw_tmp: Path, bad: str, example_spec: Path
) -> None:
    """The shipped fair.lua and olladist's parser refuse the same lines with the same words,
    naming file and line, so `haproxy -c` (run before every reload) stops the reload."""
    example = load_spec(example_spec)
    spec = example.model_copy(
        update={"gateway": example.gateway.model_copy(update={"api_keys_file": KEYS_FILE})}
    )
    layout = node_secrets(Layout(gw_tmp), spec)
    text = "# keys\n" + hashlib.sha256(b"test-key").hexdigest() + "\n" + bad + "\n"
    layout.real(KEYS_FILE).write_text(text)
    with pytest.raises(OlladistError) as olladist_says:
        parse_keys(text, str(layout.real(KEYS_FILE)))
    message = olladist_says.value.message
    assert message.startswith(f"{layout.real(KEYS_FILE)}:3: ")
    node = spec.nodes[0].name
    for path, f in gateway_files(spec, node, place(spec), layout).items():
        write_atomic(layout.real(path), f.content.encode(), f.mode)
    with pytest.raises(OlladistError) as haproxy_says:
        check_haproxy(layout.real("/etc/olladist/haproxy.cfg"))
    assert message in haproxy_says.value.message


def test_a_reload_with_a_bad_keys_file_keeps_the_running_gateway(gw_tmp: Path) -> None:
    keys = key_line("sk-old")
    with gateway(gw_tmp, num_parallel=1, keys=keys) as gw, http() as c:
        path = Layout(gw.root).real(KEYS_FILE)
        path.write_text(keys + key_line("sk-new", "weight=lots"))
        with pytest.raises(
            OlladistError, match=r"api-keys:2: not a valid API key line: weight must be"
        ):
            check_haproxy(Layout(gw.root).real("/etc/olladist/haproxy.cfg"))
        # Had the reload gone ahead anyway (SIGUSR2 to the master), the master refuses the
        # new config and its worker keeps serving with the keys it loaded.
        gw.proc.send_signal(signal.SIGUSR2)
        wait_until(lambda: gw.runtime.processes().failed_reloads >= 1 or "weight must" in gw.log)
        assert c.post(gw.url + "/api/generate", **generate("sk-old")).status_code == 200
        assert c.post(gw.url + "/api/generate", **generate("sk-new")).status_code == 401
