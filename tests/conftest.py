from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_proc import DaemonProc

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
