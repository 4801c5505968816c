"""Fault injection against a real simulator process, set through the env and the admin route."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from olladist.sim.inference import CRASH_EXIT_STATUS

from .conftest import Sim, SimFactory

pytestmark = pytest.mark.integration

GEN = {"model": "qwen2.5:0.5b", "prompt": "hello"}


def set_faults(sim: Sim, faults: dict[str, object]) -> dict[str, object]:
    with sim.client() as c:
        r = c.post("/_sim/faults", json=faults)
        assert r.status_code == 200, r.text
        data: dict[str, object] = r.json()
        return data


def test_hang_accepts_and_never_answers_but_health_still_passes(sim: Sim) -> None:
    sim.pull("qwen2.5:0.5b")
    set_faults(sim, {"hang": True})
    with sim.client(timeout=0.5) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post("/api/generate", json=GEN)
        assert c.get("/api/version").status_code == 200  # a shallow check passes
    with sim.client() as c:
        assert c.delete("/_sim/faults").json()["hang"] is False
        assert c.post("/api/generate", json={**GEN, "stream": False}).status_code == 200


def test_hang_all_hangs_health_too(sim_factory: SimFactory) -> None:
    sim = sim_factory({"OLLADIST_SIM_FAULTS": "hang_all"})
    with sim.client(timeout=0.5) as c, pytest.raises(httpx.ReadTimeout):
        c.get("/api/version")
    with sim.client() as c:
        assert c.get("/_sim/faults").json()["hang_all"] is True


def test_crash_exits_the_process(sim: Sim) -> None:
    sim.pull("qwen2.5:0.5b")
    set_faults(sim, {"crash": True})
    with sim.client() as c, pytest.raises(httpx.TransportError):
        c.post("/api/generate", json=GEN)
    assert sim.proc.wait(timeout=10) == CRASH_EXIT_STATUS


def test_crash_mid_stream_cuts_the_stream(sim: Sim) -> None:
    sim.pull("qwen2.5:0.5b")
    set_faults(sim, {"crash_mid_stream": 3})
    lines: list[dict[str, object]] = []
    with (
        sim.client() as c,
        pytest.raises(httpx.TransportError),
        c.stream("POST", "/api/generate", json=GEN) as r,
    ):
        assert r.status_code == 200
        lines.extend(json.loads(x) for x in r.iter_lines() if x)
    assert len(lines) == 3 and not any(line.get("done") for line in lines)
    assert sim.proc.wait(timeout=10) == CRASH_EXIT_STATUS


def test_error_mid_stream_keeps_status_200(sim: Sim) -> None:
    sim.pull("qwen2.5:0.5b")
    set_faults(sim, {"error_mid_stream": 3})
    with sim.client() as c:
        r = c.post(
            "/api/chat",
            json={"model": "qwen2.5:0.5b", "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 200
        lines = [json.loads(x) for x in r.text.splitlines()]
        assert len(lines) == 4
        assert "error" in lines[-1] and "message" in lines[0]
        r = c.post("/api/generate", json={**GEN, "stream": False})
        assert r.status_code == 500 and "error" in r.json()
        r = c.post(
            "/v1/chat/completions",
            json={
                "model": "qwen2.5:0.5b",
                "stream": True,
                "messages": [{"role": "user", "content": "x"}],
            },
        )
        events = [e for e in r.text.split("\n\n") if e]
        assert "error" in json.loads(events[-1].removeprefix("data: "))
        assert "[DONE]" not in r.text


def test_faults_scoped_to_models(sim: Sim) -> None:
    sim.pull("qwen2.5:0.5b")
    sim.pull("all-minilm")
    set_faults(sim, {"hang": True, "models": ["all-minilm"]})
    with sim.client(timeout=2) as c:
        assert c.post("/api/generate", json={**GEN, "stream": False}).status_code == 200
    with sim.client(timeout=0.5) as c, pytest.raises(httpx.ReadTimeout):
        c.post("/api/embed", json={"model": "all-minilm", "input": "x"})


def test_slow_multiplies_load_and_token_time(sim_factory: SimFactory) -> None:
    # qwen2.5:0.5b is 0.398 GB: 0.04 s to load at 10 GB/s, 0.4 s when ten times slower.
    sim = sim_factory({"OLLADIST_SIM_LOAD_GBPS": "10", "OLLADIST_SIM_FAULTS": "slow=10"})
    sim.pull("qwen2.5:0.5b")
    with sim.client() as c:
        r = c.post("/api/generate", json={**GEN, "stream": False}).json()
    assert r["load_duration"] >= 0.39e9
    assert r["eval_duration"] >= 16 * 10 / 2000 * 1e9 * 0.95


def test_refuse_pulls_and_disk_full(sim: Sim) -> None:
    set_faults(sim, {"refuse_pulls": True})
    with sim.client() as c:
        lines = [
            json.loads(x)
            for x in c.post("/api/pull", json={"model": "tinyllama"}).text.splitlines()
        ]
        assert lines[0] == {"status": "pulling manifest"}
        assert "no such host" in lines[-1]["error"]
    set_faults(sim, {"disk_full": True})
    with sim.client() as c:
        r = c.post("/api/pull", json={"model": "tinyllama", "stream": False})
        assert r.status_code == 500
        assert "no space left on device" in r.json()["error"]
        c.delete("/_sim/faults")
        assert c.get("/api/tags").json()["models"] == []  # nothing half-written is listed
        assert c.post("/api/pull", json={"model": "tinyllama", "stream": False}).status_code == 200


def test_bad_fault_request_is_400(sim: Sim) -> None:
    with sim.client() as c:
        r = c.post("/_sim/faults", json={"explode": True})
        assert r.status_code == 400
        assert "unknown fault" in r.json()["error"]


def test_stats_count_requests_and_reset(sim: Sim) -> None:
    sim.pull("qwen2.5:0.5b")
    with sim.client() as c:
        for _ in range(3):
            c.post("/api/generate", json={**GEN, "stream": False})
        stats = c.get("/_sim/stats").json()
        assert stats["requests_by_route"]["/api/generate"] == 3
        assert stats["cold_loads_by_model"] == {"qwen2.5:0.5b": 1}
        assert stats["loaded"] == ["qwen2.5:0.5b"]
        c.delete("/_sim/stats")
        time.sleep(0.01)
        assert c.get("/_sim/stats").json()["cold_loads"] == 0


def test_exit_at_start_exits_with_status_1_before_listening() -> None:
    sim = Path(sys.executable).parent / "olladist-sim"
    env = {**os.environ, "OLLADIST_SIM_FAULTS": "exit_at_start", "OLLAMA_HOST": "127.0.0.1:1"}
    done = subprocess.run(
        [str(sim), "serve"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert "exit_at_start" in done.stderr
