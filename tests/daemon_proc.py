"""Run the real daemon as a subprocess, and wait on its JSON log lines (not on sleeps)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DOMAIN = "tld-ops.localhost"


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def write_config(path: Path, values: dict[str, Any]) -> Path:
    sections: dict[str, dict[str, Any]] = {}
    for dotted, v in values.items():
        section, key = dotted.split(".", 1)
        sections.setdefault(section, {})[key] = v
    lines = []
    for section, body in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in body.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


SHIPPED_RULES = Path(__file__).resolve().parent.parent / "rules"


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (children's children too), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class DaemonProc:
    """A running ``tldops serve`` with its log lines collected as they arrive."""

    def __init__(self, workdir: Path, settings: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None, wrapper: list[str] | None = None,
                 command: list[str] | None = None, cwd: Path | None = None) -> None:
        """``settings`` are dotted configuration keys (None leaves a key at its default);
        ``command`` is the tldops command to run (default: this Python's ``-m tldops_mta``),
        ``cwd`` its working directory (default ``workdir``, where its configuration is)."""
        self.workdir = workdir
        self.wrapper = wrapper or []
        """Run the daemon under this (systemd-socket-activate ...), which execs it."""
        self.command = command or [sys.executable, "-m", "tldops_mta"]
        self.cwd = cwd or workdir
        base = {
            "server.listen": ["127.0.0.1:0"],
            "storage.state_dir": str(workdir / "state"),
            "rules.dir": str(workdir / "rules"),
            "log.level": "debug",
            # The broadcast has its own tests; elsewhere its calendar (the real clock) must
            # not add mail to what a test counts.
            "broadcast.enabled": False,
            # Likewise the yearly re-confirmation (its tests turn it on): a roster a test writes
            # with an old "since" must not get asks that other tests would count.
            "freshness.enabled": False,
            # Never leave loopback: DNS and IANA point at a closed local port unless a test
            # starts real servers for them (port 9, discard, is closed here: refused at once).
            "dns.nameservers": ["127.0.0.1"],
            "dns.port": 9,
            "dns.timeout": 1.0,
            "iana.rdap_url": "http://127.0.0.1:9/",
            "iana.whois_host": "127.0.0.1",
            "iana.whois_port": 9,
            "iana.timeout": 1.0,
            # Tests run daemons side by side: each endpoint on a port of its own.
            "metrics.listen": "127.0.0.1:0",
        }
        base.update(settings or {})
        base = {k: v for k, v in base.items() if v is not None}
        if base.get("rules.dir") == str(workdir / "rules"):
            # The operator's rules directory, empty: the shipped rules apply until a test puts
            # a file there (it then replaces the shipped one of that name) and sends SIGHUP.
            (workdir / "rules").mkdir(parents=True, exist_ok=True)
        self.settings = base
        self.state_dir = self.cwd / str(base.get("storage.state_dir", "state"))
        self.config_path = write_config(workdir / "tldops.toml", base)
        self.env = env
        self.lines: list[dict[str, Any]] = []
        self.raw_lines: list[str] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen[bytes] | None = None
        self._pump_thread: threading.Thread | None = None
        self.addresses: list[str] = []

    # -- life --------------------------------------------------------------------------

    def start(self, timeout: float = 15.0, wait_ready: bool = True) -> DaemonProc:
        """Start it; with ``wait_ready`` (default) return once it logged 'ready'."""
        with self._cond:
            self.lines.clear()
        env = dict(os.environ)
        env.update(self.env or {})
        self.proc = subprocess.Popen(
            [*self.wrapper, *self.command, "serve", "--config", str(self.config_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=self.cwd, env=env)
        self._pump_thread = threading.Thread(target=self._pump, args=(self.proc,), daemon=True)
        self._pump_thread.start()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        self.addresses = self.wait_for("ready", timeout=timeout)["listening"]

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                rec = json.loads(text)
            except ValueError:
                rec = {"event": "<non-json>", "text": text}
            with self._cond:
                self.raw_lines.append(text)
                self.lines.append(rec)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def kill_all(self, timeout: float = 10.0) -> list[int]:
        """SIGKILL the daemon and every process under it at the same instant (as systemd
        does to the service's cgroup), and return once all are gone; their pids."""
        assert self.proc is not None
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        fds = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                fds.append(os.pidfd_open(pid))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout)
        deadline = time.monotonic() + timeout
        try:
            for fd in fds:  # a pidfd turns readable when its process has exited
                if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    raise AssertionError(f"a process of the daemon outlived SIGKILL: {pids}")
        finally:
            for fd in fds:
                os.close(fd)
        return pids

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- addresses ---------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self.addresses[0].rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.addresses[0].rsplit(":", 1)[1])

    # -- logs --------------------------------------------------------------------------

    def wait_for(self, event: str, where: Callable[[dict[str, Any]], bool] | None = None,
                 timeout: float = 15.0, after: int = 0) -> dict[str, Any]:
        """The first log record named ``event`` (at index >= after) matching ``where``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for rec in self.lines[after:]:
                    if rec.get("event") == event and (where is None or where(rec)):
                        return rec
                left = deadline - time.monotonic()
                exited = self.proc is not None and self.proc.poll() is not None
                if left <= 0 or exited:
                    tail = "\n".join(self.raw_lines[-30:])
                    why = "daemon exited" if exited else "timeout"
                    raise AssertionError(f"{why} waiting for log event {event!r}; log tail:\n{tail}")
                self._cond.wait(min(left, 0.5))

    def wait_count(self, event: str, n: int, timeout: float = 15.0,
                   where: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        """Wait until ``event`` was logged at least ``n`` times (matching ``where``); those records."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [r for r in self.lines if r.get("event") == event and (where is None or where(r))]
                if len(found) >= n:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None):
                    raise AssertionError(f"saw {len(found)} of {n} {event!r} events")
                self._cond.wait(min(left, 0.5))

    def worker_ready(self, slot: int = 0, n: int = 1, timeout: float = 15.0) -> dict[str, Any]:
        """The ``n``th 'worker ready' of worker slot ``slot`` (slot 0 owns the outbox and the
        clocks; every slot takes spooled mail), waiting for it."""
        return self.wait_count("worker ready", n, timeout, where=lambda r: r.get("slot") == slot)[n - 1]

    def worker_pids(self) -> list[int]:
        """The worker processes running now, by /proc (the daemon's children that run
        ``tldops worker``), slot 0 first."""
        assert self.proc is not None
        found: list[tuple[int, int]] = []
        for pid in descendants(self.proc.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"worker" in argv and b"--slot" in argv:
                found.append((int(argv[argv.index(b"--slot") + 1]), pid))
        return [pid for _, pid in sorted(found)]

    def pause_workers(self, pids: list[int] | None = None) -> list[int]:
        """SIGSTOP the worker processes (all, or ``pids``) at a moment when none of them holds
        the database's write lock: one stopped inside a transaction would keep intake from
        storing mail. Their pids; ``resume_workers`` lets them go together."""
        pids = self.worker_pids() if pids is None else pids
        while True:
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            conn = sqlite3.connect(self.db_path, timeout=0, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
                return pids
            except sqlite3.OperationalError:  # caught mid-commit: let it finish, try again
                self.resume_workers(pids)
            finally:
                conn.close()

    @staticmethod
    def resume_workers(pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def output(self) -> list[str]:
        """Every line it wrote, over all its starts; all of them once it has exited (the
        pipe is then read to its end)."""
        if self._pump_thread is not None and self.proc is not None and self.proc.poll() is not None:
            self._pump_thread.join(10)
        with self._cond:
            return list(self.raw_lines)

    def events(self, event: str) -> list[dict[str, Any]]:
        with self._cond:
            return [r for r in self.lines if r.get("event") == event]

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def wait_processed(self, queue_id: str, timeout: float = 15.0) -> dict[str, Any]:
        return self.wait_for("message processed", lambda r: r.get("queue_id") == queue_id,
                             timeout=timeout)

    # -- database ----------------------------------------------------------------------

    @property
    def db_path(self) -> Path:
        return self.state_dir / "tldops.sqlite3"

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db_path, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """A change to the database, committed (as another process would make it); rows changed."""
        conn = sqlite3.connect(self.db_path, timeout=10, isolation_level=None)
        try:
            return conn.execute(sql, params).rowcount
        finally:
            conn.close()

    def connect(self, timeout: float = 10.0) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect((self.host, self.port))
        return s
