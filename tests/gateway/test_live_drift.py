"""Pure parts of the live view: the Lua literal the config is rendered as, and the drift
read from a live report (docs/gateway.md has its shape)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from olladist.gateway.live import serves_everything, serving_drift
from olladist.gateway.lua import lua_literal
from olladist.plan import Kind
from tests.conftest import need

REPORT: dict[str, Any] = {
    "version": 1,
    "node": "gpu-a",
    "placed": {
        "llama3.2:1b": {"state": "ready", "reason": "ready", "coming": True},
        "qwen2.5:0.5b": {
            "state": "missing",
            "reason": "not in its model store yet",
            "coming": True,
        },
    },
    "peers": [
        {"node": "gpu-b", "health": "UP", "reachable": True},
        {"node": "gpu-c", "health": "DOWN", "reachable": False, "error": "no answer"},
    ],
    "serving": ["llama3.2:1b", "gemma2:2b"],
    "ready": ["llama3.2:1b"],
}


def test_serving_drift_names_each_model_and_peer_with_its_reason() -> None:
    held = ["llama3.2:1b", "qwen2.5:0.5b", "nomic-embed-text:latest"]
    drift = serving_drift(REPORT, held)
    assert [(a.kind, a.target, a.reason) for a in drift] == [
        (
            Kind.REPORT,
            "serving qwen2.5:0.5b",
            "the gateway cannot serve it: not in its model store yet",
        ),
        (
            Kind.REPORT,
            "serving nomic-embed-text:latest",
            "the gateway cannot serve it: not in the gateway's live view",
        ),
        (Kind.REPORT, "peer gpu-c", "the gateway cannot reach it: no answer"),
    ]
    assert serving_drift(REPORT, ["llama3.2:1b"])[-1].target == "peer gpu-c"


def test_serves_everything_wants_every_model_listed_and_ready() -> None:
    assert serves_everything(REPORT, ["llama3.2:1b"]) == []
    assert serves_everything(REPORT, ["llama3.2:1b", "gemma2:2b", "x:latest"]) == [
        "gemma2:2b",
        "x:latest",
    ]


@pytest.mark.parametrize(
    "value",
    ["plain", 'quote " and \\ backslash', "new\nline ]] --[[", "caf\u00e9 \u2603", ""],
)
def test_lua_literal_strings_read_back_exactly(value: str, tmp_path: Path) -> None:
    # Read back by HAProxy's own Lua: `haproxy -c` runs lua-load files and fails on an error.
    script = tmp_path / "t.lua"
    script.write_text(
        f"local v = {lua_literal(value)}\n"
        'local hex = (v:gsub(".", function(c) return string.format("%02x", c:byte()) end))\n'
        f'if hex ~= "{value.encode().hex()}" then error("read back as " .. hex) end\n'
    )
    cfg = tmp_path / "h.cfg"
    cfg.write_text(
        f"global\n    lua-load {script}\ndefaults\n    mode http\n"
        "frontend f\n    bind 127.0.0.1:1\n"
    )
    r = subprocess.run([need("haproxy"), "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_lua_literal_tables() -> None:
    got = lua_literal({"b": [1, True], "a": {"x": None}, "c": []})
    assert got.splitlines() == [
        "{",
        '  ["a"] = {',
        '    ["x"] = nil,',
        "  },",
        '  ["b"] = {',
        "    1,",
        "    true,",
        "  },",
        '  ["c"] = {},',
        "}",
    ]
    with pytest.raises(TypeError):
        lua_literal(1.5)
