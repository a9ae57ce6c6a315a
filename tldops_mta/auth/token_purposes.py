"""What a one-time token is for: each purpose declared once, beside the desk that issues it.

The confirm+TOKEN@ desk looks a redeemed token's purpose up here to carry out what it
confirms and to say so (the spool's reason, the log line after the commit); adding a purpose
is one declaration, not a branch in that desk.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from tldops_mta.settings.live import Live
from tldops_mta.store import tokens

Redeem = Callable[[Live, sqlite3.Connection, tokens.Redemption, str, float], str]
"""(live, conn, the token's use, its sender's address, now) -> what became of it: carried
out in the transaction that uses the token and records the message's outcome."""


@dataclass(frozen=True)
class Purpose:
    name: str
    """As stored in the tokens table."""
    owner: str
    """Who issues it: a service address's desk, or the component that mails it."""
    redeem: Redeem | None
    """What answering confirm+TOKEN@ carries out; None for a token answered elsewhere."""
    said: str = ""
    """The spool's reason once it counted ({request_id} and {result} filled in)."""
    event: str = ""
    """The log line said once it committed ..."""
    logged: tuple[str, ...] = ()
    """... and which of request_id and result it names."""
    about_a_request: bool = False
    """Its token belongs to a request (the message is then tied to it in the log)."""


class DuplicatePurpose(ValueError):
    """Two declarations of one purpose: which of them a token's answer means is unknowable."""


def registry(*declared: Iterable[Purpose]) -> Mapping[str, Purpose]:
    """Every purpose by name, each declared exactly once."""
    found: dict[str, Purpose] = {}
    for group in declared:
        for purpose in group:
            if purpose.name in found:
                raise DuplicatePurpose(f"token purpose {purpose.name!r} declared by"
                                       f" {found[purpose.name].owner} and {purpose.owner}")
            found[purpose.name] = purpose
    return found
