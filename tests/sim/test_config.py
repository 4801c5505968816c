from __future__ import annotations

from pathlib import Path

import pytest

from olladist.sim.config import config_from_env, keep_alive_from_json, parse_duration, parse_host
from olladist.sim.errors import SimConfigError
from olladist.sim.faults import Faults, faults_from_mapping, parse_faults
from olladist.sim.hosts import host_allowed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ("127.0.0.1", 11434)),
        ("127.0.0.2:11500", ("127.0.0.2", 11500)),
        (":9000", ("127.0.0.1", 9000)),
        ("http://127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("https://example.com:443/", ("example.com", 443)),
        ("0.0.0.0", ("0.0.0.0", 11434)),
        ("[::1]:5000", ("::1", 5000)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
    ],
)
def test_parse_host(text: str, expected: tuple[str, int]) -> None:
    assert parse_host(text) == expected


def test_parse_host_rejects_bad_port() -> None:
    with pytest.raises(SimConfigError):
        parse_host("127.0.0.1:http")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300.0),
        ("30s", 30.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("300", 300.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("-1", None),
        ("-1s", None),
        ("-5m", None),
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "five", "5x", "m5", "5m3"])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(SimConfigError):
        parse_duration(bad)


def test_keep_alive_from_json() -> None:
    assert keep_alive_from_json(10) == 10.0
    assert keep_alive_from_json(-1) is None
    assert keep_alive_from_json("2m") == 120.0
    with pytest.raises(SimConfigError):
        keep_alive_from_json(True)


def test_config_from_env_reads_ollama_variables(tmp_path: Path) -> None:
    cfg = config_from_env(
        {
            "OLLAMA_HOST": ":12000",
            "OLLAMA_MODELS": str(tmp_path),
            "OLLAMA_NUM_PARALLEL": "4",
            "OLLAMA_MAX_LOADED_MODELS": "2",
            "OLLAMA_MAX_QUEUE": "7",
            "OLLAMA_KEEP_ALIVE": "30s",
            "OLLADIST_SIM_LOAD_GBPS": "2.5",
            "OLLADIST_SIM_TOKEN_RATE": "40",
            "OLLADIST_SIM_FAULTS": "slow=2,models=llama3",
        }
    )
    assert (cfg.host, cfg.port, cfg.models_dir) == ("127.0.0.1", 12000, tmp_path)
    assert (cfg.num_parallel, cfg.max_loaded_models, cfg.max_queue) == (4, 2, 7)
    assert cfg.keep_alive == 30.0
    assert cfg.load_seconds(5_000_000_000) == pytest.approx(2.0)
    assert cfg.token_rate == 40.0
    assert cfg.faults == Faults(slow=2.0, models=("llama3:latest",))


def test_config_defaults_follow_ollama() -> None:
    cfg = config_from_env({"OLLAMA_MAX_LOADED_MODELS": "0"})
    assert (cfg.host, cfg.port) == ("127.0.0.1", 11434)
    assert (cfg.num_parallel, cfg.max_loaded_models, cfg.max_queue) == (1, 3, 512)
    assert cfg.keep_alive == 300.0
    assert cfg.pull_seconds(5_000_000_000) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OLLAMA_NUM_PARALLEL": "two"}, "not an integer"),
        ({"OLLAMA_MAX_QUEUE": "-1"}, ">= 0"),
        ({"OLLADIST_SIM_TOKEN_RATE": "0"}, "> 0"),
        ({"OLLAMA_KEEP_ALIVE": "soon"}, "invalid duration"),
        ({"OLLADIST_SIM_FAULTS": "explode"}, "unknown fault"),
    ],
)
def test_config_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SimConfigError, match=message):
        config_from_env(env)


def test_faults_from_env_forms_agree() -> None:
    listed = parse_faults("hang,error_mid_stream=3,models=llama3.2:1b+qwen2.5:0.5b")
    as_json = parse_faults(
        '{"hang": true, "error_mid_stream": 3, "models": ["qwen2.5:0.5b", "llama3.2:1b"]}'
    )
    assert listed == as_json
    assert listed.applies_to("llama3.2:1b")
    assert not listed.applies_to("llama3.1:8b")
    assert listed.for_model("llama3.1:8b") == Faults()
    assert parse_faults("error_mid_stream").error_mid_stream == 2


@pytest.mark.parametrize(
    "bad",
    [{"hang": "yes"}, {"slow": 0}, {"error_mid_stream": -1}, {"models": "x"}, {"nope": 1}],
)
def test_fault_validation(bad: dict[str, object]) -> None:
    with pytest.raises(SimConfigError):
        faults_from_mapping(bad)


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:11434", True),
        ("localhost:11434", True),
        ("10.0.0.11:11434", True),
        ("[::1]:11434", True),
        ("0.0.0.0", True),
        ("gpu-a.local", True),
        ("node.internal:80", True),
        ("myhost", True),
        ("", True),
        ("gpu-a.example.com:11434", False),
        ("8.8.8.8", False),
        ("evil.com", False),
    ],
)
def test_host_header_rule(host: str, allowed: bool) -> None:
    assert host_allowed(host, hostname="myhost") is allowed


def test_registry_map_and_new_ollama_variables() -> None:
    cfg = config_from_env(
        {
            "OLLADIST_SIM_REGISTRY": "http://127.0.0.1:5000",
            "OLLAMA_CONTEXT_LENGTH": "8192",
            "OLLAMA_NOPRUNE": "true",
        }
    )
    assert cfg.registries == {"registry.ollama.ai": "http://127.0.0.1:5000"}
    assert (cfg.context_length, cfg.no_prune) == (8192, True)
    many = config_from_env(
        {
            "OLLADIST_SIM_REGISTRY": "registry.ollama.ai=http://127.0.0.1:1/, ex.com:5000=http://[::1]:2"
        }
    )
    assert many.registries == {
        "registry.ollama.ai": "http://127.0.0.1:1",
        "ex.com:5000": "http://[::1]:2",
    }
    # Ollama's envconfig.Bool: a value strconv.ParseBool rejects counts as true.
    assert config_from_env({"OLLAMA_NOPRUNE": "yes"}).no_prune
    assert not config_from_env({"OLLAMA_NOPRUNE": "0"}).no_prune
    assert not config_from_env({}).no_prune
    with pytest.raises(SimConfigError, match="OLLADIST_SIM_REGISTRY"):
        config_from_env({"OLLADIST_SIM_REGISTRY": "127.0.0.1:5000"})
