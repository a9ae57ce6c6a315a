"""SMTP replies: the ones we send, and enhanced status codes for the ones aiosmtpd sends.

We advertise ENHANCEDSTATUSCODES (RFC 2034), which obliges every 2xx/4xx/5xx reply after the
greeting and EHLO to carry one. aiosmtpd's built-in replies mostly lack them, so
``with_enhanced_code`` adds the right one by reply code.
"""

from __future__ import annotations

import re

# Our own replies, named so tests and code speak of the same thing.
OK_SENDER = "250 2.1.0 Sender OK"
OK_RECIPIENT = "250 2.1.5 Recipient OK"
NO_SUCH_USER = "550 5.1.1 No such recipient here"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
TOO_MANY_FROM_YOU = "421 4.7.0 Too many connections from your address, try again later"
TOO_MANY_COMMANDS = "421 4.7.0 Too many commands in one session"
IDLE_TIMEOUT = "421 4.4.2 Timeout, closing connection"
SESSION_TIMEOUT = "421 4.4.2 Session too long, closing connection"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
STORAGE_FAILED = "451 4.3.0 Could not store the message, try again later"
STORAGE_FULL = "452 4.3.1 Insufficient system storage, try again later"
INTERNAL_ERROR = "451 4.3.0 Internal error, try again later"
LINE_TOO_LONG = "500 5.5.2 Line too long (998 octets at most, RFC 5322 2.1.1)"
BARE_LINE_ENDING = "550 5.6.11 Bare CR or LF in message; lines must end in CRLF"
NUL_BYTE = "550 5.6.0 NUL byte in message"
TOO_BIG = "552 5.3.4 Message too big"
XFORWARD_REFUSED = "550 5.7.0 XFORWARD is only for the relays this server trusts"
XFORWARD_IN_TRANSACTION = "503 5.5.1 XFORWARD comes before MAIL"
XFORWARD_SYNTAX = "501 5.5.4 Syntax: XFORWARD attribute=value ... (NAME ADDR PORT PROTO HELO IDENT SOURCE)"
NO_AUTH = "502 5.5.1 AUTH not supported; no authentication is needed to send here"
TLS_FAILED = "454 4.7.0 TLS handshake failed"
BAD_HELO = "501 5.5.4 Syntax: {verb} hostname (printable UTF-8)"
BAD_SENDER = "553 5.1.7 Sender address is not printable UTF-8"
BAD_RECIPIENT = "553 5.1.3 Recipient address is not printable UTF-8"


def queued(queue_id: str) -> str:
    return f"250 2.0.0 Ok: queued as {queue_id}"


def bad_path(reason: str, *, syntax: bool, sender: bool) -> str:
    """A MAIL FROM or RCPT TO address refused: 501 where the argument is no RFC 5321 path
    at all, 553 where it is one whose mailbox is not allowed here; X.1.7 for the sender,
    X.1.3 for a recipient (RFC 3463)."""
    code = "5.1.7" if sender else "5.1.3"
    if syntax:
        return f"501 {code} Syntax: {reason} (RFC 5321 4.1.2)"
    return f"553 {code} Address not accepted: {reason}"


_HAS_ENHANCED = re.compile(r"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}(\s|$)")

_BY_CODE = {
    "221": "2.0.0", "250": "2.0.0", "252": "2.5.0",
    "421": "4.3.0", "451": "4.3.0", "452": "4.3.1", "454": "4.7.0",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "530": "5.7.0", "550": "5.0.0", "552": "5.3.4", "553": "5.1.3", "554": "5.7.0",
    "555": "5.5.4",
}


def with_enhanced_code(reply: str) -> str:
    """Insert an enhanced status code after the reply code where one is missing.

    Intermediate (3xx) replies and replies that already carry one pass unchanged.
    """
    code = reply[:3]
    if code[:1] not in ("2", "4", "5") or _HAS_ENHANCED.match(reply):
        return reply
    enhanced = _BY_CODE.get(code, f"{code[0]}.0.0")
    sep = reply[3:4] or " "
    return f"{code}{sep}{enhanced} {reply[4:]}".rstrip()
