"""One-time tokens: the nonce-based validation the SECIR report recommends.

A token is mailed only to an address IANA lists, inside the address the answer must reach
(``confirm+TOKEN@``). Only its SHA-256 is stored, so the database alone cannot confirm
anything; it is single-use and expires.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

TOKEN_BYTES = 24
"""192 bits from the OS's CSPRNG (at least 128 are required)."""


def new_token() -> str:
    """URL-safe base64, so it fits a local part: [A-Za-z0-9_-]."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def issue(token: str, purpose: str, request_id: int | None, address: str, *, now: float,
          ttl: float, payload: str | None = None) -> Callable[[sqlite3.Connection], None]:
    """``payload``: what redeeming it carries out, when the purpose needs more than the
    request (a Validator's decision waiting for confirmation)."""
    def job(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO tokens (hash, purpose, request_id, address, created_at, expires_at, payload)"
            " VALUES (?,?,?,?,?,?,?)",
            (token_hash(token), purpose, request_id, address, now, now + ttl, payload))

    return job


@dataclass(frozen=True)
class Redemption:
    request_id: int | None
    """The request confirmed, or None when the token did not count."""
    reason: str
    purpose: str | None = None
    payload: str | None = None
    again: bool = False
    """This message had used it already (and what it confirms committed with that use)."""


def redeem(token: str, purposes: frozenset[str], sender_key: str | None, now: float,
           spool_id: int) -> Callable[[sqlite3.Connection], Redemption]:
    """Use a token once. It counts only if it exists for one of these purposes, is unused
    and unexpired, and the answer comes From the address it was sent to. The message that
    used it (``spool_id``) finds it as it left it, processed again: its own use, never
    "already used"."""

    def job(conn: sqlite3.Connection) -> Redemption:
        row = conn.execute(
            "SELECT request_id, address, expires_at, used_at, purpose, payload, used_by FROM tokens"
            " WHERE hash = ?", (token_hash(token),)).fetchone()
        if row is None or row[4] not in purposes:
            return Redemption(None, "unknown token")
        request_id, address, expires_at, used_at, purpose, payload, used_by = row
        if used_at is not None and used_by == spool_id and sender_key == address:
            return Redemption(int(request_id or 0), "confirmed", purpose, payload, again=True)
        if used_at is not None:
            return Redemption(None, "token already used")
        if expires_at <= now:
            return Redemption(None, "token expired")
        if sender_key != address:
            return Redemption(None, "answer does not come from the address the token was sent to")
        conn.execute("UPDATE tokens SET used_at = ?, used_by = ? WHERE hash = ?",
                     (now, spool_id, token_hash(token)))
        return Redemption(int(request_id or 0), "confirmed", purpose, payload)

    return job


def find(token: str, purpose: str, now: float,
         ) -> Callable[[sqlite3.Connection], tuple[int, str] | None]:
    """(request id, address it was sent to) of a live token, without using it up: a
    Validator's decide+TOKEN@ address stays valid while its request is open (an escalated
    request comes back through it), and the request's state decides what may still happen."""

    def job(conn: sqlite3.Connection) -> tuple[int, str] | None:
        row = conn.execute("SELECT request_id, address, expires_at FROM tokens"
                           " WHERE hash = ? AND purpose = ?", (token_hash(token), purpose)).fetchone()
        if row is None or row[2] <= now:
            return None
        return int(row[0]), str(row[1])

    return job
