"""Priority lanes: which spooled messages the worker takes first, decided at intake.

Under a flood of junk to requests@, the one message that matters (a reply to a one-time
address, mail from an IANA administrative contact, a Validator or an SSC) must not wait for
the flood to drain. The spool appender decides each message's lane as it inserts it, from
what SQLite already holds and from the envelope and the From field alone (no DNS, no MIME
parse); ``spool.due`` takes the lanes in order. The lane is only an order: every message is
still authenticated in full by its desk, and a forged From gains nothing but a place in the
queue, within a small budget per address (``Budget``).

This module holds the pure parts (the From address read from the raw header octets, the
decision, the budget) and the few statements the appender runs for a whole group commit.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum


class Lane(IntEnum):
    """Stored as the integer (the claim order), shown as the word."""

    TOKEN = 0
    """A reply to a one-time address whose token is live."""
    KNOWN = 1
    """From an address the daemon knows, within its budget."""
    ORDINARY = 2

    @property
    def word(self) -> str:
        return self.name.lower()


WORDS = tuple(lane.word for lane in Lane)


def lane_word(value: int) -> str:
    return Lane(value).word


@dataclass(frozen=True)
class Budget:
    """A known address has ``messages`` messages per ``window`` seconds in the known lane;
    beyond that its mail is ordinary, so that a flood forging it cannot hold the lane."""

    messages: int = 10
    window: float = 600.0

    def left(self, earned: int) -> int:
        """Messages still allowed, ``earned`` having had the lane within the window."""
        return max(0, self.messages - earned)


DEFAULT_BUDGET = Budget()

VALIDATOR = "validator"
"""The kind of a ``lane_senders`` row written from validation.validators."""


# -- The From address, read from the header octets --------------------------------------

_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")


def header_fields(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(name, unfolded value) of each header field, up to the first line that is not one
    (the empty line, or a body without a header): the same lines the compat32 parser
    reads as the header."""
    fields: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        end = len(raw) if end < 0 else end
        line = raw[pos:end].removesuffix(b"\r")  # line by line: the body is never split
        pos = end + 1
        if line[:1] in (b" ", b"\t"):
            if not fields:
                break
            name, value = fields[-1]
            fields[-1] = (name, value + line)
            continue
        name, colon, value = line.partition(b":")
        if not colon or not _FIELD_NAME.fullmatch(name):
            break
        fields.append((name, value))
    return fields


def from_address(raw: bytes) -> str | None:
    """The address of the message's single From field, lower-cased; None when there is no
    From, more than one From field, or a From that holds more or less than one address."""
    values = [value for name, value in header_fields(raw) if name.lower() == b"from"]
    if len(values) != 1:
        return None
    return single_address(values[0].decode("utf-8", "replace"))


def single_address(value: str) -> str | None:
    """The one address of an address-list field value, or None. Quoted strings and comments
    (the display name, encoded words and all) are skipped, never decoded: only the
    angle-addr, or a bare addr-spec, is read. Ambiguity gives None (the ordinary lane)."""
    elements: list[tuple[str, list[str]]] = []  # per top-level element: its text and its <...>
    text: list[str] = []
    angles: list[str] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == '"':
            end = _quoted_end(value, i)
            if end is None:
                return None
            text.append('"')  # a quoted part: fine in a display name, not in an address here
            i = end
            continue
        if c == "(":
            end = _comment_end(value, i)
            if end is None:
                return None
            text.append(" ")
            i = end
            continue
        if c == "<":
            end = value.find(">", i)
            if end < 0:
                return None
            angles.append(value[i + 1:end])
            text.append(" ")
            i = end + 1
            continue
        if c in ":;>":
            return None  # a group, or something unbalanced
        if c == ",":
            elements.append(("".join(text), angles))
            text, angles = [], []
        else:
            text.append(c)
        i += 1
    elements.append(("".join(text), angles))
    found = [(t, a) for t, a in elements if t.strip() or a]
    if len(found) != 1:
        return None
    [(text_part, angle_parts)] = found
    if len(angle_parts) > 1:
        return None
    # The angle-addr (after an obsolete route "@a,@b:"), else the bare addr-spec.
    return _checked(angle_parts[0].strip().rpartition(":")[2] if angle_parts else text_part.strip())


def _quoted_end(value: str, start: int) -> int | None:
    i = start + 1
    while i < len(value):
        if value[i] == "\\":
            i += 2
            continue
        if value[i] == '"':
            return i + 1
        i += 1
    return None


def _comment_end(value: str, start: int) -> int | None:
    depth, i = 0, start
    while i < len(value):
        c = value[i]
        if c == "\\":
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


_SPECIALS = frozenset(' \t\r\n"<>()[],;:\\')


def _checked(address: str) -> str | None:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or "@" in local:
        return None
    if any(c in _SPECIALS for c in address):
        return None
    domain = domain.rstrip(".")
    return f"{local}@{domain}".lower() if domain else None


def token_tags(rcpt_to: Iterable[str]) -> list[str]:
    """What follows the first ``+`` of each recipient's local part (``confirm+TOKEN@``)."""
    tags = []
    for rcpt in rcpt_to:
        local = rcpt.rpartition("@")[0]
        _, plus, tag = local.partition("+")
        if plus and tag:
            tags.append(tag)
    return tags


def candidates(mail_from: str, raw: bytes) -> list[str]:
    """The addresses that may earn the known lane, in the order they are tried: the From
    address (the one the desks authenticate), then the envelope sender."""
    out: list[str] = []
    for address in (from_address(raw), mail_from.lower()):
        if address and address not in out:
            out.append(address)
    return out


# -- The decision -------------------------------------------------------------------------

@dataclass(frozen=True)
class Facts:
    """What the decision needs of one message."""

    has_token: bool
    candidates: tuple[str, ...]


def decide(facts: Facts, known: Container[str], earned: Mapping[str, int],
           budget: Budget) -> tuple[Lane, str | None]:
    """The lane, and the address that earned it (``spool.lane_key``) for the known lane.

    The first known candidate decides: it has the known lane while its budget lasts
    (``earned``: messages that had it within the window), else the message is ordinary.
    A live token is the token lane whatever the budget."""
    if facts.has_token:
        return Lane.TOKEN, None
    for address in facts.candidates:
        if address in known:
            if budget.left(earned.get(address, 0)) > 0:
                return Lane.KNOWN, address
            return Lane.ORDINARY, None
    return Lane.ORDINARY, None


def decide_all(facts: Sequence[Facts], known: Container[str], earned: Mapping[str, int],
               budget: Budget) -> list[tuple[Lane, str | None]]:
    """``decide`` for the messages of one group commit in order, each counting those
    before it that the same address earned the known lane for."""
    counts = dict(earned)
    out = []
    for f in facts:
        lane, key = decide(f, known, counts, budget)
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
        out.append((lane, key))
    return out


# -- What SQLite says -----------------------------------------------------------------------

def live_tokens(conn: sqlite3.Connection, tags: Iterable[str], now: float) -> set[str]:
    """The tags among ``tags`` that are tokens unused and unexpired at ``now``."""
    tags = list(tags)
    if not tags:
        return set()
    # hashlib brings OpenSSL's libcrypto (about 4 MB of the appender's memory): loaded with
    # the first reply to a one-time address, not by an idle daemon.
    from tldops_mta.store.tokens import token_hash
    by_hash = {token_hash(t): t for t in tags}
    rows = conn.execute(
        "SELECT hash FROM tokens WHERE hash IN (SELECT value FROM json_each(?))"
        " AND used_at IS NULL AND expires_at > ?", (json.dumps(list(by_hash)), now)).fetchall()
    return {by_hash[r[0]] for r in rows}


KNOWN_SQL = (
    "SELECT j.value FROM json_each(?) AS j WHERE"
    " EXISTS (SELECT 1 FROM lane_senders WHERE address = j.value)"
    " OR EXISTS (SELECT 1 FROM iana_contacts WHERE admin_email = j.value AND status = 'ok')"
    " OR EXISTS (SELECT 1 FROM roster WHERE lower(email) = j.value)")
"""The addresses (lower case) the daemon knows: an IANA administrative contact it was told
of, a Validator, an SSC on the roster. Each lookup is an index's (migration 0018)."""

EARNED_SQL = (
    "SELECT lane_key, count(*) FROM spool WHERE lane_key IN (SELECT value FROM json_each(?))"
    " AND received_at > ? GROUP BY lane_key")


def known(conn: sqlite3.Connection, addresses: Iterable[str]) -> set[str]:
    wanted = sorted(set(addresses))
    if not wanted:
        return set()
    return {r[0] for r in conn.execute(KNOWN_SQL, (json.dumps(wanted),))}


def earned(conn: sqlite3.Connection, addresses: Iterable[str], since: float) -> dict[str, int]:
    """How many messages each address earned the known lane for, received after ``since``."""
    wanted = sorted(set(addresses))
    if not wanted:
        return {}
    return {r[0]: int(r[1]) for r in conn.execute(EARNED_SQL, (json.dumps(wanted), since))}


def assign(conn: sqlite3.Connection, messages: Sequence[tuple[str, Sequence[str], bytes]],
           now: float, budget: Budget) -> list[tuple[Lane, str | None]]:
    """The lane and lane key of each (envelope sender, recipients, raw) of one group commit,
    in three statements however many there are."""
    tags = [token_tags(rcpt_to) for _, rcpt_to, _ in messages]
    live = live_tokens(conn, (t for ts in tags for t in ts), now)
    cands = [candidates(mail_from, raw) for mail_from, _, raw in messages]
    facts = [Facts(any(t in live for t in ts), tuple(c)) for ts, c in zip(tags, cands, strict=True)]
    seeking = [c for f in facts if not f.has_token for c in f.candidates]
    knows = known(conn, seeking)
    counts = earned(conn, knows, now - budget.window)
    return decide_all(facts, knows, counts, budget)


def set_senders(kind: str, addresses: Iterable[str]) -> Callable[[sqlite3.Connection], None]:
    """A writer job: the known addresses of ``kind`` that live in the configuration (the
    Validators), written at the worker's start and on SIGHUP for the appender to read."""
    rows = sorted({a.lower() for a in addresses})

    def job(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM lane_senders WHERE kind = ?", (kind,))
        conn.executemany("INSERT OR IGNORE INTO lane_senders (address, kind) VALUES (?, ?)",
                         [(a, kind) for a in rows])

    return job


def waiting_by_lane(conn: sqlite3.Connection) -> dict[str, int]:
    """Messages waiting for the worker, per lane word (an index's count: spool_lanes)."""
    out = dict.fromkeys(WORDS, 0)
    for lane, n in conn.execute("SELECT lane, count(*) FROM spool INDEXED BY spool_lanes"
                                " WHERE status = 'received' GROUP BY lane"):
        out[lane_word(lane)] = int(n)
    return out
