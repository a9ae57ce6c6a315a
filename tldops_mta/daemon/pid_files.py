"""The daemon's pid file: written whole at start, read by the CLI to find and wake it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

PID_FILE = "tldops.pid"


def write(state_dir: Path) -> Path:
    """state/tldops.pid, written whole, so the CLI can wake the daemon (SIGUSR1)."""
    path = state_dir / PID_FILE
    tmp = path.with_suffix(".pid.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)
    return path


def running(state_dir: Path) -> int | None:
    """The pid of the daemon serving ``state_dir``, or None. A stale pid file naming another
    process (pids are reused) does not count: the process must be a ``tldops serve``."""
    try:
        pid = int((state_dir / PID_FILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if b"tldops_mta" not in b" ".join(cmdline) and not any(a.endswith(b"tldops") for a in cmdline):
        return None
    return pid if b"serve" in cmdline else None


def wake(state_dir: Path) -> bool:
    """Tell a running daemon that the CLI queued work (SIGUSR1 only to a daemon of ours: to
    another process it would be fatal)."""
    pid = running(state_dir)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError:
        return False
    return True
