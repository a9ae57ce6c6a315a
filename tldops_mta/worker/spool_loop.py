"""The worker: takes spooled messages lane by lane (``spool.due``) and carries each to an end state.

Each batch is claimed (committed as 'processing', attempt counted) before any work, then
processed, then its outcomes committed together. A crash anywhere leaves messages in
'received' or 'processing'; both are picked up again after a restart, so processing must be
idempotent. An exception in a handler becomes a retry with backoff, then 'failed' after
max_attempts: never a drop. Each message's header and recipients are read once, here, and
handed to the handler (the dispatcher). Several worker processes may run this loop on one
spool: a claim is conditional (``spool.claim``), so each message is in one worker's hands.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable

from tldops_mta import logs, metrics
from tldops_mta.auth import message_facts
from tldops_mta.settings.live import Live
from tldops_mta.settings.recipients import FOR_A_PERSON, Service, Services, services_of
from tldops_mta.store import spool
from tldops_mta.store.due_loop import DueLoop
from tldops_mta.store.retry import backoff
from tldops_mta.store.storage import Reader, Writer

Handler = Callable[[spool.Pending, message_facts.MessageFacts, Services], Awaitable[spool.Outcome]]
"""What a message becomes: given its header facts and its services, read once here."""


async def classify_only(p: spool.Pending, facts: message_facts.MessageFacts,
                        services: frozenset[Service]) -> spool.Outcome:
    """A worker without desks records what each message is for, and nothing else."""
    return spool.Outcome(p.id, spool.Status.DONE, "classified",
                         tuple(sorted(s.value for s in services)))


class Worker(DueLoop):
    def __init__(self, live: Live, writer: Writer, reader: Reader,
                 handler: Handler = classify_only, *, slot: int | None = None) -> None:
        log = logs.get("worker")
        super().__init__(reader, log if slot is None else log.bind(slot=slot))
        self.rt = live
        self.writer = writer
        self.handler = handler
        self.processed = 0
        self.owner = spool.claimant(slot, secrets.token_hex(8))
        """This worker's name on the messages it claims (its slot's prefix first: what the
        slot's next process requeues after a crash, never a sibling's)."""
        self.on_outcomes: Callable[[], None] = lambda: None
        """Called after outcomes commit: they may have queued mail for the outbox."""

    def next_due(self, conn: sqlite3.Connection) -> float | None:
        return spool.next_due_at(conn)

    async def recover(self) -> None:
        # Storage trouble. Nothing is lost: a message it claimed whose outcome could not be
        # written goes back to received, as after a crash; its siblings' claims stay theirs.
        await self.writer.run(spool.requeue_claims(self.owner))

    async def step(self, now: float | None = None) -> bool:
        """Process one batch due at ``now`` (default: the clock); False when none was due."""
        cfg = self.rt.cfg
        now_given = now is not None
        now = time.time() if now is None else now
        size = cfg.worker.batch_size
        batch = await self.reader.run(spool.due, now, size, cfg.worker.max_wait)
        if not batch:
            return False
        if len(batch) < size and cfg.worker.linger > 0 and not batch[0].fast:
            # More are probably on their way (an SMTP burst): one claim and one commit of
            # outcomes for all of them costs the intake fewer waits for the database lock.
            # Not for fast-lane mail, which is taken at once and alone (spool.due).
            await asyncio.sleep(cfg.worker.linger)
            now = now if now_given else time.time()
            batch = await self.reader.run(spool.due, now, size, cfg.worker.max_wait)
        claimed = set(await self.writer.run(spool.claim([p.id for p in batch], now, self.owner)))
        work = [p for p in batch if p.id in claimed]
        # Concurrently: one message's DNS or IANA wait is another's CPU time. Messages of
        # one batch do not depend on each other's effects (those commit together below).
        outcomes = list(await asyncio.gather(*(self.process(p) for p in work)))
        done = time.time()
        retry_at = done + backoff(1, cfg.worker.retry_base, cfg.worker.retry_max)
        finish = spool.finish(outcomes, done, retry_at, self.owner)
        finished = await self.writer.run(finish)
        replaced = {o.id: o for o in finished.retries}
        self.processed += len(outcomes)
        counted = metrics.worker_metrics()
        committed = {o.id: (replaced.get(o.id) or finished.settled.get(o.id) or o).status
                     for o in outcomes}
        for o in outcomes:
            for service in o.services or ("none",):
                counted.count_message(service.split("+")[0], committed[o.id].value)
        counted.flush()
        self.on_outcomes()
        for p, o in zip(work, outcomes, strict=True):
            if o.id in replaced:
                self.log.error("outcome not recorded, will retry", queue_id=p.queue_id,
                               reason=replaced[o.id].reason)
                continue
            if o.after_commit is not None and o.id not in finished.dropped:
                o.after_commit()
            if o.ids or o.decided:  # it became something (a request): the line that ties them, at info
                self.log.info("message processed", queue_id=p.queue_id, status=committed[o.id].value,
                              **o.ids, **o.decided)
            else:
                self.log.debug("message processed", queue_id=p.queue_id, status=committed[o.id].value)
        return True

    async def process(self, p: spool.Pending) -> spool.Outcome:
        cfg = self.rt.cfg
        try:
            facts = message_facts.read(p.raw)
            services = services_of(p.rcpt_to, cfg.server.domain, self.rt.parts)
            problem = facts.problem()
            # Mail only for postmaster@/abuse@ goes to a person as it came, however malformed
            # (a broken header is often what it reports): nothing here reads it.
            if problem is not None and not (services and services <= FOR_A_PERSON):
                self.log.info("message rejected", queue_id=p.queue_id, reason=problem)
                return spool.Outcome(p.id, spool.Status.REJECTED, problem)
            if not services:
                return spool.Outcome(p.id, spool.Status.REJECTED, "no service address among recipients")
            outcome = await self.handler(p, facts, services)
        except Exception as e:
            attempts = p.attempts + 1
            reason = f"{type(e).__name__}: {e}"[:500]
            if attempts >= cfg.worker.max_attempts:
                self.log.exception("message failed", queue_id=p.queue_id, attempts=attempts)
                return spool.Outcome(p.id, spool.Status.FAILED,
                                     f"gave up after {attempts} attempts: {reason}")
            delay = backoff(attempts, cfg.worker.retry_base, cfg.worker.retry_max)
            self.log.warning("attempt failed, will retry", queue_id=p.queue_id, attempts=attempts,
                             retry_in=delay, error=reason)
            return spool.Outcome(p.id, spool.Status.RECEIVED, f"attempt {attempts} failed: {reason}",
                                 retry_at=time.time() + delay)
        return outcome
