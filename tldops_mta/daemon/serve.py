"""``tldops serve``: wires storage, the SMTP front and the worker onto one event loop.

Start: open and migrate the database, requeue interrupted work, start the spool appender and
the worker (children), then listen (systemd sockets or our own). Logs one ``ready`` line with the real
addresses (port 0 becomes the port the kernel gave), which is what tests and operators wait
for, and tells systemd READY=1 at the same moment (Type=notify), then pings its watchdog from
the event loop with a STATUS= line of the queue depths. SIGTERM/SIGINT: stop accepting, let
DATA finish, stop the worker, let the appender commit what it has, exit 0. SIGHUP: re-read the
configuration and rules/, keeping the old ones if the new are bad.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tldops_mta import logs, metrics
from tldops_mta.daemon import health, pid_files
from tldops_mta.daemon.children import AppenderProcess, Workers, worker_processes
from tldops_mta.daemon.systemd_notify import Notifier, take_environment
from tldops_mta.intake.smtp_server import Runtime
from tldops_mta.ops import config_files
from tldops_mta.roster import mailman
from tldops_mta.settings import config as config_mod
from tldops_mta.settings import policy_files
from tldops_mta.store import private_state, spool, storage
from tldops_mta.worker import work_due

SD_LISTEN_FDS_START = 3


def inherited_sockets() -> list[socket.socket]:
    """Listening sockets passed by systemd (LISTEN_FDS), or none."""
    if os.environ.get("LISTEN_PID") not in (None, str(os.getpid())):
        return []
    n = int(os.environ.get("LISTEN_FDS", "0") or 0)
    return [socket.socket(fileno=SD_LISTEN_FDS_START + i) for i in range(n)]


class Daemon:
    def __init__(self, config_path: Path | None, overrides: Mapping[str, object]) -> None:
        self.config_path = config_path
        self.overrides = dict(overrides)
        self.cfg = config_mod.load(config_path, self.overrides)
        files = config_files.problems(self.cfg)
        if files:
            raise config_mod.ConfigError(files)  # before anything starts
        self.rules = policy_files.load(self.cfg.rules_dir)  # a rules.dir that cannot be read: no start
        self.rule_sources = policy_files.sources(self.cfg.rules_dir)
        self.log = logs.get("daemon")
        self._stop = asyncio.Event()
        self.inherited = inherited_sockets()
        self.notifier: Notifier = take_environment()
        if self.cfg.metrics.listen:
            metrics.prepare_directory(self.cfg.state_dir)  # before any child starts

    async def run(self) -> int:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        tightened = private_state.secure(cfg.state_dir, cfg.database_path)
        if tightened:
            self.log.warning("permissions tightened", count=len(tightened),
                             tightened=[t.as_dict() for t in tightened[:private_state.SHOWN]])
        conn = storage.connect(cfg.database_path, busy_timeout_ms=cfg.storage.busy_timeout_ms,
                               max_size_mb=cfg.storage.max_size_mb)
        try:
            applied = storage.migrate(conn)
            requeued = storage.commit_one(conn, spool.requeue_interrupted)
            storage.commit_one(conn, lambda c: mailman.arm(c, cfg, time.time()))  # before any roster change
        except BaseException:
            conn.close()
            raise
        # ``conn`` stays open to ask when work is due (children.WorkerProcess): a short read
        # now and then, while no worker runs.
        appender = AppenderProcess(cfg)
        await appender.start()
        worker = Workers(worker_processes(cfg.worker.processes), self.config_path, self.overrides,
                         gap=cfg.worker.linger, next_work_at=lambda: work_due.next_work_at(conn, rt.cfg),
                         next_spool_at=lambda: spool.next_due_at(conn), max_idle=cfg.worker.max_idle)
        rt = Runtime(cfg, appender.append, on_spooled=worker.wake)

        servers = []
        factory = rt.protocol_factory()
        inherited = self.inherited
        if inherited:
            for sock in inherited:
                servers.append(await loop.create_server(factory, sock=sock))
        else:
            for spec in cfg.server.listen:
                host, port = config_mod.parse_listen(spec)
                servers.append(await loop.create_server(factory, host, port, reuse_address=True))
        listening = [_fmt(s.getsockname()) for srv in servers for s in srv.sockets]
        metrics_server, metrics_at = self.start_metrics(rt)
        # Under systemd, READY=1 means the worker runs too: start slot 0 now, even with
        # nothing to do (it exits after worker.max_idle as usual). Run by hand, and the other
        # slots always, they start on demand.
        await worker.start(owner_at_once=self.notifier.enabled)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.reload(rt, worker, appender))
        # SIGUSR1: the CLI queued work (a decision, a broadcast): the workers go at it now
        # instead of at their next look at the database.
        loop.add_signal_handler(signal.SIGUSR1, worker.wake)
        pid_file = pid_files.write(cfg.state_dir)
        self.log.info("ready", listening=listening, database=str(cfg.database_path),
                      migrations_applied=applied, requeued=requeued, domain=cfg.server.domain,
                      pid=os.getpid(), systemd_sockets=bool(inherited), metrics=metrics_at,
                      rules=self.rule_sources, worker_processes=len(worker.slots))
        if self.notifier.enabled:
            # A worker that keeps failing: systemd's start timeout. SIGTERM still stops us.
            waits = [asyncio.create_task(e.wait()) for e in (worker.ready, self._stop)]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for t in waits:
                t.cancel()
        first = await self.status_line()
        self.notifier.send("READY=1", f"MAINPID={os.getpid()}", *([f"STATUS={first}"] if first else []))
        watchdog = asyncio.create_task(self.notifier.watchdog(self.status_line), name="watchdog")

        await self._stop.wait()
        self.notifier.send("STOPPING=1", "STATUS=stopping: finishing sessions in DATA")
        watchdog.cancel()
        self.log.info("stopping", open_sessions=len(rt.sessions))
        for srv in servers:
            srv.close()
        await rt.shutdown(rt.cfg.server.shutdown_grace)
        if metrics_server is not None:
            await asyncio.to_thread(metrics_server.shutdown)
        worker_exit = await worker.stop()  # one exit code per slot
        appender_exit = await appender.stop()
        conn.close()
        with contextlib.suppress(OSError):
            pid_file.unlink()
        self.log.info("stopped", worker_exit=worker_exit, appender_exit=appender_exit)
        self.notifier.close()
        return 0

    def start_metrics(self, rt: Runtime) -> tuple[Any, str | None]:
        """The Prometheus endpoint, or (None, None) when configured off or its port is taken
        (logged: mail intake matters more than its figures)."""
        spec = self.cfg.metrics.listen
        if not spec:
            return None, None
        host, port = config_mod.parse_listen(spec)
        path = self.cfg.database_path

        def health_view() -> health.Health:
            conn = storage.connect(path, busy_timeout_ms=1000)
            try:
                return health.read(conn)
            finally:
                conn.close()

        try:
            server, bound = metrics.serve(host, port, rt.counts, health_view, lambda: len(rt.sessions))
        except OSError as e:
            self.log.error("metrics endpoint not started", listen=spec, error=str(e))
            return None, None
        return server, _fmt((host, bound))

    async def status_line(self) -> str | None:
        """The health in one line, read in a thread on a connection of its own (the counts
        must not hold the event loop); None when the database cannot tell."""
        if not self.notifier.enabled:
            return None
        path = self.cfg.database_path

        def read() -> str:
            conn = storage.connect(path, busy_timeout_ms=1000)
            try:
                return health.read(conn).status_line()
            finally:
                conn.close()

        try:
            return await asyncio.to_thread(read)
        except Exception as e:  # the pings go on; the line says why it is missing
            return f"status unavailable: {type(e).__name__}"

    def reload(self, rt: Runtime, worker: Workers, appender: AppenderProcess) -> None:
        self.notifier.send("RELOADING=1")
        try:
            self._reload(rt, worker, appender)
        finally:
            self.notifier.send("READY=1")

    def _reload(self, rt: Runtime, worker: Workers, appender: AppenderProcess) -> None:
        try:
            cfg = config_mod.load(self.config_path, self.overrides)
            files = config_files.problems(cfg)
            if files:
                raise config_mod.ConfigError(files)
            new_rules = policy_files.load(cfg.rules_dir)
            new_sources = policy_files.sources(cfg.rules_dir)
        except (config_mod.ConfigError, policy_files.RulesError) as e:
            self.log.error("reload refused, keeping the running configuration",
                           problems=str(e))  # each problem in words, "; " between
            return
        changed = [k for k, v in cfg.as_dict().items() if v != self.cfg.as_dict()[k]]
        if cfg.server.listen != self.cfg.server.listen:
            self.log.warning("listen addresses change only on restart")
        self.cfg, self.rules, self.rule_sources = cfg, new_rules, new_sources
        rt.reconfigure(cfg)
        worker.configure(cfg.worker.linger, cfg.worker.max_idle)  # worker.processes: at restart
        appender.cfg = cfg  # commit_timeout now; its storage settings at its next start
        worker.signal(signal.SIGHUP)
        self.log.info("reloaded", changed_sections=changed, rules=new_sources)


def _fmt(addr: Any) -> str:
    if isinstance(addr, tuple) and ":" in str(addr[0]):
        return f"[{addr[0]}]:{addr[1]}"
    if isinstance(addr, tuple):
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


def serve(config_path: Path | None, overrides: Mapping[str, object]) -> int:
    """Run until SIGTERM; the exit code."""
    daemon = Daemon(config_path, overrides)
    logs.setup(daemon.cfg.log.level)
    return asyncio.run(daemon.run())
