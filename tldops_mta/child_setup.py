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

    ``idle`` (SCHED_IDLE; what ``auto`` takes with two cores or more): a core that runs only
    the worker counts as free, so a waking SMTP loop is placed there at once; on a machine
    kept busy by others the worker gets almost nothing. ``batch`` (SCHED_BATCH and
    ``niceness``; ``auto`` on one core): a small share even then. Neither can be left again
    without privileges, so the choice holds for the process's life. The spool appender
    stays in the normal class: its commit is what a session waits for. Measured and argued
    in docs/architecture.md.
    """
    if cpu_class == "auto":
        cpu_class = "idle" if len(os.sched_getaffinity(0)) >= 2 else "batch"
    policy = os.SCHED_IDLE if cpu_class == "idle" else os.SCHED_BATCH
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, policy, os.sched_param(0))
    with contextlib.suppress(OSError):
        os.nice(niceness)
    return cpu_class
