"""Checks on the octets of a message as received in DATA, before anything stores it.

Bare CR and bare LF are refused outright (not normalised): a relay that reads them as line
ends would see a different message end than we do, which is how SMTP smuggling works.
The checks use only C-level bytes operations, since they run for every message on the
event loop.
"""

from __future__ import annotations

from . import replies

MAX_LINE = 998
"""RFC 5322 2.1.1: a line is at most 998 octets, not counting CRLF."""


def refusal(content: bytes) -> str | None:
    """The SMTP reply refusing ``content``, or None if it may be spooled."""
    if b"\0" in content:
        return replies.NUL_BYTE
    crlf = content.count(b"\r\n")
    if content.count(b"\r") != crlf or content.count(b"\n") != crlf:
        return replies.BARE_LINE_ENDING
    if len(content) > MAX_LINE and max(map(len, content.split(b"\r\n"))) > MAX_LINE:
        return replies.LINE_TOO_LONG
    return None
