"""Sender authentication, one service for every desk: DKIM verification, which signatures
count for the From's domain (``dkim.alignment``), and whether a key lookup failed for now.

The key resolver (replaced on SIGHUP) and the choice to run DKIM's CPU work in a thread
live here, not in a desk: every desk that trusts a signature asks the same question the
same way, and a failed lookup makes the message wait, never refuses it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tldops_mta.auth.dkim_verify import DkimReport, KeyResolver, SignatureResult, verify
from tldops_mta.settings.live import Live
from tldops_mta.settings.sections import DnsConfig
from tldops_mta.store import spool


@dataclass(frozen=True)
class Signed:
    """What the signatures of one message say of its From's domain."""

    report: DkimReport
    counting: list[SignatureResult]
    """The signatures that count and are aligned with the From's domain."""
    temporary: bool
    """None counts, but one might once DNS answers: the message waits, it is not refused."""

    @property
    def lookup_failed(self) -> str | None:
        """Which key lookups failed for now, and how (for a wait's reason), or None."""
        return self.report.key_failures() if self.temporary else None


class SenderAuth:
    def __init__(self, live: Live, resolver: KeyResolver, *, offload: bool = True) -> None:
        self.rt = live
        self.resolver = resolver
        self.offload = offload
        """DKIM's CPU work in a thread, for a loop that serves others (not the worker's)."""

    def reconfigure(self, dns_cfg: DnsConfig) -> None:
        """New DNS servers apply to the next message (SIGHUP)."""
        self.resolver = KeyResolver.from_config(dns_cfg)

    async def verify(self, raw: bytes, from_domain: str, now: float | None = None) -> Signed:
        cfg = self.rt.cfg
        report = await verify(raw, self.resolver, min_rsa_bits=cfg.dkim.min_rsa_bits,
                              now=time.time() if now is None else now, offload=self.offload)
        alignment = cfg.dkim.alignment
        return Signed(report, report.counting(from_domain, alignment),
                      report.temporary(from_domain, alignment))

    def wait(self, spool_id: int, service: str, why: str) -> spool.Outcome:
        """The outcome of a message that comes back after ``worker.retry_base``: a lookup
        failed, and it names which and how, so an operator sees which service is down."""
        return spool.waiting(spool_id, service, why, self.rt.cfg.worker.retry_base)
