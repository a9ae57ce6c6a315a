"""Checks on the octets of a message as received in DATA, before anything stores it.

Bare CR and bare LF are refused outright (not normalised): a relay that reads them as line
ends would see a different message end than we do, which is how SMTP smuggling works.
The checks use only C-level bytes operations, since they run for every message on the
event loop.

``LongLineGuard`` stands before aiosmtpd's DATA reader, which keeps every fragment of a line
that has not ended, even once the line is too long to be accepted (its ``line_fragments``):
without it, one endless line would grow the SMTP process by its whole length.
"""

from __future__ import annotations

from tldops_mta.intake import replies

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


END_OF_DATA = b"\r\n.\r\n"


class LongLineGuard:
    """What of a DATA stream aiosmtpd may see: all of it, except the rest of a line that is
    already longer than the whole message may be (``limit``).

    That rest is dropped up to the end of data, which aiosmtpd then sees after the part of
    the line it has (at most ``limit`` octets and one read): it refuses the message as any
    long line (500 5.5.2), and the session goes on. So a session in DATA holds at most
    about ``limit``, as one with a well-formed message does. Such a message could never be
    accepted: dropping its rest changes no answer. One guard per DATA command.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.unended = 0
        """Octets since the last CRLF."""
        self.dropping = False
        self._tail = b""
        """The last octet passed on (to see a CRLF split between two reads) or, while
        dropping, the last octets dropped (to see an end of data split between two)."""

    def feed(self, data: bytes) -> bytes:
        """The part of ``data`` (one read) to pass on; empty while dropping."""
        if self.dropping:
            seen = self._tail + data
            end = seen.find(END_OF_DATA)
            if end < 0:
                self._tail = seen[1 - len(END_OF_DATA):]
                return b""
            self.dropping, self.unended, self._tail = False, 0, b""
            return seen[end:]  # the long line's CRLF, the end of data, and what follows
        end = data.rfind(b"\r\n")
        if end >= 0:
            self.unended = len(data) - end - 2
        elif self._tail == b"\r" and data[:1] == b"\n":  # a CRLF split between two reads
            self.unended = len(data) - 1
        else:
            self.unended += len(data)
        self._tail = data[-1:]
        if self.unended <= self.limit:
            return data
        self.dropping = True
        if data.endswith(b"\r"):  # may begin the end of data: judged with what follows
            self._tail = b"\r"
            return data[:-1]
        self._tail = b""
        return data
