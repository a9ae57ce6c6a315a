"""A real sd_notify socket, as systemd holds one for a Type=notify service: each datagram is
kept with the sender's pid (SCM_CREDENTIALS, as systemd checks NotifyAccess=main) and the
time it arrived."""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Notification:
    pid: int
    at: float
    fields: dict[str, str]


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.received: list[Notification] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        space = socket.CMSG_SPACE(struct.calcsize("3i"))
        while not self._closed:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, space)
            except TimeoutError:
                continue
            except OSError:
                return
            pid = -1
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:12])[0]
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            with self._cond:
                self.received.append(Notification(pid, time.time(), fields))
                self._cond.notify_all()

    def wait_for(self, key: str, value: str | None = None, count: int = 1,
                 timeout: float = 20.0) -> list[Notification]:
        """The first ``count`` notifications carrying ``key`` (= ``value`` when given)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [n for n in self.received
                         if key in n.fields and (value is None or n.fields[key] == value)]
                if len(found) >= count:
                    return found[:count]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"saw {len(found)} of {count} {key}= notifications; "
                                         f"all: {[n.fields for n in self.received]}")
                self._cond.wait(min(left, 0.5))

    def close(self) -> None:
        self._closed = True
        self.sock.close()
        self._thread.join(2)
