"""The SMTP process's children: the worker processes and the spool appender, kept running.

Postfix's shape: one job per process, a master that restarts a child that dies. Each child
also dies with the SMTP process (``child_setup.die_with_parent``), so a kill -9 of the daemon never
leaves half of it running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from tldops_mta import logs
from tldops_mta.intake import spool_frames
from tldops_mta.settings.config import Config
from tldops_mta.store import spool
from tldops_mta.store.storage import StorageError, StorageFull


def worker_processes(configured: int) -> int:
    """How many worker processes the daemon runs: ``configured`` (worker.processes), or
    with 0 one per CPU this process may run on (its affinity, which a cgroup or taskset
    narrows), at least 1."""
    if configured > 0:
        return configured
    return max(1, len(os.sched_getaffinity(0)))


class Supervised:
    """Keeps one child process running: a child that exits on its own is restarted after
    RESTART_PAUSE, logged at error level (the daemon must not go on half working).

    A child that may exit when idle (``exits_when_idle``: exit 0) is not an error; it is
    started again when ``wait_until_wanted`` returns. The base class wants it always."""

    RESTART_PAUSE = 1.0
    STOP_WAIT = 30.0
    name = "child"
    exits_when_idle = False

    def __init__(self) -> None:
        self.log = logs.get("daemon")
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def spawn(self) -> asyncio.subprocess.Process:
        raise NotImplementedError

    def exited(self) -> None:
        """The child is gone (before any restart)."""

    def ask_to_stop(self, proc: asyncio.subprocess.Process) -> None:
        proc.terminate()

    def wanted_at_start(self) -> bool:
        return True

    async def wait_until_wanted(self, after_crash: bool) -> None:
        """Returns when the child should run (again); at once unless a subclass knows better."""

    async def start(self) -> None:
        """Start the child if it is wanted now; once this returns, a wanted child is there to
        talk to."""
        if self.wanted_at_start():
            self.proc = await self._start_child()
        self._task = asyncio.create_task(self._run(), name=f"{self.name} process")

    async def _start_child(self) -> asyncio.subprocess.Process:
        proc = await self.spawn()
        if self._stopping:  # stop() came while it was being started
            self.ask_to_stop(proc)
        return proc

    async def _run(self) -> None:
        crashed = False
        while not self._stopping:
            if self.proc is None or self.proc.returncode is not None:
                await self.wait_until_wanted(crashed)
                if self._stopping:
                    return
                self.proc = await self._start_child()
            code = await self.proc.wait()
            self.exited()
            if self._stopping:
                return
            crashed = not (code == 0 and self.exits_when_idle)
            if not crashed:
                self.log.info(f"{self.name} process exited idle")
                continue
            self.restarts += 1
            self.log.error(f"{self.name} process exited, restarting", exit_code=code,
                           restarts=self.restarts)
            await asyncio.sleep(self.RESTART_PAUSE)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def stop(self) -> int | None:
        """Ask the child to stop, wait (it finishes what it has); SIGKILL past STOP_WAIT."""
        self._stopping = True
        code = None
        proc = self.proc
        if proc is not None and proc.returncode is None:
            self.ask_to_stop(proc)
            try:
                code = await asyncio.wait_for(proc.wait(), self.STOP_WAIT)
            except TimeoutError:
                self.log.error(f"{self.name} process did not stop, killing it")
                proc.kill()
                code = await proc.wait()
        elif proc is not None:
            code = proc.returncode
        if self._task is not None:
            await self._task
        return code


class WorkerProcess(Supervised):
    """``tldops worker --slot K`` beside the SMTP process, started when there is work (Postfix's way).

    The worker exits on its own after worker.max_idle seconds with nothing to do (exit 0).
    It is started again when mail is spooled (``wake``), or when queued work falls due:
    ``next_work_at`` (work_due, a short query; the spool's alone for a slot above 0) is
    asked at start, after each exit, and every POLL seconds while no worker runs, which
    also finds what the CLI made due. An idle daemon thus holds no worker in memory. With
    max_idle 0 it runs from start to stop. A worker that exits otherwise (non-zero) has
    crashed: logged at error, restarted.

    The wake pipe carries a byte when mail was spooled, at most one per ``gap`` seconds (the
    worker's linger: it waits that long for a batch to fill anyway), so that a burst of
    mail wakes the worker process a few times a second rather than once per commit. The
    ready pipe runs the other way: ``R`` once the worker runs, then ``W`` whenever its
    outcomes may have queued work for slot 0 (``on_note``).
    """

    name = "worker"
    POLL = 5.0

    def __init__(self, config_path: Path | None, overrides: Mapping[str, object],
                 gap: float = 0.0, *, next_work_at: Callable[[], float | None] = lambda: 0.0,
                 max_idle: float = 0.0, slot: int = 0) -> None:
        super().__init__()
        self.log = self.log.bind(slot=slot)
        self.config_path = config_path
        self.gap = gap
        self.max_idle = max_idle
        self.next_work_at = next_work_at
        self.overrides = dict(overrides)
        self.slot = slot
        self.on_note: Callable[[], None] = lambda: None
        """Called when this worker says its outcomes set work going for slot 0."""
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._wake_pending = False
        self._woken_at = 0.0
        self._wanted = asyncio.Event()
        self.start_at_once = False
        """Start a worker with the daemon even with nothing to do (for systemd's READY=1)."""
        self.ready = asyncio.Event()
        """Set once a worker has told us it is ready (database open, loops running)."""

    @property
    def exits_when_idle(self) -> bool:  # type: ignore[override]
        return self.max_idle > 0

    def wanted_at_start(self) -> bool:
        return self.start_at_once or not self.exits_when_idle or self._due() == 0.0

    async def wait_until_wanted(self, after_crash: bool) -> None:
        """After a crash at once (what it had claimed waits for a new worker, and claimed
        mail is not 'due'); else when woken, or when queued work falls due."""
        if after_crash or not self.exits_when_idle:
            return
        while not (self._wanted.is_set() or self._stopping):
            due = self._due()
            if due == 0.0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), self.POLL if due is None
                                       else min(due, self.POLL))
        self._wanted.clear()

    def _due(self) -> float | None:
        """Seconds until the next queued work (0: now), None if nothing waits; a database
        that cannot be read counts as work now (the worker will say what is wrong)."""
        try:
            nxt = self.next_work_at()
        except Exception as e:
            self.log.warning("could not read when work is due", error=str(e))
            return 0.0
        return None if nxt is None else max(0.0, nxt - time.time())

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def argv(self, ready_fd: int) -> list[str]:
        args = [sys.executable, "-m", "tldops_mta", "worker", "--wake-fd", str(self._read_fd),
                "--ready-fd", str(ready_fd), "--slot", str(self.slot)]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        if "storage.state_dir" in self.overrides:
            args += ["--state-dir", str(self.overrides["storage.state_dir"])]
        if "server.domain" in self.overrides:
            args += ["--domain", str(self.overrides["server.domain"])]
        return args

    async def spawn(self) -> asyncio.subprocess.Process:
        # The worker writes ``R`` on its ready pipe once it runs; end of file without it
        # means it died first (the supervisor restarts it; ``ready`` stays unset).
        ready_r, ready_w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv(ready_w), pass_fds=(self._read_fd, ready_w), stdin=asyncio.subprocess.DEVNULL)
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        loop = asyncio.get_running_loop()
        os.set_blocking(ready_r, False)

        def readable() -> None:
            try:
                data = os.read(ready_r, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # the worker has exited
                loop.remove_reader(ready_r)
                os.close(ready_r)
                return
            if b"R" in data:
                self.ready.set()
            if b"W" in data:
                self.on_note()

        loop.add_reader(ready_r, readable)
        return proc

    def wake(self) -> None:
        """Start the worker if none runs; else one byte at the end of this turn of the event
        loop, or ``gap`` after the last."""
        if not self.running:
            self._wanted.set()
            return
        if not self._wake_pending:
            self._wake_pending = True
            loop = asyncio.get_running_loop()
            loop.call_at(max(loop.time(), self._woken_at + self.gap), self._send_wake)

    def _send_wake(self) -> None:
        self._wake_pending = False
        self._woken_at = asyncio.get_running_loop().time()
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write_fd, b"\0")

    async def stop(self) -> int | None:
        self._wanted.set()  # out of its wait for work, to see that it is stopping
        code = await super().stop()
        os.close(self._write_fd)
        os.close(self._read_fd)
        return code


class Workers:
    """The worker processes, one per slot (``worker_processes``). Slot 0 is the
    single owner of everything but the spool (outbox, clocks, broadcast, housekeeping,
    Mailman, freshness); every slot takes spooled mail, each claim conditional, so none is
    taken twice. Each slot is started on demand and exits when idle on its own."""

    def __init__(self, count: int, config_path: Path | None, overrides: Mapping[str, object],
                 gap: float, *, next_work_at: Callable[[], float | None],
                 next_spool_at: Callable[[], float | None], max_idle: float) -> None:
        self.slots = [WorkerProcess(config_path, overrides, gap, max_idle=max_idle, slot=k,
                                    next_work_at=next_work_at if k == 0 else next_spool_at)
                      for k in range(count)]
        owner = self.slots[0]
        for other in self.slots[1:]:
            other.on_note = owner.wake

    @property
    def owner(self) -> WorkerProcess:
        return self.slots[0]

    @property
    def ready(self) -> asyncio.Event:
        """Slot 0's: what systemd's READY=1 waits for."""
        return self.owner.ready

    def configure(self, gap: float, max_idle: float) -> None:
        for w in self.slots:
            w.gap, w.max_idle = gap, max_idle

    async def start(self, *, owner_at_once: bool = False) -> None:
        """``owner_at_once``: slot 0 starts now even with nothing to do (systemd)."""
        self.owner.start_at_once = owner_at_once
        for w in self.slots:
            await w.start()

    def wake(self) -> None:
        for w in self.slots:
            w.wake()

    def signal(self, sig: int) -> None:
        for w in self.slots:
            w.signal(sig)

    async def stop(self) -> list[int | None]:
        """Every slot asked at once (each finishes its batch), then waited for."""
        return list(await asyncio.gather(*(w.stop() for w in self.slots)))


class SpoolLink(asyncio.Protocol):
    """The SMTP process's end of one appender's socket: frames out, replies in."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[None]] = {}
        self.closed = False
        self._buf = bytearray()
        self._seq = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def append(self, arrival: spool.Arrival) -> asyncio.Future[None]:
        if self.closed or self.transport is None:
            raise StorageError("the spool appender is not running")
        self._seq += 1
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending[self._seq] = fut
        self.transport.write(spool_frames.encode_arrival(self._seq, arrival))
        return fut

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            replies, used = spool_frames.decode_replies(self._buf)
        except spool_frames.FrameError as e:
            logs.get("daemon").error("spool link broken", error=str(e))
            assert self.transport is not None
            self.transport.abort()
            return
        del self._buf[:used]
        for seq, code, text in replies:
            fut = self.pending.pop(seq, None)
            if fut is None or fut.done():
                continue
            if code == spool_frames.OK:
                fut.set_result(None)
            elif code == spool_frames.FULL:
                fut.set_exception(StorageFull(text))
            else:
                fut.set_exception(StorageError(text))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for fut in self.pending.values():
            if not fut.done():
                # It may have been committed: the client is told to try again (4xx), and a
                # second copy is what SMTP's at-least-once delivery allows, never a loss.
                fut.set_exception(StorageError("the spool appender exited before confirming"))
        self.pending.clear()


class AppenderProcess(Supervised):
    """``python -m tldops_mta.intake.appender``: commits accepted mail for the SMTP process (see
    ``appender`` for why it is a process). Storage settings and the fast lane's budget
    (worker.fast_lane_*) apply at its start."""

    name = "spool appender"

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.link: SpoolLink | None = None

    async def spawn(self) -> asyncio.subprocess.Process:
        cfg = self.cfg
        ours, theirs = socket.socketpair()
        link = SpoolLink()
        await asyncio.get_running_loop().create_unix_connection(lambda: link, sock=ours)
        argv = [sys.executable, "-m", "tldops_mta.intake.appender", "--fd", str(theirs.fileno()),
                "--database", str(cfg.database_path),
                "--busy-timeout-ms", str(cfg.storage.busy_timeout_ms),
                "--max-size-mb", str(cfg.storage.max_size_mb),
                "--group-commit-max", str(cfg.storage.group_commit_max),
                "--fast-lane-budget", str(cfg.worker.fast_lane_budget),
                "--fast-lane-window", str(cfg.worker.fast_lane_window),
                "--log-level", cfg.log.level]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL)
        finally:
            theirs.close()
        self.link = link
        return proc

    def exited(self) -> None:
        if self.link is not None and self.link.transport is not None:
            self.link.transport.abort()  # fails what it still waited for (connection_lost)
        self.link = None

    def ask_to_stop(self, proc: asyncio.subprocess.Process) -> None:
        # End of file, after what is written: it commits what it has, replies, and exits.
        if self.link is not None and self.link.transport is not None:
            self.link.transport.close()

    async def append(self, arrival: spool.Arrival) -> None:
        """Returns once ``arrival`` is committed; StorageFull or StorageError when not, or
        when the appender has not answered within storage.commit_timeout."""
        if self.link is None:
            raise StorageError("the spool appender is not running")
        try:
            # Shielded: a timeout stops the wait, not the commit (which may still happen;
            # the 4xx then makes a second copy possible, never a loss).
            await asyncio.wait_for(asyncio.shield(self.link.append(arrival)),
                                   self.cfg.storage.commit_timeout)
        except TimeoutError as e:
            raise StorageError("the spool appender did not confirm in time") from e
