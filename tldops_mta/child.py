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


def yield_to_intake(cpu_class: str, niceness: int) -> str:
    """Never take the CPU from the SMTP process's event loop when it wakes up (the worker);
    returns the class taken.

    ``idle`` (SCHED_IDLE; what ``auto`` takes with two cores or more): the kernel counts a
    core that runs only the worker as free, so a waking SMTP loop, spool appender or client
    is placed there and runs at once. Under bench/intake's load this took the loop's CPU per
    message from about 14 % over bare aiosmtpd's to the same, and the intake ratio from 0.76
    to 0.97 (medians of 5 pairs), with every message still processed as it came. The price:
    where other programs keep every core busy, the worker gets almost nothing and decisions
    wait. ``batch`` (SCHED_BATCH and ``niceness``; what ``auto`` takes on one core, where an
    idle worker would get nothing while intake is busy): a waking batch task does not
    preempt the one running, and it keeps a small share of a busy machine. Neither can be
    left again without privileges, so the choice holds for the process's life.
    (The spool appender stays in the normal class: its commit *is* what a session is
    waiting for. With both children in SCHED_BATCH the loop was preempted a third as often
    under bench/intake's load, but the rate did not rise: commits waited instead.)
    """
    if cpu_class == "auto":
        cpu_class = "idle" if len(os.sched_getaffinity(0)) >= 2 else "batch"
    policy = os.SCHED_IDLE if cpu_class == "idle" else os.SCHED_BATCH
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, policy, os.sched_param(0))
    with contextlib.suppress(OSError):
        os.nice(niceness)
    return cpu_class
