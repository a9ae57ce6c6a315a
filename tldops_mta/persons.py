"""One person's data: all we hold about an address (a data-access request), and its erasure.

A person is known here by a mail address: as an SSC on the roster (with a name and a phone
number), as the sender of mail we received, as a recipient of mail we sent, as a
requester, an IANA administrative contact, a token holder, a bounce.

``export`` gathers only what is about that person: from a roster change it takes that
person's entries, not the other SSCs of the ccTLD.

``erase`` removes the person in one transaction: off the roster (recorded as a roster
change "by erasure"), the octets of every message that names them, their address, name and
phone number wherever a row or an audit record keeps them (replaced by ``[erased]``, so
the audit trail stays whole and says that something was erased, never whom), and leaves
one ``erasures`` row that counts what changed.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from .texts import counted

ERASED = "[erased]"


class EraseRefused(Exception):
    """Nothing was changed; the reason says what to do."""


def normalise(address: str) -> str:
    return address.strip().lower()


def _mentions(address: str) -> re.Pattern[str]:
    """The address as a whole word (ann@x.org, not the end of joann@x.org), any case."""
    return re.compile(rf"(?<![A-Za-z0-9._%+-]){re.escape(address)}(?![A-Za-z0-9.-]*[A-Za-z0-9])",
                      re.IGNORECASE)


def _like(address: str) -> str:
    return "%" + address.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _own_entries(entries_json: str, address: str) -> list[dict[str, Any]]:
    try:
        entries = json.loads(entries_json)
    except ValueError:
        return []
    return [e for e in entries if isinstance(e, dict) and str(e.get("email", "")).lower() == address]


# -- export -----------------------------------------------------------------------------


def export(conn: sqlite3.Connection, address: str) -> dict[str, Any]:
    a = normalise(address)
    like = _like(a)
    rx = _mentions(a)

    def rows(sql: str, *params: Any) -> list[Any]:
        return conn.execute(sql, params).fetchall()

    out: dict[str, Any] = {"address": a}
    out["roster"] = [
        {"tld": r[0], "role": r[1], "first_name": r[2], "last_name": r[3], "phone": r[4],
         "email": r[5], "since": r[6]}
        for r in rows("SELECT tld, role, first_name, last_name, phone, email, since FROM roster"
                      " WHERE lower(email) = ?", a)]
    out["roster_changes"] = [
        {"id": r[0], "tld": r[1], "at": r[2], "before": _own_entries(r[3], a),
         "after": _own_entries(r[4], a), "by": r[5] if r[5] and rx.search(r[5]) else None}
        for r in rows("SELECT id, tld, at, before, after, by FROM roster_changes WHERE before LIKE ?"
                      " ESCAPE '\\' OR after LIKE ? ESCAPE '\\' OR by LIKE ? ESCAPE '\\'", like, like, like)
        if _own_entries(r[3], a) or _own_entries(r[4], a) or (r[5] and rx.search(r[5]))]
    out["requests"] = [
        {"id": r[0], "tld": r[1], "as": [w for w, v in (("requester", r[2]), ("iana_admin", r[3]))
                                         if normalise(v) == a],
         "action": r[4], "state": r[5], "created_at": r[6]}
        for r in rows("SELECT id, tld, requester, admin_email, action, state, created_at FROM requests"
                      " WHERE lower(requester) = ? OR lower(admin_email) = ?", a, a)]
    out["request_events"] = [
        {"id": r[0], "request_id": r[1], "at": r[2], "event": r[3], "who": r[4], "auth": r[5]}
        for r in rows("SELECT id, request_id, at, event, who, auth FROM request_events"
                      " WHERE who LIKE ? ESCAPE '\\'", like) if rx.search(r[4] or "")]
    out["tokens"] = [
        {"purpose": r[0], "created_at": r[1], "expires_at": r[2], "used_at": r[3]}
        for r in rows("SELECT purpose, created_at, expires_at, used_at FROM tokens"
                      " WHERE lower(address) = ?", a)]
    out["mail_received"] = [
        {"queue_id": r[0], "received_at": r[1], "status": r[2], "size": r[3],
         "services": json.loads(r[4]) if r[4] else None}
        for r in rows("SELECT queue_id, received_at, status, size, services FROM spool"
                      " WHERE lower(mail_from) = ?", a)]
    out["mail_sent"] = [
        {"purpose": r[0], "created_at": r[1], "status": r[2], "updated_at": r[3]}
        for r in rows("SELECT m.purpose, m.created_at, d.status, d.updated_at FROM outbox_deliveries d"
                      " JOIN outbox_messages m ON m.id = d.message_id WHERE lower(d.rcpt) = ?", a)]
    out["bounces"] = [{"received_at": r[0], "permanent": bool(r[1])}
                      for r in rows("SELECT received_at, permanent FROM bounces WHERE lower(address) = ?", a)]
    out["iana_admin_of"] = sorted({r[0] for r in rows(
        "SELECT tld FROM iana_contacts WHERE lower(admin_email) = ?"
        " UNION SELECT tld FROM cctlds WHERE lower(admin_email) = ?", a, a)})
    out["list_posts"] = [{"message_id": r[0], "tlp": r[1], "at": r[2], "recipients": r[3]} for r in rows(
        "SELECT original_message_id, tlp, created_at, recipients FROM list_posts WHERE lower(author) = ?", a)]
    out["list_held"] = [{"message_id": r[0], "subject": r[1], "tlp": r[2], "held_at": r[3], "state": r[4],
                         "decided_at": r[5], "reason": r[6]} for r in rows(
        "SELECT original_message_id, subject, tlp, held_at, state, decided_at, reason FROM list_held"
        " WHERE lower(author) = ?", a)]
    out["invitations"] = [{"tld": r[0], "sent_at": r[1]} for r in rows(
        "SELECT tld, sent_at FROM invitations WHERE lower(admin_email) = ?", a)]
    out["automatic_replies"] = [{"kind": r[0], "last_sent": r[1]} for r in rows(
        "SELECT kind, last_sent FROM auto_replies WHERE lower(address) = ?", a)]
    return out


def holds_anything(found: dict[str, Any]) -> bool:
    return any(v for k, v in found.items() if k != "address")


# -- erase ------------------------------------------------------------------------------


def erase(conn: sqlite3.Connection, address: str, *, by: str, reason: str, now: float) -> dict[str, int]:
    """Erase ``address`` and what comes with it; the counts per table. Runs in the caller's
    transaction (``storage.commit_one``): all of it or none."""
    a = normalise(address)
    rx = _mentions(a)
    like = _like(a)
    counts: dict[str, int] = {}

    def count(name: str, n: int) -> None:
        if n:
            counts[name] = counts.get(name, 0) + n

    # Mail still being processed may name them: erasing under the worker would race it.
    busy = conn.execute(
        "SELECT count(*) FROM spool s JOIN spool_messages m ON m.id = s.id"
        " WHERE s.status IN ('received', 'processing') AND instr(lower(CAST(m.raw AS TEXT)), ?) > 0",
        (a,)).fetchone()[0]
    if busy:
        raise EraseRefused(f"mail naming this address is still being processed ({counted(busy, 'message')}); "
                           "try again once the spool has no waiting mail (tldops status)")

    # Their name and phone number, as the roster and its history know them: scrubbed too.
    secrets_ = {a}
    for first, last, phone in conn.execute(
            "SELECT first_name, last_name, phone FROM roster WHERE lower(email) = ?", (a,)):
        secrets_ |= {f"{first} {last}", phone}
    for before, after in conn.execute("SELECT before, after FROM roster_changes WHERE before LIKE ?"
                                      " ESCAPE '\\' OR after LIKE ? ESCAPE '\\'", (like, like)):
        for e in _own_entries(before, a) + _own_entries(after, a):
            secrets_ |= {f"{e.get('first_name', '')} {e.get('last_name', '')}", str(e.get("phone", ""))}
    secrets_ = {s for s in secrets_ if len(s.strip()) >= 3}

    def scrub_text(text: str) -> str:
        out = rx.sub(ERASED, text)
        for s in secrets_ - {a}:
            out = out.replace(s, ERASED)
        return out

    def scrub(text: str | None) -> str | None:
        """Free text, or JSON (kept JSON, each entry of theirs kept in its shape)."""
        if text is None:
            return None
        try:
            value = json.loads(text)
        except ValueError:
            return scrub_text(text)
        return json.dumps(_scrub_value(value, a, scrub_text), ensure_ascii=False)

    # The roster: off it, recorded as a change like any other (the SSC left).
    for (tld,) in conn.execute("SELECT DISTINCT tld FROM roster WHERE lower(email) = ?", (a,)).fetchall():
        before = conn.execute("SELECT role, first_name, last_name, phone, email FROM roster WHERE tld = ?"
                              " ORDER BY role", (tld,)).fetchall()
        conn.execute("DELETE FROM roster WHERE tld = ? AND lower(email) = ?", (tld, a))
        after = [r for r in before if r[4].lower() != a]
        conn.execute("INSERT INTO roster_changes (request_id, tld, at, before, after, by)"
                     " VALUES (NULL,?,?,?,?,?)",
                     (tld, now, scrub(_entries_json(before)), _entries_json(after), "erasure"))
        count("roster", len(before) - len(after))

    # Audit records keep their shape; the person's entries and mentions go.
    for rid, before, after, who in conn.execute(
            "SELECT id, before, after, by FROM roster_changes WHERE before LIKE ? ESCAPE '\\'"
            " OR after LIKE ? ESCAPE '\\' OR by LIKE ? ESCAPE '\\'", (like, like, like)).fetchall():
        conn.execute("UPDATE roster_changes SET before = ?, after = ?, by = ? WHERE id = ?",
                     (scrub(before), scrub(after), scrub(who), rid))
        count("roster_changes", 1)
    for rid, requester, admin, evidence, change in conn.execute(
            "SELECT id, requester, admin_email, evidence, change FROM requests WHERE lower(requester) = ?"
            " OR lower(admin_email) = ? OR evidence LIKE ? ESCAPE '\\' OR change LIKE ? ESCAPE '\\'",
            (a, a, like, like)).fetchall():
        conn.execute("UPDATE requests SET requester = ?, admin_email = ?, evidence = ?, change = ?"
                     " WHERE id = ?", (scrub(requester), scrub(admin), scrub(evidence), scrub(change), rid))
        count("requests", 1)
    events = conn.execute("SELECT id, who, evidence, reason FROM request_events WHERE who LIKE ? ESCAPE '\\'"
                          " OR evidence LIKE ? ESCAPE '\\' OR reason LIKE ? ESCAPE '\\'",
                          (like, like, like)).fetchall()
    if events:
        # The audit log is append-only (triggers); an erasure is the one exception, made in
        # this transaction, the triggers back before it commits.
        triggers = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger'"
                                " AND tbl_name = 'request_events'").fetchall()
        conn.execute("DROP TRIGGER IF EXISTS request_events_no_update")
        for eid, who, evidence, why in events:
            conn.execute("UPDATE request_events SET who = ?, evidence = ?, reason = ? WHERE id = ?",
                         (scrub(who), scrub(evidence), scrub(why), eid))
        conn.execute("DROP TRIGGER IF EXISTS request_events_no_delete")
        for (sql,) in triggers:
            conn.execute(sql)
        count("request_events", len(events))
    from . import list_desk  # their unconfirmed list posts, kept in their tokens

    count("list_posts_unconfirmed", list_desk.forget_posts(conn, address=a))
    count("tokens", conn.execute(
        "UPDATE tokens SET address = ?, used_at = coalesce(used_at, ?) WHERE lower(address) = ?",
        (ERASED, now, a)).rowcount)

    # Mail: the octets of every message that names them, in and out.
    for sid, mail_from, rcpts in conn.execute(
            "SELECT id, mail_from, rcpt_to FROM spool"
            " WHERE lower(mail_from) = ? OR rcpt_to LIKE ? ESCAPE '\\'"
            " OR id IN (SELECT id FROM spool_messages WHERE instr(lower(CAST(raw AS TEXT)), ?) > 0)",
            (a, like, a)).fetchall():
        conn.execute("UPDATE spool SET mail_from = ?, rcpt_to = ? WHERE id = ?",
                     (scrub(mail_from), scrub(rcpts), sid))
        count("spool_messages", conn.execute("DELETE FROM spool_messages WHERE id = ?", (sid,)).rowcount)
    count("outbox_not_sent", conn.execute(
        "UPDATE outbox_deliveries SET status = 'failed', last_error = 'recipient erased', updated_at = ?"
        " WHERE lower(rcpt) = ? AND status = 'queued'", (now, a)).rowcount)
    count("outbox_deliveries", conn.execute(
        "UPDATE outbox_deliveries SET rcpt = ? WHERE lower(rcpt) = ?", (ERASED, a)).rowcount)
    count("outbox_messages", conn.execute(
        "UPDATE outbox_messages SET raw = x''"
        " WHERE length(raw) > 0 AND instr(lower(CAST(raw AS TEXT)), ?) > 0"
        " AND NOT EXISTS (SELECT 1 FROM outbox_deliveries d WHERE d.message_id = outbox_messages.id"
        "                 AND d.status = 'queued')", (a,)).rowcount)

    for table, column in (("bounces", "address"), ("bounce_reports", "address"),
                          ("auto_replies", "address"), ("iana_contacts", "admin_email")):
        count(table, conn.execute(f"DELETE FROM {table} WHERE lower({column}) = ?", (a,)).rowcount)  # noqa: S608
    count("cctlds", conn.execute("UPDATE cctlds SET admin_email = NULL WHERE lower(admin_email) = ?",
                                 (a,)).rowcount)
    count("list_posts", conn.execute("UPDATE list_posts SET author = ? WHERE lower(author) = ?",
                                     (ERASED, a)).rowcount)
    # A held post of theirs, or naming them, loses its octets, so it can no longer be released.
    count("list_held", conn.execute(
        "UPDATE list_held SET author = CASE WHEN lower(author) = ?1 THEN ?2 ELSE author END,"
        " subject = CASE WHEN lower(author) = ?1 THEN ?2 ELSE subject END, raw = x'',"
        " state = CASE state WHEN 'held' THEN 'rejected' ELSE state END,"
        " decided_by = CASE state WHEN 'held' THEN 'erasure' ELSE decided_by END,"
        " decided_at = CASE state WHEN 'held' THEN ?3 ELSE decided_at END"
        " WHERE lower(author) = ?1 OR instr(lower(CAST(raw AS TEXT)), ?1) > 0", (a, ERASED, now)).rowcount)
    count("invitations", conn.execute("UPDATE invitations SET admin_email = ? WHERE lower(admin_email) = ?",
                                      (ERASED, a)).rowcount)
    count("redelegations", conn.execute(
        "UPDATE redelegations SET old_admin = CASE WHEN lower(old_admin) = ?1 THEN ?2 ELSE old_admin END,"
        " new_admin = CASE WHEN lower(new_admin) = ?1 THEN ?2 ELSE new_admin END"
        " WHERE lower(old_admin) = ?1 OR lower(new_admin) = ?1", (a, ERASED)).rowcount)

    conn.execute("INSERT INTO erasures (at, by, reason, counts) VALUES (?, ?, ?, ?)",
                 (now, by, reason, json.dumps(counts, sort_keys=True)))
    return counts


def _entries_json(rows: Iterable[tuple[str, str, str, str, str]]) -> str:
    keys = ("role", "first_name", "last_name", "phone", "email")
    return json.dumps([dict(zip(keys, r, strict=True)) for r in rows], ensure_ascii=False)


_PERSONAL = ("first_name", "last_name", "phone", "email")


def _scrub_value(value: Any, address: str, scrub_text: Callable[[str], str]) -> Any:
    """An entry (a dict with an ``email``) of theirs keeps its keys, its personal values
    become ``[erased]`` (code reading the history still finds the shape it expects); any
    string elsewhere loses their address, name and number."""
    if isinstance(value, dict):
        mine = str(value.get("email", "")).lower() == address
        return {k: ERASED if mine and k in _PERSONAL else _scrub_value(v, address, scrub_text)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_value(v, address, scrub_text) for v in value]
    if isinstance(value, str):
        return scrub_text(value)
    return value
