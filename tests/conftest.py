from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_proc import DOMAIN, DaemonProc

pytest_plugins = ["dns_server"]


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProc]]:
    """Start the real daemon with settings (dotted config keys); stopped after the test."""
    started: list[DaemonProc] = []

    def start(settings: dict[str, Any] | None = None, **kw: Any) -> DaemonProc:
        workdir = tmp_path / f"d{len(started)}"
        workdir.mkdir()
        d = DaemonProc(workdir, settings, **kw).start()
        started.append(d)
        return d

    yield start
    for d in started:
        if d.alive:
            d.kill()


@pytest.fixture
def daemon(start_daemon: Callable[..., DaemonProc]) -> DaemonProc:
    return start_daemon()


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for the domain and the loopback addresses."""
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command is needed to make a test certificate"
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2",
         "-subj", f"/CN={DOMAIN}",
         "-addext", f"subjectAltName=DNS:{DOMAIN},IP:127.0.0.1,IP:::1"],
        check=True, capture_output=True)
    return crt, key
