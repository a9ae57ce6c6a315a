"""``tldops worker``: the processing process — worker and outbox — apart from SMTP intake.

Postfix's lesson: one job per process. Authentication (DKIM, IANA, parsing) is CPU and
network work that must never slow the SMTP sessions, and on more than one core it does not
have to share an interpreter lock with them. ``tldops serve`` starts this process itself
and passes the read end of a pipe: a byte on it means "new mail is spooled"; end of file
means the SMTP process is gone, and this one stops too. Without the pipe it polls, so it
can also be run on its own (never beside a daemon: at its start it requeues every claim).

The daemon runs ``worker.processes`` of these, one per slot (``--slot``): slot 0 is the whole
of the above, the others take spooled mail only (see ``run``).
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
from tldops_mta.store.due_loop import DueLoop
from tldops_mta.worker import dispatch, work_due
from tldops_mta.worker.spool_loop import Worker

IDLE_CHECK = 5.0
"""Seconds between two looks at whether the worker has been idle long enough to exit."""

WORKER_NICENESS = 10
"""Processing yields the CPU to SMTP intake when both want it: a 250 reply is what a
sending server waits for, while a decision can come a moment later (worker.cpu_class
'batch'; 'idle' yields further, see child_setup.yield_to_intake)."""


async def run(cfg: config_mod.Config, config_path: Path | None, overrides: Mapping[str, object],
              wake_fd: int | None, ready_fd: int | None = None, cpu_class: str | None = None,
              slot: int | None = None) -> int:
    """``config_path`` and ``overrides`` are kept to re-read the configuration on SIGHUP.

    ``slot``: this process's place among the daemon's worker processes (None: run by hand).
    Slot 0 (and a worker run by hand) owns everything besides spooled mail too: the outbox,
    the clocks, the broadcast, housekeeping, Mailman, freshness. A higher slot runs only the
    spool's Worker, and after outcomes that may have queued mail writes ``W`` on its ready
    pipe: the SMTP process then wakes slot 0, whose outbox sends it."""
    log = logs.get("worker").bind(slot=slot)
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
    worker = Worker(live, writer, reader, dispatch.Dispatcher(dispatch.desks(live, reader, senders, iana)),
                    slot=slot)
    owner = slot is None or slot == 0
    loops: dict[str, DueLoop] = {"worker": worker}
    woken: list[DueLoop] = [worker]
    """What a wake byte wakes: every loop but the redelegation watch (it keeps its own time)."""
    deliverer: Deliverer | None = None
    if owner:
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
        loops.update({"outbox": deliverer, "queue-clock": clock, "broadcast": broadcaster,
                      "redelegation": watch, "housekeeping": housekeeper, "mailman": mailman_loop,
                      "freshness": freshness_clock})
        woken += [deliverer, clock, broadcaster, housekeeper, mailman_loop, freshness_clock]

        def after_outcomes() -> None:
            # Outcomes may have queued mail (the outbox), made requests whose reminders and
            # expiry the clock must time, changed the roster (broadcast at the next period,
            # never at once; the Mailman list must follow), added SSCs (their first ask).
            for one in (deliverer, clock, broadcaster, mailman_loop, freshness_clock):
                one.wake()
    else:
        def after_outcomes() -> None:
            # Slot 0 owns what outcomes set going: the SMTP process wakes it (a pipe full
            # already holds a note that is still unread: nothing is lost).
            if ready_fd is not None:
                with contextlib.suppress(OSError):
                    os.write(ready_fd, b"W")

    worker.on_outcomes = after_outcomes
    stop = asyncio.Event()
    # A worker of this slot before us may have died mid-batch (we are its restart): what it
    # had claimed goes back to received. The SMTP process starts a slot again only once its
    # process has exited, and other slots' claims carry their own names: nothing live is
    # taken. Run by hand (no slot), every claim is taken: no daemon may run beside it.
    requeue = (spool.requeue_interrupted if slot is None
               else spool.requeue_claims(spool.slot_prefix(slot)))
    requeued = await writer.run(requeue)
    if owner:
        # The Validators live in the configuration: the spool appender reads them from SQLite
        # to give their mail the known lane (store/lanes.py). Written again on SIGHUP.
        await writer.run(lanes.set_senders(lanes.VALIDATOR, cfg.validation.validators))

    async def exit_when_idle() -> None:
        """Ends this process once it has had nothing to do for worker.max_idle seconds and
        nothing falls due sooner (the SMTP process starts it again when needed). A slot
        above 0 looks only at the spool: the rest is slot 0's."""
        while not stop.is_set():
            max_idle = live.cfg.worker.max_idle
            check = min(max_idle, IDLE_CHECK) if max_idle > 0 else IDLE_CHECK
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), check)
            if stop.is_set() or max_idle <= 0:
                continue
            idle_for = time.monotonic() - max(one.active_at for one in loops.values())
            if idle_for < max_idle:
                continue
            nxt = await reader.run(lambda c: work_due.next_work_at(c, live.cfg) if owner
                                   else spool.next_due_at(c))
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
            for one in woken:  # the CLI may have queued mail or work (SIGUSR1 to the daemon)
                one.wake()
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
            if owner:
                assert deliverer is not None
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
    tasks = [asyncio.create_task(one.run(), name=name) for name, one in loops.items()]
    if wake_fd is not None:  # run by the SMTP process, which starts it again on demand
        tasks.append(asyncio.create_task(exit_when_idle(), name="idle"))
    log.info("worker ready", pid=os.getpid(), requeued=requeued, cpu_class=cpu_class)
    if ready_fd is not None:  # the SMTP process tells systemd READY=1 after this (slot 0's)
        with contextlib.suppress(OSError):
            os.write(ready_fd, b"R")
        os.set_blocking(ready_fd, False)  # its notes (``W``) never hold up this process
    await stop.wait()
    for one in loops.values():
        one.stop()
    await asyncio.gather(*tasks)
    await writer.close()
    reader.close()
    if ready_fd is not None:
        os.close(ready_fd)
    log.info("worker stopped", processed=worker.processed, commits=writer.batches, writes=writer.jobs)
    return 0


def main(config_path: Path | None, overrides: Mapping[str, object], wake_fd: int | None,
         ready_fd: int | None = None, slot: int | None = None) -> int:
    if wake_fd is not None:
        die_with_parent()
    cfg = config_mod.load(config_path, overrides)
    cpu_class = yield_to_intake(cfg.worker.cpu_class, WORKER_NICENESS) if wake_fd is not None else None
    logs.setup(cfg.log.level)
    return asyncio.run(run(cfg, config_path, overrides, wake_fd, ready_fd, cpu_class, slot))
