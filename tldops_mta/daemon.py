"""``tldops serve``: wires storage, the SMTP front and the worker onto one event loop.

Start: open and migrate the database, requeue interrupted work, start the writer and the
worker, then listen (systemd sockets or our own). Logs one ``ready`` line with the real
addresses (port 0 becomes the port the kernel gave), which is what tests and operators wait
for. SIGTERM/SIGINT: stop accepting, let DATA finish, stop the worker, commit, close, exit
0. SIGHUP: re-read the configuration and rules/, keeping the old ones if the new are bad.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import config as config_mod
from . import logs, rules, spool, storage
from .dispatch import Dispatcher
from .dkim_verify import KeyResolver
from .iana import IanaClient
from .outbox import Deliverer
from .request_auth import Authenticator
from .smtp_server import Runtime
from .storage import Reader
from .worker import Worker

SD_LISTEN_FDS_START = 3


def inherited_sockets() -> list[socket.socket]:
    """Listening sockets passed by systemd (LISTEN_FDS), or none."""
    if os.environ.get("LISTEN_PID") not in (None, str(os.getpid())):
        return []
    n = int(os.environ.get("LISTEN_FDS", "0") or 0)
    return [socket.socket(fileno=SD_LISTEN_FDS_START + i) for i in range(n)]


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
        reader = Reader(storage.connect(cfg.database_path,
                                        busy_timeout_ms=cfg["storage.busy_timeout_ms"]))
        worker: Worker | None = None
        rt = Runtime(cfg, writer, on_spooled=lambda: worker.wake() if worker else None)
        auth = Authenticator(rt, reader, KeyResolver.from_config(cfg), IanaClient(cfg, writer, reader))
        worker = Worker(rt, writer, reader, Dispatcher(rt, auth))
        deliverer = Deliverer(cfg, writer, reader)
        worker.on_outcomes = deliverer.wake
        worker_task = asyncio.create_task(worker.run(), name="worker")
        deliverer_task = asyncio.create_task(deliverer.run(), name="outbox")

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

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.reload(rt))
        self.log.info("ready", listening=listening, database=str(cfg.database_path),
                      migrations_applied=applied, requeued=requeued, domain=cfg["server.domain"],
                      pid=os.getpid(), systemd_sockets=bool(inherited))

        await self._stop.wait()
        self.log.info("stopping", open_sessions=len(rt.sessions))
        for srv in servers:
            srv.close()
        await rt.shutdown(rt.cfg["server.shutdown_grace"])
        worker.stop()
        await worker_task
        deliverer.stop()
        await deliverer_task
        await writer.close()
        reader.close()
        self.log.info("stopped", processed=worker.processed, commits=writer.batches,
                      writes=writer.jobs)
        return 0

    def reload(self, rt: Runtime) -> None:
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
