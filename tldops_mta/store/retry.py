"""When to try again: one backoff rule for everything that retries (spool, outbox)."""

from __future__ import annotations


def backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds to wait after the ``attempts``-th failure: base, doubling, at most cap."""
    return float(min(cap, base * 2 ** max(0, attempts - 1)))
