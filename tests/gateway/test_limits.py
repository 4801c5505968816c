"""The gateway's memory ceiling under hostile load, with real HAProxy.

1,000 clients upload 5 MiB bodies with `model` last, slowly, all at once. The large-body
process takes as many as gateway.limits.memory allows; the others get an Ollama-shaped 503 with
Retry-After at once (a client still sending may see the connection reset instead: see
below); a small request sent meanwhile is served; the gateway's memory (every process it runs)
stays under the ceiling. Bounded: every client gives up after a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from olladist.gateway.topology import Limits
from olladist.spec import memory_bytes
from tests.gateway.harness import Cluster, all_up, cluster, loopback_hosts, make_spec, wait_until

UPLOADS = 1000
BODY = 5 * 1024 * 1024
CHUNK = 64 * 1024
PAUSE = 0.05  # between chunks: a slow sender (5 MiB takes at least 4 s)
DEADLINE = 150.0
MEMORY = "512MiB"


def gateway_rss(pid: int) -> int:
    """Resident bytes of every process in the gateway's session (master, workers, the
    large-body process)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) != pid:  # session id
                continue
            status = (stat.parent / "status").read_text()
        except (OSError, ValueError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def frontend_stats(csv_text: str, name: str) -> dict[str, int]:
    """The FRONTEND row of ``show stat`` for ``name``, numeric columns only."""
    rows = list(csv.DictReader(io.StringIO(csv_text.lstrip("# "))))
    row = next(r for r in rows if r["pxname"] == name and r["svname"] == "FRONTEND")
    return {k: int(v) for k, v in row.items() if v and v.isdigit()}


@dataclass
class Outcome:
    status: int | None = None
    retry_after: str | None = None
    body: bytes = b""
    error: str | None = None


@dataclass
class Load:
    outcomes: list[Outcome] = field(default_factory=list)
    peak_rss: int = 0


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """What arrives until EOF or a reset: a gateway that answers before the body is in may
    reset the connection after its answer, which must not lose the answer."""
    data = b""
    try:
        while chunk := await reader.read(65536):
            data += chunk
    except ConnectionError:
        pass
    return data


async def upload(host: str, port: int, out: Outcome) -> None:
    head = b'{"messages":[{"role":"user","content":"'
    tail = b'"}],"model":"m"}'
    pad = BODY - len(head) - len(tail)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {BODY}\r\n\r\n".encode()
            + head
        )
        response = asyncio.create_task(read_all(reader))
        sent = 0
        while sent < pad and not response.done():
            n = min(CHUNK, pad - sent)
            writer.write(b"x" * n)
            sent += n
            try:
                await writer.drain()
            except ConnectionError:
                break  # answered early (503) and closed: the answer is read below
            await asyncio.sleep(PAUSE)
        if not response.done():
            writer.write(tail)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        raw = await response
    except ConnectionError as exc:
        out.error = repr(exc)
        return
    finally:
        writer.close()
    header, _, out.body = raw.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 "):
        out.error = f"no response: {raw[:80]!r}"
        return
    out.status = int(lines[0].split()[1])
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "retry-after":
            out.retry_after = value.strip()


async def hostile(c: Cluster, small: list[int]) -> Load:
    g = c.gw("n0")
    load = Load([Outcome() for _ in range(UPLOADS)])
    tasks = [asyncio.create_task(upload(g.host, g.port, o)) for o in load.outcomes]
    t0 = time.monotonic()
    async with httpx.AsyncClient(trust_env=False, timeout=30) as h:
        while not all(t.done() for t in tasks) and time.monotonic() - t0 < DEADLINE:
            load.peak_rss = max(load.peak_rss, gateway_rss(g.proc.pid))
            if len(small) < 5 and time.monotonic() - t0 > 2:
                r = await h.post(g.url + "/api/generate", json={"model": "m", "prompt": "hi"})
                small.append(r.status_code)
            await asyncio.sleep(0.2)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return load


@pytest.mark.slow
@pytest.mark.integration
def test_a_thousand_slow_large_uploads_stay_under_the_memory_ceiling(gw_tmp: Path) -> None:
    spec = make_spec(
        loopback_hosts(1),
        {0: [64, 64]},
        [{"name": "m", "nodes": ["n0"]}],
        gateway={"limits": {"memory": MEMORY}},
    )
    limits = Limits.for_memory(memory_bytes(MEMORY))
    with cluster(gw_tmp, spec) as c:
        g = c.gw("n0")
        wait_until(lambda: all_up(g))
        small: list[int] = []
        load = asyncio.run(hostile(c, small))
        frontend = frontend_stats(g.runtime.command("show stat"), "public")
    by_status: dict[int | None, int] = {}
    for o in load.outcomes:
        by_status[o.status] = by_status.get(o.status, 0) + 1
    assert load.peak_rss < limits.memory, (load.peak_rss, by_status)
    served = [o for o in load.outcomes if o.status == 200]
    refused = [o for o in load.outcomes if o.status == 503]
    # At most what the large-body process admits at once, and at least one round of it.
    assert limits.large_maxconn <= len(served) < UPLOADS, by_status
    for o in served:  # the fake echoes what reached it: the whole body, routed by model
        assert json.loads(o.body)["body_len"] == BODY and json.loads(o.body)["model"] == "m"
    # The gateway answers 503 as soon as the public buffer holds what it will look at, while
    # the client is still sending; closing on unread data makes the kernel send a reset, and a
    # client that had not read the answer yet loses it. So count the gateway's own 5xx answers.
    assert frontend["hrsp_5xx"] == UPLOADS - len(served), (by_status, frontend)
    assert frontend["hrsp_2xx"] == len(served) + len(small), (by_status, frontend)
    assert refused, by_status  # most clients do read it
    lost = [o for o in load.outcomes if o.status is None]
    assert all(o.error is not None and "no response" in o.error for o in lost), lost[:3]
    for o in refused:
        assert o.retry_after is not None and int(o.retry_after) > 0
        assert json.loads(o.body)["error"].startswith("server busy, please try again.")
    assert small and all(s == 200 for s in small), small
