"""Talking to systemd: readiness, watchdog pings and status lines (sd_notify(3)'s protocol).

Written out rather than taken from a library: it is one datagram per message on the socket
named by ``NOTIFY_SOCKET``, and the daemon must do nothing at all when that is unset (run by
hand, by tests, under another supervisor).

The watchdog is pinged from the event loop itself, by a task: a loop stuck in a blocking
call or a busy handler misses its pings, and systemd restarts the service (``WatchdogSec=``).
A thread would go on pinging for a dead loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable

# Read once, then removed from the environment: the worker and the appender are started with
# this process's environment, and must neither notify (NotifyAccess=main would drop it and
# log) nor take the listening sockets as their own.
_TAKEN = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
          "LISTEN_FDNAMES")


class Notifier:
    """The daemon's line to systemd; every method is a no-op without ``NOTIFY_SOCKET``."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = dict(os.environ if environ is None else environ)
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog_interval(env)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """One notification (``READY=1``, ``STATUS=...``); False if it could not be sent.

        Never raises: a notify socket that went away must not take the daemon down with it."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(fields).encode("utf-8"), self.address)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def watchdog(self, status: Callable[[], Awaitable[str | None]]) -> None:
        """Ping at half the interval systemd asked for, with a fresh ``STATUS=`` line when
        ``status`` gives one; returns at once when no watchdog was asked for. Runs until
        cancelled."""
        if self.watchdog_interval is None or self.address is None:
            return
        while True:
            line: str | None = None
            with contextlib.suppress(Exception):  # a status that fails must not stop the pings
                line = await status()
            self.send("WATCHDOG=1", *([f"STATUS={line}"] if line else []))
            await asyncio.sleep(self.watchdog_interval / 2)


def take_environment() -> Notifier:
    """The notifier for this process; the variables systemd set are then removed from
    ``os.environ`` (sd_notify's ``unset_environment``), after the caller has read the
    listening sockets (``serve.inherited_sockets`` reads LISTEN_FDS first)."""
    notifier = Notifier()
    for name in _TAKEN:
        os.environ.pop(name, None)
    return notifier


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):  # the abstract namespace
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock and other forms: not ours to speak


def _watchdog_interval(env: dict[str, str]) -> float | None:
    """Seconds, when systemd asked this very process for pings (``WATCHDOG_PID``, when set,
    names it)."""
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None
