from tests.harness.fixtures import sandbox_available, systemd_sandbox

__all__ = ["sandbox_available", "systemd_sandbox"]
