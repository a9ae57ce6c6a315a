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
import contextlib
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path

from tldops_mta import logs
from tldops_mta.auth.dkim_verify import KeyResolver
from tldops_mta.auth.iana import IanaClient
from tldops_mta.auth.sender_auth import SenderAuth
from tldops_mta.child_setup import die_with_parent, yield_to_intake
from tldops_mta.mail.outbox import Deliverer
from tldops_mta.ops.housekeeping import Housekeeping
from tldops_mta.request_queue.queue_clock import QueueClock
from tldops_mta.roster.broadcast import BroadcastClock
from tldops_mta.roster.freshness import FreshnessClock
from tldops_mta.roster.mailman import MailmanLoop
from tldops_mta.roster.redelegation import RedelegationWatch
from tldops_mta.settings import config as config_mod
from tldops_mta.settings import policy_files
from tldops_mta.settings.live import Live
from tldops_mta.store import lanes, spool, storage
from tldops_mta.worker import dispatch, work_due
from tldops_mta.worker.spool_loop import Worker

IDLE_CHECK = 5.0
"""Seconds between two looks at whether the worker has been idle long enough to exit."""

WORKER_NICENESS = 10
"""Processing yields the CPU to SMTP intake when both want it: a 250 reply is what a
sending server waits for, while a decision can come a moment later (worker.cpu_class
'batch'; 'idle' yields further, see child_setup.yield_to_intake)."""


async def run(cfg: config_mod.Config, config_path: Path | None, overrides: Mapping[str, object],
              wake_fd: int | None, ready_fd: int | None = None, cpu_class: str | None = None) -> int:
    """``config_path`` and ``overrides`` are kept to re-read the configuration on SIGHUP."""
    log = logs.get("worker")
    loop = asyncio.get_running_loop()
    conn = storage.connect(cfg.database_path, busy_timeout_ms=cfg.storage.busy_timeout_ms,
                           max_size_mb=cfg.storage.max_size_mb)
    have = storage.check_schema(conn)
    if have < storage.latest_version():
        raise storage.SchemaTooNew(f"database schema is version {have}; run 'tldops db migrate'")
    writer = storage.Writer(conn, max_batch=cfg.storage.group_commit_max)
    writer.start()
    reader = storage.Reader(storage.connect(cfg.database_path,
                                            busy_timeout_ms=cfg.storage.busy_timeout_ms), inline=True)
    live = Live(cfg, policy_files.load(cfg.rules_dir))
    # This process serves no SMTP session: DKIM's CPU work runs on its loop, not in a thread.
    senders = SenderAuth(live, KeyResolver.from_config(cfg.dns), offload=False)
    iana = IanaClient(cfg.iana, writer, reader)
    worker = Worker(live, writer, reader, dispatch.Dispatcher(dispatch.desks(live, reader, senders, iana)))
    deliverer = Deliverer(cfg, writer, reader)
    clock = QueueClock(live, writer, reader)
    clock.on_mail = deliverer.wake
    broadcaster = BroadcastClock(lambda: live.cfg, writer, reader)
    broadcaster.on_mail = deliverer.wake
    watch = RedelegationWatch(live, writer, reader, iana)
    freshness_clock = FreshnessClock(live, writer, reader, iana)
    freshness_clock.on_mail = deliverer.wake
    housekeeper = Housekeeping(live, writer, reader)
    housekeeper.on_mail = deliverer.wake
    mailman_loop = MailmanLoop(lambda: live.cfg, writer, reader)

    def after_outcomes() -> None:
        deliverer.wake()  # outcomes may have queued mail
        clock.wake()  # and made requests whose reminders and expiry the clock must time
        broadcaster.wake()  # or changed the roster (broadcast at the next period, never at once)
        mailman_loop.wake()  # and the Mailman list must follow
        freshness_clock.wake()  # and added SSCs (their first ask), or confirmed, or bounced

    worker.on_outcomes = after_outcomes
    stop = asyncio.Event()
    # A worker before us may have died mid-batch (we are its restart): what it had claimed
    # goes back to received. Only one worker runs at a time, so nothing live is taken.
    requeued = await writer.run(spool.requeue_interrupted)
    # The Validators live in the configuration: the spool appender reads them from SQLite to
    # give their mail the known lane (store/lanes.py). Written again on SIGHUP.
    await writer.run(lanes.set_senders(lanes.VALIDATOR, cfg.validation.validators))

    async def exit_when_idle() -> None:
        """Ends this process once it has had nothing to do for worker.max_idle seconds and
        nothing falls due sooner (the SMTP process starts it again when needed)."""
        while not stop.is_set():
            max_idle = live.cfg.worker.max_idle
            check = min(max_idle, IDLE_CHECK) if max_idle > 0 else IDLE_CHECK
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), check)
            if stop.is_set() or max_idle <= 0:
                continue
            idle_for = time.monotonic() - max(worker.active_at, deliverer.active_at, clock.active_at,
                                              broadcaster.active_at, watch.active_at,
                                              mailman_loop.active_at, freshness_clock.active_at)
            if idle_for < max_idle:
                continue
            nxt = await reader.run(lambda c: work_due.next_work_at(c, live.cfg))
            if nxt is not None and nxt < time.time() + max_idle:
                continue
            log.info("worker idle, exiting", idle_for=round(idle_for, 1), next_work_at=nxt)
            stop.set()

    def on_wake() -> None:
        assert wake_fd is not None
        try:
            data = os.read(wake_fd, 65536)
        except BlockingIOError:
            return
        if data:
            worker.wake()
            deliverer.wake()  # the CLI may have queued mail (SIGUSR1 to the daemon)
            clock.wake()
            broadcaster.wake()
            housekeeper.wake()
            mailman_loop.wake()
            freshness_clock.wake()
        else:
            loop.remove_reader(wake_fd)
            stop.set()

    if wake_fd is not None:
        os.set_blocking(wake_fd, False)
        loop.add_reader(wake_fd, on_wake)

    def validators_written(done: asyncio.Future[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.error("known lane's Validators not written", error=str(done.exception()))

    def reload() -> None:
        try:
            new = config_mod.load(config_path, overrides)
            live.apply(new, policy_files.load(new.rules_dir))
            senders.reconfigure(new.dns)  # new DNS servers and IANA settings: from the next message
            iana.reconfigure(new.iana)
            deliverer.reconfigure(new)
            validators = asyncio.ensure_future(
                writer.run(lanes.set_senders(lanes.VALIDATOR, new.validation.validators)))
            validators.add_done_callback(validators_written)
            log.info("worker reloaded")
        except (config_mod.ConfigError, policy_files.RulesError) as e:
            log.error("worker reload refused", problems=[str(p) for p in e.problems])

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    tasks = [asyncio.create_task(worker.run(), name="worker"),
             asyncio.create_task(deliverer.run(), name="outbox"),
             asyncio.create_task(clock.run(), name="queue-clock"),
             asyncio.create_task(broadcaster.run(), name="broadcast"),
             asyncio.create_task(watch.run(), name="redelegation"),
             asyncio.create_task(housekeeper.run(), name="housekeeping"),
             asyncio.create_task(mailman_loop.run(), name="mailman"),
             asyncio.create_task(freshness_clock.run(), name="freshness")]
    if wake_fd is not None:  # run by the SMTP process, which starts it again on demand
        tasks.append(asyncio.create_task(exit_when_idle(), name="idle"))
    log.info("worker ready", pid=os.getpid(), requeued=requeued, cpu_class=cpu_class)
    if ready_fd is not None:  # the SMTP process tells systemd READY=1 after this
        with contextlib.suppress(OSError):
            os.write(ready_fd, b"R")
        os.close(ready_fd)
    await stop.wait()
    worker.stop()
    deliverer.stop()
    clock.stop()
    broadcaster.stop()
    mailman_loop.stop()
    watch.stop()
    freshness_clock.stop()
    housekeeper.stop()
    await asyncio.gather(*tasks)
    await writer.close()
    reader.close()
    log.info("worker stopped", processed=worker.processed, commits=writer.batches, writes=writer.jobs)
    return 0


def main(config_path: Path | None, overrides: Mapping[str, object], wake_fd: int | None,
         ready_fd: int | None = None) -> int:
    if wake_fd is not None:
        die_with_parent()
    cfg = config_mod.load(config_path, overrides)
    cpu_class = yield_to_intake(cfg.worker.cpu_class, WORKER_NICENESS) if wake_fd is not None else None
    logs.setup(cfg.log.level)
    return asyncio.run(run(cfg, config_path, overrides, wake_fd, ready_fd, cpu_class))
