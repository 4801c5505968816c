from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from olladist.names import InvalidModelName, normalize_model, parse_model_name, same_model


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("llama3", "llama3:latest"),
        ("llama3:latest", "llama3:latest"),
        ("registry.ollama.ai/library/llama3:latest", "llama3:latest"),
        ("library/llama3", "llama3:latest"),
        ("LLama3:8B", "llama3:8b"),
        ("  llama3.1:8b  ", "llama3.1:8b"),
        ("jmorgan/mario", "jmorgan/mario:latest"),
        ("registry.ollama.ai/jmorgan/mario:v2", "jmorgan/mario:v2"),
        ("example.com:5000/team/model:q4", "example.com:5000/team/model:q4"),
        ("example.com/library/llama3", "example.com/library/llama3:latest"),
        ("https://registry.ollama.ai/library/llama3", "llama3:latest"),
        ("qwen2.5:0.5b", "qwen2.5:0.5b"),
        ("llama3@sha256:" + "a" * 64, "llama3:latest"),
        ("hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M", "hf.co/bartowski/llama-3.2-1b-gguf:q4_k_m"),
    ],
)
def test_normalize(given: str, canonical: str) -> None:
    assert normalize_model(given) == canonical


@pytest.mark.parametrize(
    "bad",
    ["", ":latest", "a/b/c/d", "-model", "model:", "mo del", "model@sha256:zz", "/model"],
)
def test_invalid_names_are_refused(bad: str) -> None:
    with pytest.raises(InvalidModelName):
        normalize_model(bad)


def test_same_model_and_full_form() -> None:
    assert same_model("llama3", "registry.ollama.ai/library/llama3:latest")
    assert not same_model("llama3", "llama3:8b")
    name = parse_model_name("http://localhost:5000/me/m:t")
    assert name.insecure_scheme
    assert name.full == "localhost:5000/me/m:t"
    assert name.path_parts == ("localhost:5000", "me", "m", "t")


_part = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True)
_tag = st.from_regex(r"[a-z0-9_][a-z0-9_.-]{0,20}", fullmatch=True)


@given(
    host=st.one_of(
        st.none(), st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}(:[0-9]{2,5})?", fullmatch=True)
    ),
    namespace=st.one_of(st.none(), _part),
    model=_part,
    tag=st.one_of(st.none(), _tag),
)
def test_normal_form_is_a_fixed_point(
    host: str | None, namespace: str | None, model: str, tag: str | None
) -> None:
    name = model
    if namespace is not None or host is not None:
        name = f"{namespace or 'library'}/{name}"
    if host is not None:
        name = f"{host}/{name}"
    if tag is not None:
        name = f"{name}:{tag}"
    short = normalize_model(name)
    assert normalize_model(short) == short
    assert normalize_model(parse_model_name(name).full) == short
    assert short.endswith(":" + (tag or "latest"))
