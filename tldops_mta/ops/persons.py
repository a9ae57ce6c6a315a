"""One person's data: all we hold about an address (a data-access request), and its erasure.

A person is known here by a mail address: as an SSC on the roster (with a name and a phone
number), as the sender of mail we received, as a recipient of mail we sent, as a
requester, an IANA administrative contact, a token holder, a bounce.

``find`` is the one place that decides which rows name the person; ``export`` shows those
rows and ``erase`` changes those rows, so what a person is shown is what an erasure touches.
``export`` gives only what is about that person: from a roster change it takes that
person's entries, not the other SSCs of the ccTLD.

``erase`` removes the person in one transaction: off the roster (recorded as a roster
change "by erasure"), the octets of every message that names them, their address, name and
phone number wherever a row or an audit record keeps them (replaced by ``[erased]``, so
the audit trail stays whole and says that something was erased, never whom), and leaves
one ``erasures`` row that counts what changed.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tldops_mta.desks import list_desk
from tldops_mta.desks.list_desk import PURPOSE_POST
from tldops_mta.policy.texts import counted

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


# -- what names the person --------------------------------------------------------------

KINDS = ("roster", "roster_changes", "requests", "request_events", "tokens", "list_posts_unconfirmed",
         "spool_messages", "outbox_deliveries", "outbox_messages", "bounces", "bounce_reports",
         "auto_replies", "iana_contacts", "cctlds", "list_posts", "list_held", "invitations",
         "redelegations", "freshness", "freshness_mails")
"""Each kind of record that can name a person, by the table it lives in: the sections of
``export`` and the counts of ``erase``. ``list_posts_unconfirmed`` are their tokens that
still carry an unconfirmed post."""


@dataclass(frozen=True)
class Found:
    """The rows (SQLite rowids, per kind) that name an address: what ``export`` shows and
    ``erase`` changes, found once by ``find`` so that the two cannot disagree."""

    address: str
    ids: dict[str, list[int]]

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.ids.items() if v}


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def find(conn: sqlite3.Connection, address: str) -> Found:
    """Every row that names ``address``: as its own value (roster entry, sender, recipient,
    token holder, author ...) or as a whole word in a text, JSON or message that mentions it.
    The SQL narrows by substring; the word match then decides (ann@x.org is not in
    joann@x.org)."""
    a = normalise(address)
    rx = _mentions(a)
    like = _like(a)

    def names(*values: Any) -> bool:
        return any(rx.search(_text(v)) for v in values)

    def ids(sql: str, *params: Any, check: bool = True) -> list[int]:
        """The rowid (first column) of each row the query gives whose other columns name them."""
        return [r[0] for r in conn.execute(sql, params) if not check or names(*r[1:])]

    return Found(a, {
        "roster": ids("SELECT rowid FROM roster WHERE lower(email) = ?", a, check=False),
        "roster_changes": ids(
            "SELECT id, before, after, by FROM roster_changes WHERE before LIKE ?1 ESCAPE '\\'"
            " OR after LIKE ?1 ESCAPE '\\' OR by LIKE ?1 ESCAPE '\\' ORDER BY id", like),
        "requests": ids(
            "SELECT id, requester, admin_email, evidence, change FROM requests WHERE requester LIKE ?1"
            " ESCAPE '\\' OR admin_email LIKE ?1 ESCAPE '\\' OR evidence LIKE ?1 ESCAPE '\\'"
            " OR change LIKE ?1 ESCAPE '\\' ORDER BY id", like),
        "request_events": ids(
            "SELECT id, who, evidence, reason FROM request_events WHERE who LIKE ?1 ESCAPE '\\'"
            " OR evidence LIKE ?1 ESCAPE '\\' OR reason LIKE ?1 ESCAPE '\\' ORDER BY id", like),
        "tokens": ids("SELECT rowid FROM tokens WHERE lower(address) = ? ORDER BY created_at, rowid", a,
                      check=False),
        "list_posts_unconfirmed": ids(
            "SELECT rowid FROM tokens WHERE lower(address) = ? AND purpose = ?"
            " AND json_extract(payload, '$.raw') IS NOT NULL ORDER BY created_at, rowid", a, PURPOSE_POST,
            check=False),
        "spool_messages": ids(
            "SELECT s.id, s.mail_from, s.rcpt_to, s.reason, m.raw FROM spool s"
            " LEFT JOIN spool_messages m ON m.id = s.id WHERE lower(s.mail_from) = ?1 OR s.lane_key = ?1"
            " OR s.rcpt_to LIKE ?2 ESCAPE '\\' OR s.reason LIKE ?2 ESCAPE '\\'"
            " OR instr(lower(CAST(m.raw AS TEXT)), ?1) > 0 ORDER BY s.id", a, like),
        "outbox_deliveries": ids("SELECT id FROM outbox_deliveries WHERE lower(rcpt) = ? ORDER BY id", a,
                                 check=False),
        # A message that still waits for someone else keeps its octets until it has gone.
        "outbox_messages": ids(
            "SELECT id, raw FROM outbox_messages m WHERE length(raw) > 0"
            " AND instr(lower(CAST(raw AS TEXT)), ?1) > 0"
            " AND NOT EXISTS (SELECT 1 FROM outbox_deliveries d WHERE d.message_id = m.id"
            "                 AND d.status = 'queued' AND lower(d.rcpt) != ?1) ORDER BY id", a),
        "bounces": ids("SELECT id FROM bounces WHERE lower(address) = ? ORDER BY id", a, check=False),
        "bounce_reports": ids("SELECT rowid FROM bounce_reports WHERE lower(address) = ?", a, check=False),
        "auto_replies": ids("SELECT rowid FROM auto_replies WHERE lower(address) = ? ORDER BY kind", a,
                            check=False),
        "iana_contacts": ids("SELECT id FROM iana_contacts WHERE lower(admin_email) = ? ORDER BY id", a,
                             check=False),
        "cctlds": ids("SELECT rowid FROM cctlds WHERE lower(admin_email) = ? ORDER BY tld", a, check=False),
        "list_posts": ids("SELECT id FROM list_posts WHERE lower(author) = ? ORDER BY id", a, check=False),
        "list_held": ids("SELECT id, author, raw FROM list_held WHERE lower(author) = ?1"
                         " OR instr(lower(CAST(raw AS TEXT)), ?1) > 0 ORDER BY id", a),
        "invitations": ids("SELECT id FROM invitations WHERE lower(admin_email) = ? ORDER BY id", a,
                           check=False),
        "redelegations": ids("SELECT id FROM redelegations WHERE lower(old_admin) = ?1"
                             " OR lower(new_admin) = ?1 ORDER BY id", a, check=False),
        "freshness": ids("SELECT rowid FROM freshness WHERE email = ? ORDER BY tld", a, check=False),
        "freshness_mails": ids("SELECT id FROM freshness_mails WHERE email = ? ORDER BY id", a, check=False),
    })


# -- export -----------------------------------------------------------------------------


def _iso(t: float | None) -> str | None:
    """A time as ISO 8601 in UTC (2026-12-02T17:26:58Z)."""
    return None if t is None else dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_EXPORT: dict[str, str] = {
    "roster": "SELECT rowid, tld, role, first_name, last_name, phone, email, since FROM roster"
              " WHERE rowid = ?",
    "roster_changes": "SELECT id, tld, at, before, after, by, request_id FROM roster_changes WHERE id = ?",
    "requests": "SELECT id, tld, requester, admin_email, evidence, change, action, state, created_at"
                " FROM requests WHERE id = ?",
    "request_events": "SELECT id, request_id, at, event, who, auth, evidence, reason FROM request_events"
                      " WHERE id = ?",
    "tokens": "SELECT rowid, purpose, request_id, created_at, expires_at, used_at FROM tokens"
              " WHERE rowid = ?",
    "list_posts_unconfirmed": "SELECT rowid, created_at, expires_at,"
                              " json_extract(payload, '$.spool_id') FROM tokens WHERE rowid = ?",
    "spool_messages": "SELECT s.id, s.queue_id, s.received_at, s.status, s.size, s.services, s.mail_from,"
                      " s.rcpt_to, m.raw, s.lane_key FROM spool s LEFT JOIN spool_messages m ON m.id = s.id"
                      " WHERE s.id = ?",
    "outbox_deliveries": "SELECT d.id, d.message_id, m.purpose, m.created_at, d.status, d.updated_at"
                         " FROM outbox_deliveries d JOIN outbox_messages m ON m.id = d.message_id"
                         " WHERE d.id = ?",
    "outbox_messages": "SELECT id, purpose, created_at FROM outbox_messages WHERE id = ?",
    "bounces": "SELECT id, received_at, permanent FROM bounces WHERE id = ?",
    "bounce_reports": "SELECT rowid, reported_at, failures FROM bounce_reports WHERE rowid = ?",
    "auto_replies": "SELECT rowid, kind, last_sent FROM auto_replies WHERE rowid = ?",
    "iana_contacts": "SELECT id, tld, source, fetched_at FROM iana_contacts WHERE id = ?",
    "cctlds": "SELECT rowid, tld, checked_at FROM cctlds WHERE rowid = ?",
    "list_posts": "SELECT id, original_message_id, tlp, created_at, recipients FROM list_posts WHERE id = ?",
    "list_held": "SELECT id, original_message_id, author, subject, tlp, held_at, state, decided_at, reason"
                 " FROM list_held WHERE id = ?",
    "invitations": "SELECT id, tld, sent_at FROM invitations WHERE id = ?",
    "freshness": "SELECT rowid, tld, due_at, confirmed_at, asked_at, unconfirmed_since FROM freshness"
                 " WHERE rowid = ?",
    "freshness_mails": "SELECT id, tld, kind, at FROM freshness_mails WHERE id = ?",
    "redelegations": "SELECT id, tld, detected_at, old_admin, new_admin, resolved_at FROM redelegations"
                     " WHERE id = ?",
}
"""Per kind, the row as export shows it, selected by the rowid ``find`` gave (its first column)."""


def export(conn: sqlite3.Connection, address: str, found: Found | None = None) -> dict[str, Any]:
    """All we hold about ``address`` (a data-access request): exactly the rows ``erase``
    would change, per kind, each with its id; only what is about that person (from a roster
    change its entries, not the other SSCs of the ccTLD); times in ISO 8601 UTC."""
    found = find(conn, address) if found is None else found
    a = found.address
    rx = _mentions(a)

    def mine(value: Any) -> bool:
        return bool(rx.search(_text(value)))

    def about(kind: str, r: tuple[Any, ...]) -> dict[str, Any]:
        if kind == "roster":
            return {"id": r[0], "tld": r[1], "role": r[2], "first_name": r[3], "last_name": r[4],
                    "phone": r[5], "email": r[6], "since": _iso(r[7])}
        if kind == "roster_changes":
            return {"id": r[0], "tld": r[1], "at": _iso(r[2]), "before": _own_entries(r[3], a),
                    "after": _own_entries(r[4], a), "by": r[5] if mine(r[5]) else None, "request_id": r[6]}
        if kind == "requests":
            named = [w for w, v in (("requester", r[2]), ("iana_admin", r[3])) if normalise(v) == a]
            named += [w for w, v in (("in_evidence", r[4]), ("in_change", r[5])) if mine(v)]
            return {"id": r[0], "tld": r[1], "as": named, "action": r[6], "state": r[7],
                    "created_at": _iso(r[8])}
        if kind == "request_events":
            return {"id": r[0], "request_id": r[1], "at": _iso(r[2]), "event": r[3],
                    "who": r[4] if mine(r[4]) else None, "auth": r[5],
                    "named_in": [w for w, v in (("who", r[4]), ("evidence", r[6]), ("reason", r[7]))
                                 if mine(v)]}
        if kind == "tokens":
            return {"id": r[0], "purpose": r[1], "request_id": r[2], "created_at": _iso(r[3]),
                    "expires_at": _iso(r[4]), "used_at": _iso(r[5])}
        if kind == "list_posts_unconfirmed":
            return {"id": r[0], "created_at": _iso(r[1]), "expires_at": _iso(r[2]), "spool_id": r[3]}
        if kind == "spool_messages":
            named = [w for w, hit in (("sender", normalise(r[6]) == a), ("recipient", mine(r[7])),
                                      ("in_message", mine(r[8])), ("fast_lane", r[9] == a)) if hit]
            return {"id": r[0], "queue_id": r[1], "received_at": _iso(r[2]), "status": r[3], "size": r[4],
                    "services": json.loads(r[5]) if r[5] else None, "as": named}
        if kind == "outbox_deliveries":
            return {"id": r[0], "message_id": r[1], "purpose": r[2], "created_at": _iso(r[3]),
                    "status": r[4], "updated_at": _iso(r[5])}
        if kind == "outbox_messages":
            return {"id": r[0], "purpose": r[1], "created_at": _iso(r[2])}
        if kind == "list_held":
            return {"id": r[0], "message_id": r[1], "subject": r[3] if normalise(r[2]) == a else None,
                    "tlp": r[4], "held_at": _iso(r[5]), "state": r[6], "decided_at": _iso(r[7]),
                    "reason": r[8]}
        if kind == "redelegations":
            return {"id": r[0], "tld": r[1], "detected_at": _iso(r[2]),
                    "as": [w for w, v in (("old_admin", r[3]), ("new_admin", r[4]))
                           if normalise(v or "") == a],
                    "resolved_at": _iso(r[5])}
        return _plain(kind, r)

    out: dict[str, Any] = {"address": a}
    for kind in KINDS:
        got = (conn.execute(_EXPORT[kind], (i,)).fetchone() for i in found.ids[kind])
        out[kind] = [about(kind, r) for r in got if r is not None]  # None: gone since (the daemon's purge)
    return out


_PLAIN_FIELDS = {
    "bounces": ("id", "received_at", "permanent"),
    "bounce_reports": ("id", "reported_at", "failures"),
    "auto_replies": ("id", "kind", "last_sent"),
    "iana_contacts": ("id", "tld", "source", "fetched_at"),
    "cctlds": ("id", "tld", "checked_at"),
    "list_posts": ("id", "message_id", "tlp", "created_at", "recipients"),
    "invitations": ("id", "tld", "sent_at"),
    "freshness": ("id", "tld", "due_at", "confirmed_at", "asked_at", "unconfirmed_since"),
    "freshness_mails": ("id", "tld", "kind", "at"),
}


def _plain(kind: str, r: tuple[Any, ...]) -> dict[str, Any]:
    """A row of a kind without personal fields to pick from: its columns, times as ISO 8601."""
    out: dict[str, Any] = {}
    for name, value in zip(_PLAIN_FIELDS[kind], r, strict=True):
        out[name] = _iso(value) if name == "at" or name.endswith(("_at", "_sent", "_since")) else value
    if kind == "bounces":
        out["permanent"] = bool(out["permanent"])
    return out


def holds_anything(found: dict[str, Any]) -> bool:
    return any(v for k, v in found.items() if k != "address")


# -- erase ------------------------------------------------------------------------------


def erase(conn: sqlite3.Connection, address: str, *, by: str, reason: str, now: float) -> Found:
    """Erase ``address`` and what comes with it: the rows ``find`` gives, and only those
    (``Found.counts`` per kind, as the ``erasures`` row records them). Runs in the caller's
    transaction (``storage.commit_one``): all of it or none."""
    a = normalise(address)
    rx = _mentions(a)
    like = _like(a)

    # Mail still being processed may name them: erasing under the worker would race it.
    busy = conn.execute(
        "SELECT count(*) FROM spool s JOIN spool_messages m ON m.id = s.id"
        " WHERE s.status IN ('received', 'processing') AND instr(lower(CAST(m.raw AS TEXT)), ?) > 0",
        (a,)).fetchone()[0]
    if busy:
        raise EraseRefused(f"mail naming this address is still being processed ({counted(busy, 'message')}); "
                           "try again once the spool has no waiting mail (tldops status)")
    found = find(conn, a)
    ids = found.ids

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

    def rows(sql: str, kind: str) -> list[Any]:
        """The rows of ``kind`` that ``find`` gave (``sql`` selects one by its rowid)."""
        return [conn.execute(sql, (i,)).fetchone() for i in ids[kind]]

    # The roster: off it, recorded as a change like any other (the SSC left).
    for tld in sorted({r[0] for r in rows("SELECT tld FROM roster WHERE rowid = ?", "roster")}):
        before = conn.execute("SELECT role, first_name, last_name, phone, email FROM roster WHERE tld = ?"
                              " ORDER BY role", (tld,)).fetchall()
        conn.execute("DELETE FROM roster WHERE tld = ? AND lower(email) = ?", (tld, a))
        after = [r for r in before if r[4].lower() != a]
        conn.execute("INSERT INTO roster_changes (request_id, tld, at, before, after, by)"
                     " VALUES (NULL,?,?,?,?,?)",
                     (tld, now, scrub(_entries_json(before)), _entries_json(after), "erasure"))

    # Audit records keep their shape; the person's entries and mentions go.
    for rid, before, after, who in rows("SELECT id, before, after, by FROM roster_changes WHERE id = ?",
                                        "roster_changes"):
        conn.execute("UPDATE roster_changes SET before = ?, after = ?, by = ? WHERE id = ?",
                     (scrub(before), scrub(after), scrub(who), rid))
    for rid, requester, admin, evidence, change in rows(
            "SELECT id, requester, admin_email, evidence, change FROM requests WHERE id = ?", "requests"):
        conn.execute("UPDATE requests SET requester = ?, admin_email = ?, evidence = ?, change = ?"
                     " WHERE id = ?", (scrub(requester), scrub(admin), scrub(evidence), scrub(change), rid))
    events = rows("SELECT id, who, evidence, reason FROM request_events WHERE id = ?", "request_events")
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
    # their unconfirmed list posts, kept in their tokens (before the address goes)
    list_desk.forget_posts(conn, address=a)  # the tokens find() counted as list_posts_unconfirmed
    conn.executemany("UPDATE tokens SET address = ?, used_at = coalesce(used_at, ?) WHERE rowid = ?",
                     [(ERASED, now, i) for i in ids["tokens"]])

    # Mail: the octets of every message that names them, in and out.
    for sid, mail_from, rcpts, why in rows("SELECT id, mail_from, rcpt_to, reason FROM spool WHERE id = ?",
                                           "spool_messages"):
        # lane_key: the address whose fast-lane budget the message used (store/lanes.py).
        conn.execute("UPDATE spool SET mail_from = ?, rcpt_to = ?, reason = ?, lane_key = NULL WHERE id = ?",
                     (scrub(mail_from), scrub(rcpts), scrub(why), sid))
        conn.execute("DELETE FROM spool_messages WHERE id = ?", (sid,))
    # Mail to them not yet sent is not sent; the recipient is kept as [erased].
    for did, error in rows("SELECT id, last_error FROM outbox_deliveries WHERE id = ?", "outbox_deliveries"):
        conn.execute("UPDATE outbox_deliveries SET status = CASE status WHEN 'queued' THEN 'failed'"
                     " ELSE status END,"
                     " last_error = CASE status WHEN 'queued' THEN 'recipient erased' ELSE ? END,"
                     " updated_at = CASE status WHEN 'queued' THEN ? ELSE updated_at END, rcpt = ?"
                     " WHERE id = ?", (scrub(error), now, ERASED, did))
    conn.executemany("UPDATE outbox_messages SET raw = x'' WHERE id = ?",
                     [(i,) for i in ids["outbox_messages"]])

    for kind in ("bounces", "bounce_reports", "auto_replies", "iana_contacts"):
        conn.executemany(f"DELETE FROM {kind} WHERE rowid = ?", [(i,) for i in ids[kind]])  # noqa: S608
    conn.executemany("UPDATE cctlds SET admin_email = NULL WHERE rowid = ?", [(i,) for i in ids["cctlds"]])
    conn.executemany("UPDATE list_posts SET author = ? WHERE id = ?",
                     [(ERASED, i) for i in ids["list_posts"]])
    # A held post of theirs, or naming them, loses its octets, so it can no longer be released.
    conn.executemany(
        "UPDATE list_held SET author = CASE WHEN lower(author) = ?1 THEN ?2 ELSE author END,"
        " subject = CASE WHEN lower(author) = ?1 THEN ?2 ELSE subject END, raw = x'',"
        " state = CASE state WHEN 'held' THEN 'rejected' ELSE state END,"
        " decided_by = CASE state WHEN 'held' THEN 'erasure' ELSE decided_by END,"
        " decided_at = CASE state WHEN 'held' THEN ?3 ELSE decided_at END"
        " WHERE id = ?4", [(a, ERASED, now, i) for i in ids["list_held"]])
    conn.executemany("UPDATE invitations SET admin_email = ? WHERE id = ?",
                     [(ERASED, i) for i in ids["invitations"]])
    conn.executemany(
        "UPDATE redelegations SET old_admin = CASE WHEN lower(old_admin) = ?1 THEN ?2 ELSE old_admin END,"
        " new_admin = CASE WHEN lower(new_admin) = ?1 THEN ?2 ELSE new_admin END WHERE id = ?3",
        [(a, ERASED, i) for i in ids["redelegations"]])

    # Off the roster, they are asked nothing more; the history of what was sent keeps no address.
    conn.executemany("DELETE FROM freshness WHERE rowid = ?", [(i,) for i in ids["freshness"]])
    conn.executemany("UPDATE freshness_mails SET email = ? WHERE id = ?",
                     [(ERASED, i) for i in ids["freshness_mails"]])

    conn.execute("INSERT INTO erasures (at, by, reason, counts) VALUES (?, ?, ?, ?)",
                 (now, by, reason, json.dumps(found.counts(), sort_keys=True)))
    return found


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
