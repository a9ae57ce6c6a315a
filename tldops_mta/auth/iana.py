"""Who is the IANA administrative contact of a ccTLD: asked of RDAP, then WHOIS, cached in SQLite.

Every request from a ccTLD operator is checked against this address, and IANA's services do
fail. So the one rule here: "could not look up" is never "no match". A lookup ends in an
address, in "IANA has no such TLD" (an answer IANA gave), or in ``LookupUnavailable``, which
callers treat as *try later*. An answer we cannot read (two admins, wrong shape, cut short,
too large) counts as a failed source, never as "no admin".

Each answer is stored with its raw octets, so the Validator can see what a decision rested
on; the newest usable one is the cache. Within ``iana.fresh_for`` it is used without asking
IANA; when IANA cannot be asked, it still counts up to ``iana.usable_for``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from tldops_mta import logs, metrics
from tldops_mta.auth import iana_answers as answers
from tldops_mta.auth.iana_answers import MAX_ANSWER, AnswerError, NotDelegated
from tldops_mta.settings.cctlds import tld_labels
from tldops_mta.settings.config import Config
from tldops_mta.settings.sections import IanaConfig
from tldops_mta.store import storage
from tldops_mta.store.storage import Reader, Writer

Source = Literal["rdap", "whois"]
Status = Literal["ok", "not-delegated"]
AnswerStatus = Literal["ok", "not-delegated", "unreadable"]

log = logs.get("iana")


@dataclass(frozen=True)
class AdminContact:
    """What is known of a TLD's administrative contact, and where it came from."""

    tld: str
    u_label: str
    email: str | None
    status: Status
    source: Source
    fetched_at: float
    raw: bytes
    from_cache: bool
    reason: str


class LookupUnavailable(Exception):
    """IANA could not be asked (or answered unreadably), and no cached answer is young enough.

    Temporary: the request waits and is tried again; it is never refused on this ground.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SourceFailed(Exception):
    """One source gave no answer at all (refused, timed out, HTTP 500): nothing to keep."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Answer:
    """An answer one source gave, read; unreadable ones are kept too, for the record."""

    source: Source
    status: AnswerStatus
    email: str | None
    reason: str
    raw: bytes


@dataclass(frozen=True)
class Cached:
    source: Source
    fetched_at: float
    email: str | None
    status: Status
    reason: str
    raw: bytes


class CacheUse(StrEnum):
    FRESH = "fresh"
    """Young enough to use without asking IANA."""
    FALLBACK = "fallback"
    """Ask IANA; use this only if IANA gives no answer."""
    NONE = "none"
    """Ask IANA; without an answer the lookup is unavailable."""


def cache_use(fetched_at: float | None, now: float, *, fresh_for: float, usable_for: float,
              refresh: bool = False) -> CacheUse:
    """How far the newest usable cached answer (fetched at ``fetched_at``) may be relied on.

    An entry from the future (the clock went back) has no known age, so it is neither fresh
    nor a fallback. A fresh entry whose refresh failed stays usable even when usable_for is
    set below fresh_for: it was good enough to use without asking a moment ago.
    """
    if fetched_at is None:
        return CacheUse.NONE
    age = now - fetched_at
    if age < 0:
        return CacheUse.NONE
    if age < fresh_for and not refresh:
        return CacheUse.FRESH
    if age < max(usable_for, fresh_for):
        return CacheUse.FALLBACK
    return CacheUse.NONE


def read_rdap(http_status: int, body: bytes, a_label: str) -> Answer:
    """What an RDAP reply means; SourceFailed for replies that are no answer (5xx, 3xx, ...)."""
    try:
        if http_status == 200:
            email = answers.admin_from_rdap(body, a_label)
            return Answer("rdap", "ok", email, "RDAP: administrative entity found", body)
        if http_status == 404:
            raise answers.rdap_not_found(body, a_label)
    except NotDelegated as e:
        return Answer("rdap", "not-delegated", None, e.reason, body)
    except AnswerError as e:
        return Answer("rdap", "unreadable", None, e.reason, body)
    raise SourceFailed(f"HTTP {http_status}")


def read_whois(body: bytes, a_label: str) -> Answer:
    """What a WHOIS answer means."""
    try:
        email = answers.admin_from_whois(body, a_label)
    except NotDelegated as e:
        return Answer("whois", "not-delegated", None, e.reason, body)
    except AnswerError as e:
        return Answer("whois", "unreadable", None, e.reason, body)
    return Answer("whois", "ok", email, "WHOIS: 'contact: administrative' block found", body)


def newest_usable(conn: sqlite3.Connection, tld: str) -> Cached | None:
    """The latest answer for ``tld`` that said something (an address, or no such TLD).

    Latest by arrival, not by ``fetched_at``: after the clock steps back, an entry dated in
    the future must not shadow the answers received since.
    """
    row = conn.execute(
        "SELECT source, fetched_at, admin_email, status, reason, raw FROM iana_contacts"
        " WHERE tld = ? AND status IN ('ok', 'not-delegated')"
        " ORDER BY id DESC LIMIT 1", (tld,)).fetchone()
    if row is None:
        return None
    return Cached(row[0], float(row[1]), row[2], row[3], row[4] or "", bytes(row[5]))


def history(conn: sqlite3.Connection, tld: str) -> list[tuple[str, float, str | None, str, str]]:
    """Every answer kept for ``tld``, oldest first: (source, fetched_at, email, status, reason)."""
    rows = conn.execute(
        "SELECT source, fetched_at, admin_email, status, coalesce(reason, '') FROM iana_contacts"
        " WHERE tld = ? ORDER BY id", (tld,)).fetchall()
    return [(r[0], float(r[1]), r[2], r[3], r[4]) for r in rows]


def store(tld: str, answer: Answer, fetched_at: float) -> Callable[[sqlite3.Connection], None]:
    def job(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO iana_contacts (tld, source, fetched_at, admin_email, status, reason, raw)"
            " VALUES (?,?,?,?,?,?,?)",
            (tld, answer.source, fetched_at, answer.email, answer.status, answer.reason, answer.raw))

    return job


async def _read_capped(chunks: AsyncIterator[bytes]) -> bytes:
    """At most MAX_ANSWER + 1 octets: enough for the parsers to say "too large", no more."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > MAX_ANSWER:
            break
    return bytes(body[:MAX_ANSWER + 1])


def _failure(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


class IanaClient:
    """Looks up administrative contacts; one per daemon, sharing its Writer and Reader."""

    def __init__(self, cfg: IanaConfig, writer: Writer, reader: Reader) -> None:
        self._cfg = cfg
        self._writer = writer
        self._reader = reader
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._memo: dict[str, Cached] = {}
        """The newest stored answer per TLD as last read: while it is fresh, requests need
        not ask the database (or IANA) at all."""

    def reconfigure(self, cfg: IanaConfig) -> None:
        """New URLs, ports and cache ages apply to the next lookup (SIGHUP)."""
        self._cfg = cfg

    async def admin_contact(self, tld: str, *, refresh: bool = False,
                            now: float | None = None) -> AdminContact:
        """The administrative contact of ``tld``; LookupUnavailable means try later.

        Raises ValueError when ``tld`` is not a TLD at all (a permanent problem of the input).
        """
        a_label, u_label = tld_labels(tld)
        at = time.time() if now is None else now
        memo = self._memo.get(a_label)
        if memo is not None and not refresh and cache_use(
                memo.fetched_at, at, fresh_for=self._cfg.fresh_for,
                usable_for=self._cfg.usable_for) is CacheUse.FRESH:
            return _contact(a_label, u_label, memo,
                            f"cached {memo.source} answer, {at - memo.fetched_at:.0f} s old")
        # One lookup per TLD at a time: a burst of requests from one ccTLD asks IANA once,
        # and the others find the fresh answer in the cache.
        lock = self._locks.get(a_label)
        if lock is None:
            lock = self._locks[a_label] = asyncio.Lock()
        async with lock:
            return await self._lookup(a_label, u_label, refresh, time.time() if now is None else now)

    async def _lookup(self, a_label: str, u_label: str, refresh: bool, now: float) -> AdminContact:
        fresh_for = self._cfg.fresh_for
        usable_for = self._cfg.usable_for
        cached = await self._reader.run(newest_usable, a_label)
        self._memo.pop(a_label, None)
        if cached is not None:
            self._memo[a_label] = cached
        use = cache_use(cached.fetched_at if cached else None, now, fresh_for=fresh_for,
                        usable_for=usable_for, refresh=refresh)
        if cached is not None and use is CacheUse.FRESH:
            age = now - cached.fetched_at
            log.debug("iana_lookup", tld=a_label, source="cache", cached_source=cached.source,
                      outcome=cached.status, age=round(age, 1), duration=0.0,
                      admin=_redacted(cached.email), reason="cached answer is fresh")
            return _contact(a_label, u_label, cached, f"cached {cached.source} answer, {age:.0f} s old")

        failures: list[str] = []
        sources: tuple[tuple[Source, Callable[[str], Awaitable[Answer]]], ...] = (
            ("rdap", self._ask_rdap), ("whois", self._ask_whois))
        for source, ask in sources:
            started = time.monotonic()
            try:
                answer = await ask(a_label)
            except SourceFailed as e:
                _observe(source, started, failed=True)
                failures.append(f"{source}: {e.reason}")
                log.warning("iana_lookup", tld=a_label, source=source, outcome="failed",
                            duration=round(time.monotonic() - started, 3), reason=e.reason)
                continue
            duration = round(time.monotonic() - started, 3)
            _observe(source, started, failed=answer.status == "unreadable")
            if answer.status == "unreadable":
                failures.append(f"{source}: {answer.reason}")
                log.warning("iana_lookup", tld=a_label, source=source, outcome="unreadable",
                            duration=duration, reason=answer.reason, octets=len(answer.raw))
                try:
                    await self._writer.run(store(a_label, answer, now))
                except storage.StorageError as e:  # only the record is lost: go on to WHOIS
                    log.warning("iana_record_lost", tld=a_label, source=source, reason=str(e))
                continue
            await self._writer.run(store(a_label, answer, now))
            self._memo.pop(a_label, None)  # the next call reads the answer just stored
            log.info("iana_lookup", tld=a_label, source=source, outcome=answer.status,
                     duration=duration, admin=_redacted(answer.email), reason=answer.reason)
            status: Status = "ok" if answer.status == "ok" else "not-delegated"
            return AdminContact(a_label, u_label, answer.email, status, source, now, answer.raw,
                                from_cache=False, reason=answer.reason)

        why = "; ".join(failures)
        if cached is not None and use is not CacheUse.NONE:
            age = now - cached.fetched_at
            log.warning("iana_lookup", tld=a_label, source="cache", cached_source=cached.source,
                        outcome=cached.status, age=round(age, 1), duration=0.0,
                        admin=_redacted(cached.email), reason=f"IANA gave no answer ({why})")
            return _contact(a_label, u_label, cached,
                            f"IANA gave no answer ({why}); cached {cached.source} answer, {age:.0f} s old")
        reason = f"{why}; no cached answer younger than {usable_for:g} s"
        log.warning("iana_lookup", tld=a_label, source="none", outcome="unavailable", reason=reason)
        raise LookupUnavailable(reason)

    async def _ask_rdap(self, a_label: str) -> Answer:
        timeout = self._cfg.timeout
        url = f"{self._cfg.rdap_url}domain/{a_label}"
        # identity: a compressed body could expand far past MAX_ANSWER before we count it.
        # trust_env=False: IANA is asked directly, never through a proxy taken from the
        # environment (and a loopback test server stays on loopback).
        headers = {"Accept": "application/rdap+json, application/json", "Accept-Encoding": "identity"}
        # Imported here: httpx weighs 12 MB and is needed about once per TLD per day
        # (fresh answers come from the cache), not in every idle worker.
        import httpx

        try:
            async with (asyncio.timeout(timeout),
                        httpx.AsyncClient(timeout=timeout, trust_env=False) as client,
                        client.stream("GET", url, headers=headers) as resp):
                if resp.status_code not in (200, 404):
                    raise SourceFailed(f"HTTP {resp.status_code}")
                encoding = resp.headers.get("content-encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise SourceFailed(f"answer is {encoding}-encoded although identity was asked for")
                body = await _read_capped(resp.aiter_raw())
                status = resp.status_code
        except TimeoutError:
            raise SourceFailed(f"no complete answer within {timeout:g} s") from None
        except (httpx.HTTPError, OSError) as e:
            raise SourceFailed(_failure(e)) from e
        return read_rdap(status, body, a_label)

    async def _ask_whois(self, a_label: str) -> Answer:
        timeout = self._cfg.timeout
        host, port = self._cfg.whois_host, self._cfg.whois_port
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port)
                try:
                    writer.write(f"{a_label}\r\n".encode("ascii"))
                    await writer.drain()
                    body = await _read_capped(_stream(reader))
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except TimeoutError:
            raise SourceFailed(f"no complete answer within {timeout:g} s") from None
        except OSError as e:
            raise SourceFailed(_failure(e)) from e
        return read_whois(body, a_label)


async def _stream(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while chunk := await reader.read(65536):
        yield chunk


def _redacted(email: str | None) -> str | None:
    return None if email is None else logs.redact_address(email)


def _contact(a_label: str, u_label: str, cached: Cached, reason: str) -> AdminContact:
    return AdminContact(a_label, u_label, cached.email, cached.status, cached.source, cached.fetched_at,
                        cached.raw, from_cache=True, reason=reason)


def lookup_blocking(cfg: Config, tld: str, *, refresh: bool = False) -> AdminContact:
    """One lookup outside the daemon (the CLI), migrating the database first if it is new.

    Uses the same client, cache and Writer as the daemon, so what the CLI shows is what the
    daemon would decide on, and what it fetches is kept for the daemon too.
    """
    tld_labels(tld)  # a bad TLD is reported before any file is created

    async def run() -> AdminContact:
        async with storage.standalone(cfg) as (writer, reader):
            return await IanaClient(cfg.iana, writer, reader).admin_contact(tld, refresh=refresh)

    return asyncio.run(run())


def _observe(source: str, started: float, *, failed: bool) -> None:
    m = metrics.worker_metrics()
    m.lookup_seconds.labels(source).observe(time.monotonic() - started)
    if failed:
        m.lookup_errors.labels(source).inc()
