"""The address of MAIL FROM and RCPT TO, read by RFC 5321's grammar and nothing looser.

The envelope sender is where refusals and answers go, so the address stored must be the
one the client wrote, character for character. A lenient reader turns
``<any@nic.org.mt(a.attacker.example>`` into ``any@nic.org.mt``: an address the client
never gave. So a path is taken exactly as written or refused; nothing is ever rewritten.

Refused as syntax (501): anything outside RFC 5321's Path (and RFC 6531's UTF-8 in it):
comments, missing angle brackets, spaces, stray characters, text glued to the ``>``.
Refused as a mailbox name not allowed here (553), though RFC 5321 has them: source routes
(``<@relay:user@domain>``, which RFC 5321 says to accept and ignore, i.e. to rewrite),
quoted local parts and address literals, which no sender of ours needs and which hide or
fake what the address is; and octets that are not printable UTF-8.
"""

from __future__ import annotations

import string
import unicodedata
from dataclasses import dataclass

from tldops_mta.auth.addresses import AddressError

_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")
_LET_DIG = frozenset(string.ascii_letters + string.digits)

UNPRINTABLE = "unprintable"
NOT_ALLOWED = frozenset({"route", "quoted_local", "ip_literal"})
"""The codes of paths RFC 5321 has but this server refuses (553); the other codes name
what is no path at all (501). An AddressError's ``reason`` goes into the reply: it says what
to write instead and never echoes the input."""


@dataclass(frozen=True)
class Path:
    address: str
    """As written between the angle brackets; "<>" for the null reverse-path."""
    rest: str
    """What follows the '>': empty, or the parameters after a space."""


def _printable_utf8(c: str) -> bool:
    """A UTF-8 character that shows as itself (RFC 6531's UTF8-non-ascii, minus the
    controls, invisible and space characters, and the surrogate escapes aiosmtpd hands
    non-UTF-8 octets over as)."""
    return ord(c) >= 0x80 and unicodedata.category(c)[0] not in "CZ"


def parse(arg: str, *, reverse: bool) -> Path:
    """The path at the start of a MAIL FROM (``reverse``) or RCPT TO argument."""
    if any(c < " " or c == "\x7f" or "\udc80" <= c <= "\udcff" for c in arg.partition(">")[0]):
        raise AddressError(UNPRINTABLE, "the address is not printable UTF-8")
    if not arg.startswith("<"):
        raise AddressError("no_angle", "write the address in angle brackets, as in <user@example.org>")
    if reverse and arg.startswith("<>"):
        return Path("<>", _rest(arg, 2))
    i, n = 1, len(arg)
    if arg[i:i + 1] == "@":
        raise AddressError("route", "source routes (<@host:user@domain>) are not accepted; "
                                    "write only <user@domain>")
    if arg[i:i + 1] == '"':
        raise AddressError("quoted_local", "a local part in double quotes is not accepted; write "
                                           "<user@domain> with a plain local part")
    start = i
    while i < n and (arg[i] in _ATEXT or arg[i] == "." or _printable_utf8(arg[i])):
        i += 1
    local = arg[start:i]
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise AddressError("local_dots", "the local part starts or ends with a dot, or has two in a row")
    if arg[i:i + 1] == ">" and not reverse and local.lower() == "postmaster":
        return Path(local, _rest(arg, i + 1))  # RCPT TO:<Postmaster> (RFC 5321 4.1.1.3)
    if arg[i:i + 1] != "@" or not local:
        raise _unexpected(arg, i, "write <user@domain>")
    i += 1
    if arg[i:i + 1] == "[":
        raise AddressError("ip_literal", "address literals (user@[192.0.2.1]) are not accepted; "
                                         "write the domain name")
    start = i
    while i < n and (arg[i] in _LET_DIG or arg[i] in "-." or _printable_utf8(arg[i])):
        i += 1
    domain = arg[start:i]
    for label in domain.split("."):
        if not label or label.startswith("-") or label.endswith("-"):
            raise AddressError("domain_label", "the domain has an empty label or a label that starts or "
                                               "ends with a hyphen; write the domain name without a "
                                               "trailing dot")
    if arg[i:i + 1] != ">":
        raise _unexpected(arg, i, "the address ends at '>'")
    return Path(arg[1:i], _rest(arg, i + 1))


def _rest(arg: str, i: int) -> str:
    rest = arg[i:]
    if rest and rest[0] != " ":
        raise AddressError("trailing_text", "text follows the '>' without a space; parameters come after "
                                            "a space")
    return rest


def _unexpected(arg: str, i: int, hint: str) -> AddressError:
    c = arg[i:i + 1]
    if c in ("(", ")"):
        return AddressError("comment", "comments in parentheses are not allowed in an envelope "
                                       "address; write <user@domain> alone")
    if c == "":
        return AddressError("unclosed_angle", f"the address has no closing '>'; {hint}")
    if c == ">" and arg[i - 1] in "<@":
        return AddressError("empty", "the address is empty or has nothing after '@'; write "
                                     "<user@domain>")
    if c == "@":
        return AddressError("multiple_at", "the address has more than one '@'; write <user@domain>")
    if c in (" ", "\t"):
        return AddressError("space_in_address", "the address has a space in it; write <user@domain> "
                                                "without spaces")
    return AddressError("character", f"the address has a character RFC 5321 does not allow there; {hint}")
