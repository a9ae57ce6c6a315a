"""What every child process of the daemon (worker, spool appender) does first."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """If the SMTP process is killed (kill -9, OOM), take this process down with it, as one
    daemon; a restart then finds both gone and requeues what was in flight."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def yield_to_intake(niceness: int) -> None:
    """Never take the CPU from the SMTP process's event loop when it wakes up (the worker).

    SCHED_BATCH: a waking batch task does not preempt the one running, so the worker, woken
    by a spool wake byte, goes to the other core if it is idle, or waits for the loop to
    block, instead of pushing the loop off its core; ``niceness`` lowers its share of a busy
    machine: a decision can come a moment later, a 250 reply is what a sending server waits
    for. (The spool appender stays in the normal class: its commit *is* what a session is
    waiting for. With both children in SCHED_BATCH the loop was preempted a third as often
    under bench/intake's load, but the rate did not rise: commits waited instead.)
    """
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    with contextlib.suppress(OSError):
        os.nice(niceness)
