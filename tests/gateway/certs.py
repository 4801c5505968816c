"""A throwaway CA and node certificates made with the openssl command, for TLS tests."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _run(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(d: Path) -> tuple[Path, Path]:
    key, crt = d / "ca.key", d / "ca.pem"
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=olladist-test-ca", "-keyout", str(key), "-out", str(crt))  # fmt: skip
    return key, crt


def make_node_cert(d: Path, name: str, ca_key: Path, ca_crt: Path) -> Path:
    """A PEM holding the node's certificate and key, as HAProxy's `crt` wants it."""
    key, csr, crt = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt"
    _run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
         "-keyout", str(key), "-out", str(csr))  # fmt: skip
    _run("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "2", "-out", str(crt))  # fmt: skip
    pem = d / f"{name}.pem"
    pem.write_text(crt.read_text() + key.read_text())
    return pem
