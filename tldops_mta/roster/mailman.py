"""The Mailman 3 backend: the roster's SSC addresses as the members of one Mailman list.

Durable like the outbox: a roster change marks each address it touches in
``mailman_pending`` in its own transaction (triggers of migration 0015), so an approval
never waits for Mailman and a Mailman that is down loses nothing. The loop here makes each
marked address on the list what the roster says it is *now* (a member with its name, or no
member): subscribing a member or removing an absent one is a success, so a retry after a
failure half-way (or after a crash) never half-applies anything, and the last state of the
roster wins whatever order the changes came in.

The broadcast is posted once to the list by LMTP, as the MTA in front of Mailman would
deliver a list post (Mailman's lmtp runner); it is queued in ``mailman_posts`` in the
transaction that claims the period and retried until Mailman takes it.
"""

from __future__ import annotations

import asyncio
import smtplib
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tldops_mta import logs
from tldops_mta.settings.config import Config
from tldops_mta.store.due_loop import DueLoop
from tldops_mta.store.retry import backoff
from tldops_mta.store.storage import Reader, Writer

BATCH = 50


def enabled(cfg: Config) -> bool:
    return bool(cfg.mailman.rest_url)


def arm(conn: sqlite3.Connection, cfg: Config, now: float) -> None:
    """Inside the caller's transaction: say in the database whether (and which) Mailman is
    configured, which the roster triggers read. Configured anew (or another list): every
    SSC address is marked, so the list gets the whole roster. Not configured: nothing is
    kept to tell a Mailman."""
    if not enabled(cfg):
        conn.execute("DELETE FROM mailman_backend")
        conn.execute("DELETE FROM mailman_pending")
        return
    name = cfg.mailman.list
    row = conn.execute("SELECT list FROM mailman_backend").fetchone()
    if row is not None and row[0] == name:
        return
    conn.execute("INSERT INTO mailman_backend (id, list, since) VALUES (1, ?, ?) ON CONFLICT (id)"
                 " DO UPDATE SET list = excluded.list, since = excluded.since", (name, now))
    conn.execute("INSERT INTO mailman_pending (address, due_at) SELECT DISTINCT lower(email), 0 FROM roster"
                 " WHERE true ON CONFLICT (address) DO UPDATE SET due_at = 0, attempts = 0")


def unarmed(conn: sqlite3.Connection, cfg: Config) -> bool:
    """The database does not say what the configuration says (``arm`` is due)."""
    row = conn.execute("SELECT list FROM mailman_backend").fetchone()
    if not enabled(cfg):
        return row is not None
    return row is None or row[0] != cfg.mailman.list


def _password(cfg: Config) -> str:
    path = cfg.file_path("mailman.password_file")
    if path is None:
        return ""
    lines = path.read_text("utf-8").splitlines()
    return lines[0].strip() if lines else ""


def wanted(conn: sqlite3.Connection) -> dict[str, str]:
    """What the list's members should be: address (lower-case) -> display name. An SSC of
    several ccTLDs is one member, named as on its first ccTLD."""
    out: dict[str, str] = {}
    for email, first, last in conn.execute(
            "SELECT lower(email), first_name, last_name FROM roster ORDER BY tld, role"):
        out.setdefault(email, f"{first} {last}".strip())
    return out


def wanted_one(conn: sqlite3.Connection, address: str) -> str | None:
    row = conn.execute("SELECT first_name, last_name FROM roster WHERE lower(email) = ?"
                       " ORDER BY tld, role LIMIT 1", (address,)).fetchone()
    return None if row is None else f"{row[0]} {row[1]}".strip()


REST_TIMEOUT = 30.0


def _with_timeout(params: dict[str, Any]) -> dict[str, Any]:
    return {**params, "timeout": REST_TIMEOUT}


class ListClient:
    """The list through mailmanclient (blocking: run it in a thread)."""

    def __init__(self, cfg: Config) -> None:
        from mailmanclient import Client  # imported only where Mailman is configured

        # mailmanclient sets no timeout: a Mailman that accepts and never answers would hold
        # the loop for ever. Its request hooks may add one to each call.
        self.client = Client(cfg.mailman.rest_url, cfg.mailman.user, _password(cfg),
                             request_hooks=[_with_timeout])
        self.list_name = cfg.mailman.list
        self._list: Any = None

    def mlist(self) -> Any:
        if self._list is None:
            self._list = self.client.get_list(self.list_name)
        return self._list

    def members(self) -> dict[str, str]:
        return {str(m.email).lower(): str(m.display_name or "") for m in self.mlist().members}

    def apply(self, address: str, name: str | None) -> str:
        """Make ``address`` a member named ``name`` (None: no member). What was done."""
        ml = self.mlist()
        try:
            member = ml.get_member(address)
        except ValueError:
            member = None
        if name is None:
            if member is None:
                return "absent"
            try:
                ml.unsubscribe(address, pre_confirmed=True, pre_approved=True)
            except ValueError:
                return "absent"  # gone in between: what we wanted
            return "removed"
        done = "unchanged"
        if member is None:
            ml.subscribe(address, name, pre_verified=True, pre_confirmed=True, pre_approved=True)
            done = "subscribed"
            # An address Mailman knew already (from another list) keeps its old name.
            member = ml.get_member(address)
        if str(member.display_name or "") != name:
            # The name a member shows is its address's (not its user's).
            a = self.client.get_address(address)
            a.display_name = name
            a.save()
            done = "renamed" if done == "unchanged" else done
        return done


@dataclass(frozen=True)
class Difference:
    add: dict[str, str]
    remove: list[str]
    rename: dict[str, tuple[str, str]]
    """address -> (name on the list, name on the roster)"""

    def empty(self) -> bool:
        return not (self.add or self.remove or self.rename)

    def as_dict(self) -> dict[str, Any]:
        return {"add": self.add, "remove": self.remove,
                "rename": {a: {"list": o, "roster": n} for a, (o, n) in self.rename.items()}}


def compare(want: dict[str, str], have: dict[str, str]) -> Difference:
    return Difference(add={a: n for a, n in sorted(want.items()) if a not in have},
                      remove=sorted(a for a in have if a not in want),
                      rename={a: (have[a], n) for a, n in sorted(want.items()) if a in have and have[a] != n})


def sync(conn: sqlite3.Connection, cfg: Config, *, dry_run: bool) -> Difference:
    """Compare the roster with the list's members; unless ``dry_run``, make the list match."""
    client = ListClient(cfg)
    want = wanted(conn)
    diff = compare(want, client.members())
    if not dry_run:
        for a, n in diff.add.items():
            client.apply(a, n)
        for a in diff.remove:
            client.apply(a, None)
        for a, (_old, n) in diff.rename.items():
            client.apply(a, n)
    return diff


def queue_post(conn: sqlite3.Connection, period: str, raw: bytes, mail_from: str, now: float) -> None:
    """Inside the caller's transaction (the broadcast's claim): the period and its post
    commit together, so the post is made once."""
    conn.execute("INSERT INTO mailman_posts (period, raw, mail_from, due_at) VALUES (?,?,?,?)",
                 (period, raw, mail_from, now))


def next_due_at(conn: sqlite3.Connection, cfg: Config) -> float | None:
    """For work_due: also now when the database does not say what the configuration says
    (a reload turned Mailman on or off): the worker's next step arms it."""
    if unarmed(conn, cfg):
        return time.time()
    if not enabled(cfg):
        return None
    times = [conn.execute("SELECT min(due_at) FROM mailman_pending").fetchone()[0],
             conn.execute("SELECT min(due_at) FROM mailman_posts WHERE posted_at IS NULL").fetchone()[0]]
    found = [float(t) for t in times if t is not None]
    return min(found) if found else None


def _lmtp_post(cfg: Config, mail_from: str, raw: bytes) -> None:
    host, _, port = cfg.mailman.lmtp.rpartition(":")
    with smtplib.LMTP(host.strip("[]"), int(port), timeout=30) as lmtp:
        lmtp.ehlo_or_helo_if_needed()
        refused = lmtp.sendmail(mail_from, [cfg.mailman.list], raw)
        if refused:
            raise smtplib.SMTPRecipientsRefused(refused)


class MailmanLoop(DueLoop):
    """In the worker: applies the marked addresses and posts queued broadcasts."""

    wake_gap = 0.5

    def __init__(self, cfg_of: Callable[[], Config], writer: Writer, reader: Reader) -> None:
        super().__init__(reader, logs.get("mailman"))
        self.cfg_of = cfg_of
        """The configuration in force, asked at each step (a SIGHUP replaces it)."""
        self.writer = writer
        self._armed: tuple[str, str] | None = None
        """The configuration last written by ``arm`` (again after a reload changes it)."""

    def next_due(self, conn: sqlite3.Connection) -> float | None:
        return next_due_at(conn, self.cfg_of())

    async def step(self, now: float | None = None) -> bool:
        cfg = self.cfg_of()
        now = time.time() if now is None else now
        armed = (cfg.mailman.rest_url, cfg.mailman.list)
        if armed != self._armed or await self.reader.run(lambda conn: unarmed(conn, cfg)):
            await self.writer.run(lambda conn: arm(conn, cfg, now))
            self._armed = armed
        if not enabled(cfg):
            return False

        def due(conn: sqlite3.Connection) -> tuple[list[tuple[str, int, str | None]],
                                                    list[tuple[int, str, int, bytes, str]]]:
            marked = [(str(r[0]), int(r[1]), wanted_one(conn, str(r[0]))) for r in conn.execute(
                "SELECT address, attempts FROM mailman_pending WHERE due_at <= ? ORDER BY due_at LIMIT ?",
                (now, BATCH)).fetchall()]
            posts = [(int(r[0]), str(r[1]), int(r[2]), bytes(r[3]), str(r[4])) for r in conn.execute(
                "SELECT id, period, attempts, raw, mail_from FROM mailman_posts"
                " WHERE posted_at IS NULL AND due_at <= ? ORDER BY id LIMIT 5", (now,)).fetchall()]
            return marked, posts

        marked, posts = await self.reader.run(due)
        if not marked and not posts:
            return False
        client: ListClient | None = None
        for address, attempts, name in marked:
            try:
                if client is None:
                    client = await asyncio.to_thread(ListClient, cfg)
                done = await asyncio.to_thread(client.apply, address, name)
            except Exception as e:
                await self._failed("mailman_pending", "address", address, attempts, e, cfg)
                client = None
                continue
            await self.writer.run(_done_address(address, name))
            self.log.info("mailman member", address=logs.redact_address(address), result=done)
        for post_id, period, attempts, raw, mail_from in posts:
            try:
                await asyncio.to_thread(_lmtp_post, cfg, mail_from, raw)
            except Exception as e:
                await self._failed("mailman_posts", "id", post_id, attempts, e, cfg)
                continue

            def posted(conn: sqlite3.Connection, post_id: int = post_id) -> None:
                conn.execute("UPDATE mailman_posts SET posted_at = ?, last_error = NULL, raw = x''"
                             " WHERE id = ?",
                             (time.time(), post_id))

            await self.writer.run(posted)
            self.log.info("broadcast posted to the list", period=period, list=cfg.mailman.list)
        return True

    async def _failed(self, table: str, key: str, value: object, attempts: int, e: Exception,
                      cfg: Config) -> None:
        attempts += 1
        delay = backoff(attempts, cfg.mailman.retry_base, cfg.mailman.retry_max)
        reason = f"{type(e).__name__}: {e}"[:500]

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(f"UPDATE {table} SET attempts = ?, due_at = ?, last_error = ?"  # noqa: S608
                         f" WHERE {key} = ?", (attempts, time.time() + delay, reason, value))

        await self.writer.run(job)
        if isinstance(value, str):  # an SSC's address: in the log only redacted, even in the error
            value, reason = logs.redact_address(value), logs.redact_in(reason, value)
        self.log.warning("mailman call failed, will retry", **{key: value}, attempts=attempts,
                         retry_in=delay, error=reason)


def _done_address(address: str, applied: str | None) -> Any:
    """Unmark ``address`` unless the roster changed it again meanwhile (the trigger marked
    it anew, with attempts 0 and what it now wants): then it is applied once more."""
    def job(conn: sqlite3.Connection) -> None:
        if wanted_one(conn, address) == applied:
            conn.execute("DELETE FROM mailman_pending WHERE address = ?", (address,))

    return job
