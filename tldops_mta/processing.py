"""``tldops worker``: the processing process — worker and outbox — apart from SMTP intake.

Postfix's lesson: one job per process. Authentication (DKIM, IANA, parsing) is CPU and
network work that must never slow the SMTP sessions, and on more than one core it does not
have to share an interpreter lock with them. ``tldops serve`` starts this process itself
and passes the read end of a pipe: a byte on it means "new mail is spooled"; end of file
means the SMTP process is gone, and this one stops too. Without the pipe it polls, so it
can also be run on its own.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import config as config_mod
from . import logs, storage
from .child import die_with_parent, yield_to_intake
from .dispatch import Dispatcher
from .dkim_verify import KeyResolver
from .iana import IanaClient
from .live import Live
from .outbox import Deliverer
from .request_auth import Authenticator
from .worker import Worker

WORKER_NICENESS = 10
"""Processing yields the CPU to SMTP intake when both want it: a 250 reply is what a
sending server waits for, while a decision can come a moment later."""


async def run(cfg: config_mod.Config, config_path: Path | None, overrides: Mapping[str, Any],
              wake_fd: int | None) -> int:
    """``config_path`` and ``overrides`` are kept to re-read the configuration on SIGHUP."""
    log = logs.get("worker")
    loop = asyncio.get_running_loop()
    conn = storage.connect(cfg.database_path, busy_timeout_ms=cfg["storage.busy_timeout_ms"],
                           max_size_mb=cfg["storage.max_size_mb"])
    have = storage.check_schema(conn)
    if have < storage.latest_version():
        raise storage.SchemaTooNew(f"database schema is version {have}; run 'tldops db migrate'")
    writer = storage.Writer(conn, max_batch=cfg["storage.group_commit_max"])
    writer.start()
    reader = storage.Reader(storage.connect(cfg.database_path,
                                            busy_timeout_ms=cfg["storage.busy_timeout_ms"]), inline=True)
    live = Live(cfg)
    auth = Authenticator(live, writer, reader, KeyResolver.from_config(cfg),
                         IanaClient(cfg, writer, reader), offload=False)
    worker = Worker(live, writer, reader, Dispatcher(live, auth))
    deliverer = Deliverer(cfg, writer, reader)
    worker.on_outcomes = deliverer.wake
    stop = asyncio.Event()

    def on_wake() -> None:
        assert wake_fd is not None
        try:
            data = os.read(wake_fd, 65536)
        except BlockingIOError:
            return
        if data:
            worker.wake()
        else:
            loop.remove_reader(wake_fd)
            stop.set()

    if wake_fd is not None:
        os.set_blocking(wake_fd, False)
        loop.add_reader(wake_fd, on_wake)

    def reload() -> None:
        try:
            new = config_mod.load(config_path, overrides)
            live.apply(new)
            auth.reconfigure(new)
            deliverer.reconfigure(new)
            log.info("worker reloaded")
        except config_mod.ConfigError as e:
            log.error("worker reload refused", problems=[str(p) for p in e.problems])

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    tasks = [asyncio.create_task(worker.run(), name="worker"),
             asyncio.create_task(deliverer.run(), name="outbox")]
    log.info("worker ready", pid=os.getpid())
    await stop.wait()
    worker.stop()
    deliverer.stop()
    await asyncio.gather(*tasks)
    await writer.close()
    reader.close()
    log.info("worker stopped", processed=worker.processed, commits=writer.batches, writes=writer.jobs)
    return 0


def main(config_path: Path | None, overrides: Mapping[str, Any], wake_fd: int | None) -> int:
    if wake_fd is not None:
        die_with_parent()
        yield_to_intake(WORKER_NICENESS)
    cfg = config_mod.load(config_path, overrides)
    logs.setup(cfg["log.level"])
    return asyncio.run(run(cfg, config_path, overrides, wake_fd))
