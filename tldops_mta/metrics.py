"""Prometheus metrics: what the daemon did (counters) and how it stands (gauges).

Three sources, one endpoint (served by the SMTP process, the one that always runs):

- the worker's counters and histograms (messages by service and outcome, DKIM results, IANA
  and DNS lookups, outgoing mail). The worker is a process of its own that comes and goes
  (worker.max_idle), so they live in prometheus_client's multiprocess files under
  ``state/metrics/``: what an exited worker counted is still counted;
- the SMTP process's own counts (replies by code, connections), plain integers bumped on the
  hot path (a dict increment, not a metrics library call per reply) and read at scrape time;
- the health (``health.read``): spool, queue and outbox depth, the last broadcast, read
  from the database at scrape time, in the HTTP server's thread.

Nothing here carries a person's address: labels are services, outcomes and codes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_FILE_HEADER = 8
"""Octets before the first value in a prometheus_client multiprocess file."""
PREFIX = "tldops"


def prepare_directory(state_dir: Path) -> Path:
    """A fresh ``state/metrics`` (counters start again with the daemon, as Prometheus
    expects of a restarted process), named in the environment the children inherit.
    Call before any child starts and before prometheus_client is imported."""
    d = state_dir / "metrics"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(d)
    return d


class SmtpCounts:
    """The SMTP process's counts: bumped per reply and per connection, read per scrape."""

    def __init__(self) -> None:
        self.replies: Counter[str] = Counter()
        self.connections: Counter[str] = Counter()


# -- the worker's instruments ---------------------------------------------------------------


class WorkerMetrics:
    """Created once per worker process (``worker_metrics``); prometheus_client is imported
    only here and in the endpoint."""

    def __init__(self) -> None:
        # prometheus_client is loaded only where metrics are counted or served
        from prometheus_client import Counter as PCounter
        from prometheus_client import Histogram

        self.messages = PCounter(f"{PREFIX}_messages_total",
                                 "Messages processed, by service (recipient class) and outcome",
                                 ["service", "outcome"])
        self.dkim = PCounter(f"{PREFIX}_dkim_signatures_total",
                             "DKIM signatures checked on requests, by result (RFC 8601) and "
                             "whether our policy counted it", ["result", "counted"])
        self.lookup_seconds = Histogram(f"{PREFIX}_lookup_seconds",
                                        "IANA (rdap, whois) and DNS (dkim key) lookup latency",
                                        ["source"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.lookup_errors = PCounter(f"{PREFIX}_lookup_errors_total",
                                      "IANA and DNS lookups that failed", ["source"])
        self.outgoing = PCounter(f"{PREFIX}_outgoing_mail_total",
                                 "Outgoing deliveries, by outcome (sent, deferred, failed)", ["outcome"])
        self._messages: Counter[tuple[str, str]] = Counter()
        self._dkim: Counter[tuple[str, str]] = Counter()

    def count_message(self, service: str, outcome: str) -> None:
        """Counted at once, written by ``flush``: a multiprocess value costs a lock, a pid
        check and a write per increment, so a batch writes each pair of labels once."""
        self._messages[service, outcome] += 1

    def count_signature(self, result: str, counted: str) -> None:
        """As ``count_message``, for ``dkim``."""
        self._dkim[result, counted] += 1

    def flush(self) -> None:
        """Write what was counted since the last flush (the worker's, after each batch)."""
        for pending, metric in ((self._messages, self.messages), (self._dkim, self.dkim)):
            for labels, n in pending.items():
                metric.labels(*labels).inc(n)
            pending.clear()


@functools.cache
def worker_metrics() -> WorkerMetrics:
    """This process's instruments, made at first use (prometheus_client refuses a second
    metric of the same name)."""
    return WorkerMetrics()


# -- the endpoint ---------------------------------------------------------------------------


def serve(host: str, port: int, counts: SmtpCounts, health_view: Callable[[], Any],
          sessions: Callable[[], int]) -> tuple[Any, int]:
    """Start the HTTP endpoint in a thread of its own; the server and its port."""
    # prometheus_client is loaded only where metrics.listen is set
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    class StartedFiles(MultiProcessCollector):
        """prometheus_client reads every file of the directory, and one that a worker process
        has just created is empty until it is sized: reading it fails the whole scrape (500).
        Such a file holds no value yet, so it is left out."""

        def collect(self) -> Any:
            started = []
            for f in Path(os.environ[MULTIPROC_ENV]).glob("*.db"):
                with contextlib.suppress(FileNotFoundError):
                    if f.stat().st_size >= _FILE_HEADER:
                        started.append(str(f))
            return self.merge(started, accumulate=True)  # type: ignore[no-untyped-call]

    registry = CollectorRegistry()
    StartedFiles(registry)  # type: ignore[no-untyped-call]
    registry.register(_DaemonCollector(counts, health_view, sessions))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, int(server.server_port)


class _DaemonCollector:
    def __init__(self, counts: SmtpCounts, health_view: Callable[[], Any],
                 sessions: Callable[[], int]) -> None:
        self.counts = counts
        self.health_view = health_view
        self.sessions = sessions

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # at scrape time

        replies = CounterMetricFamily(f"{PREFIX}_smtp_replies", "SMTP replies sent, by code", labels=["code"])
        for code, n in sorted(self.counts.replies.items()):
            replies.add_metric([code], n)
        yield replies
        conns = CounterMetricFamily(f"{PREFIX}_smtp_connections", "SMTP connections, by outcome",
                                    labels=["outcome"])
        for outcome, n in sorted(self.counts.connections.items()):
            conns.add_metric([outcome], n)
        yield conns
        yield GaugeMetricFamily(f"{PREFIX}_smtp_sessions", "Open SMTP sessions", value=self.sessions())
        h = self.health_view()
        spool = GaugeMetricFamily(f"{PREFIX}_spool_messages", "Spooled messages by status", labels=["status"])
        for status, n in sorted(h.spool.items()):
            spool.add_metric([status], n)
        yield spool
        by_lane = GaugeMetricFamily(f"{PREFIX}_spool_waiting_by_lane",
                                    "Messages waiting for the worker by priority lane", labels=["lane"])
        for lane, n in sorted(h.waiting_lanes.items()):
            by_lane.add_metric([lane], n)
        yield by_lane
        queue = GaugeMetricFamily(f"{PREFIX}_queue_requests", "Requests by state", labels=["state"])
        for state, n in sorted(h.queue.items()):
            queue.add_metric([state], n)
        yield queue
        outbox = GaugeMetricFamily(f"{PREFIX}_outbox_deliveries", "Outgoing deliveries by status",
                                   labels=["status"])
        for status, n in sorted(h.outbox.items()):
            outbox.add_metric([status], n)
        yield outbox
        yield GaugeMetricFamily(f"{PREFIX}_spool_oldest_waiting_seconds",
                                "Age of the oldest message not yet processed (0: none)",
                                value=h.oldest_waiting_s or 0.0)
        yield GaugeMetricFamily(f"{PREFIX}_outbox_oldest_queued_seconds",
                                "Age of the oldest queued outgoing mail (0: none)",
                                value=h.oldest_queued_mail_s or 0.0)
        yield GaugeMetricFamily(f"{PREFIX}_last_broadcast_timestamp_seconds",
                                "When the last roster broadcast was queued (0: never)",
                                value=h.last_broadcast_at or 0.0)
        yield GaugeMetricFamily(f"{PREFIX}_last_broadcast_success_timestamp_seconds",
                                "When the newest fully delivered broadcast finished (0: none yet)",
                                value=h.last_broadcast_completed_at or 0.0)
        yield GaugeMetricFamily(f"{PREFIX}_last_broadcast_undelivered",
                                "Deliveries of the last broadcast still queued",
                                value=h.last_broadcast_undelivered)
        yield GaugeMetricFamily(f"{PREFIX}_roster_cctlds", "ccTLDs with SSCs on the roster",
                                value=h.subscribed_cctlds)
        yield GaugeMetricFamily(f"{PREFIX}_roster_sscs", "SSCs on the roster", value=h.sscs)
        fresh = GaugeMetricFamily(f"{PREFIX}_freshness_sscs", "SSCs by freshness state (unconfirmed: "
                                  "no answer to the yearly ask, or a bounce)", labels=["state"])
        fresh.add_metric(["unconfirmed"], h.sscs_unconfirmed)
        fresh.add_metric(["awaiting_answer"], h.sscs_awaiting_answer)
        yield fresh
        yield GaugeMetricFamily(f"{PREFIX}_postmaster_unread",
                                "Mail to the postmaster and abuse addresses neither forwarded"
                                " nor marked read",
                                value=h.postmaster_unread)
