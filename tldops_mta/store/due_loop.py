"""The shape shared by the worker and the outbox: work while something is due, then sleep
until the next due time, a wake-up, or IDLE_POLL, whichever comes first."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from typing import Any

from tldops_mta.store.storage import Reader

IDLE_POLL = 5.0
"""Longest sleep with nothing due: picks up rows another process (the CLI) made due."""

ERROR_PAUSE = 1.0


class DueLoop:
    wake_gap = 0.0
    """Seconds between two looks that wake-ups may cause: a loop woken after every batch of
    the worker (a clock whose look is a query over all it watches) looks at most this often;
    a wake-up within the gap is kept for its end, never lost."""

    def __init__(self, reader: Reader, log: Any) -> None:
        self.reader = reader
        self.log = log
        self._wake = asyncio.Event()
        self._stopping = False
        self.active_at = time.monotonic()
        """When a step last found work (monotonic clock): how long this loop has been idle."""
        self._looked_at = 0.0
        self._wake_pending = False

    def wake(self) -> None:
        delay = self._looked_at + self.wake_gap - time.monotonic()
        if delay <= 0:
            self._wake.set()
        elif not self._wake_pending:
            self._wake_pending = True
            asyncio.get_running_loop().call_later(delay, self._wake_later)

    def _wake_later(self) -> None:
        self._wake_pending = False
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def step(self, now: float | None = None) -> bool:
        """Do one batch of what is due; False when nothing was."""
        raise NotImplementedError

    def next_due(self, conn: sqlite3.Connection) -> float | None:
        """When the next piece of work falls due (None: nothing is waiting)."""
        raise NotImplementedError

    async def recover(self) -> None:
        """After a failed step: put the work back so the next step finds it."""

    async def run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            self._looked_at = time.monotonic()
            try:
                worked = await self.step()
                if worked:
                    self.active_at = time.monotonic()
            except Exception:
                self.log.exception("step failed")
                with contextlib.suppress(Exception):
                    await self.recover()
                await self._sleep(ERROR_PAUSE)
                continue
            if not worked:
                try:
                    nxt = await self.reader.run(self.next_due)
                except Exception:  # a loop that stopped here would stop its work for good
                    self.log.exception("next due time not read")
                    await self._sleep(ERROR_PAUSE)
                    continue
                await self._sleep(IDLE_POLL if nxt is None else min(IDLE_POLL, max(0.0, nxt - time.time())))

    async def _sleep(self, delay: float) -> None:
        if self._stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=delay)
