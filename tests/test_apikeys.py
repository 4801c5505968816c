"""The API keys file format and ``olladist key add|check|list`` (olladist/apikeys.py)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from olladist.apikeys import ApiKey, KeyClass, KeysFileError, digest_of, parse_keys
from olladist.layout import Layout
from olladist.peers import Credentials
from olladist.placement import place
from olladist.reconcile import Desired
from olladist.specload import load_spec
from olladist.statusd import scrub, secrets_of
from tests.conftest import EXAMPLE_SPEC, olladist_cmd

D1 = hashlib.sha256(b"one").hexdigest()
D2 = hashlib.sha256(b"two").hexdigest()


def test_the_old_format_one_digest_a_line_stays_valid() -> None:
    keys = parse_keys(f"# comment\n\n{D1}\n  {D2}  \n", "keys")
    assert keys == (ApiKey(D1), ApiKey(D2))


def test_settings_after_the_digest() -> None:
    text = f"{D1} name=chat weight=4 class=high max_concurrent=8 requests_per_minute=600\n"
    (key,) = parse_keys(text, "keys")
    assert key == ApiKey(D1, "chat", 4, KeyClass.HIGH, 8, 600)
    assert key.line() == text
    (lifted,) = parse_keys(f"{D2} max_concurrent=none\n", "keys")
    assert lifted.max_concurrent == 0  # no limit for this key, whatever the spec's default
    assert lifted.line() == f"{D2} max_concurrent=none\n"


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("sk-a-real-key", "is not a SHA-256 digest"),
        (D1.upper(), "lowercase hex"),
        (f"{D1} weight=1001", "weight must be a whole number from 1 to 1000"),
        (f"{D1} weight=2.5", "weight must be"),
        (f"{D1} class=vip", "class must be high, normal or low"),
        (f"{D1} rpm=5", "unknown setting 'rpm=5'"),
        (f"{D1} weight", "unknown setting 'weight'"),
        (f"{D1} name=a name=b", "name is set twice"),
        (f"{D1} requests_per_minute=0", "requests_per_minute must be"),
    ],
)
def test_a_bad_line_is_named_by_file_and_line(line: str, why: str) -> None:
    with pytest.raises(KeysFileError) as err:
        parse_keys(f"# keys\n{D2}\n{line}\n", "/etc/olladist/api-keys")
    assert err.value.message.startswith("/etc/olladist/api-keys:3: ")
    assert why in err.value.message
    assert err.value.hint and "docs/security.md" in err.value.hint


def test_a_digest_twice_is_refused() -> None:
    with pytest.raises(KeysFileError, match=r"keys:3: this digest is already on line 1"):
        parse_keys(f"{D1}\n{D2}\n{D1} weight=2\n", "keys")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*olladist_cmd(), *args], capture_output=True, text=True, check=False)


def test_key_add_prints_the_key_once_and_stores_only_its_digest(tmp_path: Path) -> None:
    path = tmp_path / "api-keys"
    path.write_text(f"# ours\n{D1}\n")
    r = run("key", "add", "--file", str(path), "--name", "batch", "--weight", "2",
            "--requests-per-minute", "60")  # fmt: skip
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert len(key) > 40 and "\n" not in key
    text = path.read_text()
    assert key not in text
    assert text == f"# ours\n{D1}\n{digest_of(key)} name=batch weight=2 requests_per_minute=60\n"
    assert path.stat().st_mode & 0o777 == 0o640
    assert "reload" in r.stderr
    r = run("key", "check", "--file", str(path))
    assert r.returncode == 0
    assert "2 keys, 1 with their own limits; valid" in r.stdout
    r = run("key", "list", "--file", str(path))
    assert digest_of(key) not in r.stdout
    assert f"{digest_of(key)[:12]}... name=batch" in r.stdout


def test_key_add_refuses_to_grow_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "api-keys"
    path.write_text(f"{D1} weight=heavy\n")
    r = run("key", "add", "--file", str(path))
    assert r.returncode == 2
    assert f"error: {path}:1: not a valid API key line: weight must be" in r.stderr
    assert path.read_text() == f"{D1} weight=heavy\n"
    r = run("key", "check", "--file", str(path))
    assert r.returncode == 2
    assert f"{path}:1:" in r.stderr


def test_key_add_refuses_a_bad_setting(tmp_path: Path) -> None:
    r = run("key", "add", "--file", str(tmp_path / "k"), "--max-concurrent", "lots")
    assert r.returncode == 2
    assert "max_concurrent must be" in r.stderr
    assert not (tmp_path / "k").exists()


def test_the_status_server_scrubs_digests_of_lines_with_settings(tmp_path: Path) -> None:
    """The status pages hide every key digest, also when its line carries settings."""
    spec = load_spec(EXAMPLE_SPEC)
    spec = spec.model_copy(
        update={"gateway": spec.gateway.model_copy(update={"api_keys_file": "/etc/keys"})}
    )
    layout = Layout(tmp_path)
    layout.real("/etc/keys").parent.mkdir(parents=True, exist_ok=True)
    layout.real("/etc/keys").write_text(f"# keys\n{D1} name=a weight=2\n{D2}\n")
    desired = Desired("", spec, spec.nodes[0].name, place(spec), {})
    found = secrets_of(layout, Credentials(), desired)
    assert D1 in found and D2 in found
    assert scrub(f"x {D1} y {D2}", found) == "x [redacted] y [redacted]"
