"""``tldops serve``: wires storage, the SMTP front and the worker onto one event loop.

Start: open and migrate the database, requeue interrupted work, start the writer and the
worker, then listen (systemd sockets or our own). Logs one ``ready`` line with the real
addresses (port 0 becomes the port the kernel gave), which is what tests and operators wait
for. SIGTERM/SIGINT: stop accepting, let DATA finish, stop the worker, commit, close, exit
0. SIGHUP: re-read the configuration and rules/, keeping the old ones if the new are bad.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import config as config_mod
from . import logs, rules, spool, storage
from .smtp_server import Runtime

SD_LISTEN_FDS_START = 3


def inherited_sockets() -> list[socket.socket]:
    """Listening sockets passed by systemd (LISTEN_FDS), or none."""
    if os.environ.get("LISTEN_PID") not in (None, str(os.getpid())):
        return []
    n = int(os.environ.get("LISTEN_FDS", "0") or 0)
    return [socket.socket(fileno=SD_LISTEN_FDS_START + i) for i in range(n)]


class WorkerProcess:
    """Starts ``tldops worker`` beside the SMTP process and keeps it running.

    The wake pipe carries a byte when mail was spooled, at most one per ``gap`` seconds (the
    worker's linger: it waits that long for a batch to fill anyway), so that a burst of
    mail wakes the worker process a few times a second rather than once per commit. A worker
    that exits on its own is restarted after a short pause, logged at error level:
    processing must not stop while mail is being accepted.
    """

    RESTART_PAUSE = 1.0

    def __init__(self, config_path: Path | None, overrides: Mapping[str, Any],
                 gap: float = 0.0) -> None:
        self.config_path = config_path
        self.gap = gap
        self.overrides = dict(overrides)
        self.log = logs.get("daemon")
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self.proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake_pending = False
        self._woken_at = 0.0
        self.restarts = 0

    def argv(self) -> list[str]:
        args = [sys.executable, "-m", "tldops_mta", "worker", "--wake-fd", str(self._read_fd)]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        if "storage.state_dir" in self.overrides:
            args += ["--state-dir", str(self.overrides["storage.state_dir"])]
        if "server.domain" in self.overrides:
            args += ["--domain", str(self.overrides["server.domain"])]
        return args

    async def start(self) -> None:
        self._task = asyncio.create_task(self._keep_running(), name="worker-process")

    async def _keep_running(self) -> None:
        while not self._stopping:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv(), pass_fds=(self._read_fd,), stdin=asyncio.subprocess.DEVNULL)
            code = await self.proc.wait()
            if self._stopping:
                return
            self.restarts += 1
            self.log.error("worker process exited, restarting", exit_code=code, restarts=self.restarts)
            await asyncio.sleep(self.RESTART_PAUSE)

    def wake(self) -> None:
        """One byte at the end of this turn of the event loop, or ``gap`` after the last."""
        if not self._wake_pending:
            self._wake_pending = True
            loop = asyncio.get_running_loop()
            loop.call_at(max(loop.time(), self._woken_at + self.gap), self._send_wake)

    def _send_wake(self) -> None:
        self._wake_pending = False
        self._woken_at = asyncio.get_running_loop().time()
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write_fd, b"\0")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)

    STOP_WAIT = 30.0

    async def stop(self) -> int | None:
        """SIGTERM, then wait (the worker finishes its batch); SIGKILL past STOP_WAIT."""
        self._stopping = True
        code = None
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                code = await asyncio.wait_for(self.proc.wait(), self.STOP_WAIT)
            except TimeoutError:
                self.log.error("worker process did not stop, killing it")
                self.proc.kill()
                code = await self.proc.wait()
        if self._task is not None:
            await self._task
        os.close(self._write_fd)
        os.close(self._read_fd)
        return code


class Daemon:
    def __init__(self, config_path: Path | None, overrides: Mapping[str, Any]) -> None:
        self.config_path = config_path
        self.overrides = dict(overrides)
        self.cfg = config_mod.load(config_path, self.overrides)
        self.rules = rules.load(self.cfg.rules_dir)
        self.log = logs.get("daemon")
        self._stop = asyncio.Event()

    async def run(self) -> int:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        conn = storage.connect(cfg.database_path, busy_timeout_ms=cfg["storage.busy_timeout_ms"],
                               max_size_mb=cfg["storage.max_size_mb"])
        applied = storage.migrate(conn)
        writer = storage.Writer(conn, max_batch=cfg["storage.group_commit_max"])
        writer.start()
        requeued = await writer.run(spool.requeue_interrupted)
        worker = WorkerProcess(self.config_path, self.overrides, gap=cfg["worker.linger"])
        rt = Runtime(cfg, writer, on_spooled=worker.wake)

        servers = []
        factory = rt.protocol_factory()
        inherited = inherited_sockets()
        if inherited:
            for sock in inherited:
                servers.append(await loop.create_server(factory, sock=sock))
        else:
            for spec in cfg["server.listen"]:
                host, port = config_mod.parse_listen(spec)
                servers.append(await loop.create_server(factory, host, port, reuse_address=True))
        listening = [_fmt(s.getsockname()) for srv in servers for s in srv.sockets]
        await worker.start()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.reload(rt, worker))
        self.log.info("ready", listening=listening, database=str(cfg.database_path),
                      migrations_applied=applied, requeued=requeued, domain=cfg["server.domain"],
                      pid=os.getpid(), systemd_sockets=bool(inherited))

        await self._stop.wait()
        self.log.info("stopping", open_sessions=len(rt.sessions))
        for srv in servers:
            srv.close()
        await rt.shutdown(rt.cfg["server.shutdown_grace"])
        worker_exit = await worker.stop()
        await writer.close()
        self.log.info("stopped", commits=writer.batches, writes=writer.jobs, worker_exit=worker_exit)
        return 0

    def reload(self, rt: Runtime, worker: WorkerProcess) -> None:
        try:
            cfg = config_mod.load(self.config_path, self.overrides)
            new_rules = rules.load(cfg.rules_dir)
        except (config_mod.ConfigError, rules.RulesError) as e:
            self.log.error("reload refused, keeping the running configuration",
                           problems=getattr(e, "problems", [str(e)]).__str__())
            return
        changed = [k for k, v in cfg.as_dict().items() if v != self.cfg.as_dict()[k]]
        if cfg["server.listen"] != self.cfg["server.listen"]:
            self.log.warning("listen addresses change only on restart")
        self.cfg, self.rules = cfg, new_rules
        rt.reconfigure(cfg)
        worker.gap = cfg["worker.linger"]
        worker.signal(signal.SIGHUP)
        self.log.info("reloaded", changed_sections=changed, rules=sorted(new_rules))


def _fmt(addr: Any) -> str:
    if isinstance(addr, tuple) and ":" in str(addr[0]):
        return f"[{addr[0]}]:{addr[1]}"
    if isinstance(addr, tuple):
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


def serve(config_path: Path | None, overrides: Mapping[str, Any]) -> int:
    """Run until SIGTERM; the exit code."""
    daemon = Daemon(config_path, overrides)
    logs.setup(daemon.cfg["log.level"])
    return asyncio.run(daemon.run())
