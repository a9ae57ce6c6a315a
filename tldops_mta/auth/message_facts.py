"""Facts read from a message's header, as plain data for the decisions that follow.

The message is parsed once, here, with the stdlib's compat32 parser; the parsed message
rides along (``message``, not compared) for whoever reads the body next (request_form),
so that nothing parses the same octets twice. The counts of singleton headers are kept
because parsers disagree on which of two From: lines counts: a message with more than one
is refused before anything reads either. Address fields are kept as raw text: ``addresses``
parses them strictly, here nothing is interpreted.

Header octets outside ASCII are read as the UTF-8 that RFC 6532 allows, with or without
SMTPUTF8 in the envelope (legacy clients have always sent raw 8-bit headers): compat32's own
reading (``get_all``) would turn each such octet into U+FFFD, so that a From: with an
accented name read as undecodable. Octets that are not UTF-8 still come out as U+FFFD.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from functools import cached_property

from tldops_mta.policy.request_form import body_text

SINGLETONS = ("from", "sender", "date", "subject", "to", "cc", "message-id", "reply-to")
REQUIRED_FOR_REQUESTS = ("from", "date", "subject")
_SINGLETONS = frozenset(SINGLETONS)

_parser = BytesParser(policy=compat32)


@dataclass(frozen=True)
class MessageFacts:
    counts: dict[str, int]
    from_value: str | None
    sender_value: str | None
    cc_value: str | None
    date_value: str | None
    subject: str | None
    message_id: str | None
    auto_submitted: str | None
    precedence: str | None
    defects: int
    """Defects the parser found (header and MIME structure); informative."""
    message: Message | None = field(default=None, compare=False, repr=False)
    """The parsed message these facts were read from (body parts included)."""
    unreadable: str | None = None
    """Why the body could not be parsed (the header facts were still read), or None."""

    def problem(self, required: tuple[str, ...] = ("from",)) -> str | None:
        """Why this message cannot be acted on at all, or None."""
        if self.unreadable is not None:
            return self.unreadable
        for name in SINGLETONS:
            n = self.counts.get(name, 0)
            if name in required and n != 1:
                return f"the message must have exactly one {name.title()}: line (it has {n})"
            if n > 1:
                return f"the message has {n} {name.title()}: lines; one at most is allowed"
        return None

    @property
    def automatic(self) -> bool:
        """Written by a robot (RFC 3834) or a list: never answered, never trusted as a person."""
        if self.auto_submitted is not None and self.auto_submitted.split(";")[0].strip() != "no":
            return True
        return self.precedence in ("bulk", "junk", "list", "auto_reply")

    @cached_property
    def text(self) -> str:
        """The text a person wrote (``request_form.body_text``), read once for every desk and
        reply that needs it: the MIME tree is walked at most once per message. Empty when
        the body could not be parsed."""
        return "" if self.message is None else body_text(self.message)


def _text(value: str) -> str:
    """A header value as text: compat32 keeps 8-bit octets as surrogate escapes."""
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


TOO_DEEP = "the message's MIME parts are nested too deeply to be read"


_EOL = r"(?>\r\n|\r|\n)"
"""A line's end as the stdlib's parser cracks text (``StringIO(newline='')``): never a CR
alone where a CRLF stands (atomic: no backtracking into it)."""
_NAME = r"[\041-\071\073-\176]+:"
"""A field's name and colon, as the feedparser's ``headerRE`` less what it takes for defects:
the empty name, and a 'From ' line (mbox's, whose space no name holds)."""
_HEADER = re.compile(rf"(?:{_NAME}[^\r\n]*{_EOL}(?:[ \t][^\r\n]*{_EOL})*+)*+{_EOL}")
"""Fields, each with its continuation lines, then the blank line."""
_FIELD = re.compile(rf"([\041-\071\073-\176]+):[ \t]*([^\r\n]*{_EOL}(?:[ \t][^\r\n]*{_EOL})*+)")


def _single_part(text: str) -> Message | None:
    """compat32's parse of ``text`` when it is a plain single-part message: fields (and their
    continuation lines) up to a blank line, and a Content-Type that is neither multipart/*
    nor message/*. Anything else (a defect, an mbox 'From ' line, a header without a blank
    line after it, parts) is None: the stdlib's parser reads it, as it reads everything this
    does (tests/test_message_facts.py holds the two to the same answers). The feedparser's
    line-by-line machinery was most of a request's parse."""
    header = _HEADER.match(text)
    if header is None:
        return None
    msg = Message()
    for name, value in _FIELD.findall(text, 0, header.end()):
        msg.set_raw(name, value.rstrip("\r\n"))  # header_source_parse's (name, value)
    if msg.get_content_maintype() in ("multipart", "message"):
        return None
    msg.set_payload(text[header.end():])
    return msg


def parse(raw: bytes) -> Message:
    """``BytesParser(policy=compat32).parsebytes(raw)``, sooner for a single part."""
    return _single_part(raw.decode("ascii", "surrogateescape")) or _parser.parsebytes(raw)


def read(raw: bytes) -> MessageFacts:
    unreadable = None
    try:
        msg = parse(raw)
    except RecursionError:
        # The stdlib parser recurses once per nested part (about a thousand levels exhaust
        # it). Such a message is refused for what it is, not retried as if the worker had
        # failed: the header alone is still read for the log and the facts.
        msg = _parser.parsebytes(raw, headersonly=True)
        unreadable = TOO_DEEP
    counts: dict[str, int] = {}
    values: dict[str, str] = {}
    for name, value in msg.raw_items():
        key = name.lower()
        if key in _SINGLETONS:
            counts[key] = counts.get(key, 0) + 1
        values.setdefault(key, value)  # the first of each, as get_all(name)[0] would give

    def first(name: str) -> str | None:
        v = values.get(name)
        return _text(v) if v is not None else None

    def folded_lower(name: str) -> str | None:
        v = first(name)
        return " ".join(v.split()).lower() if v is not None else None

    mid = first("message-id")
    return MessageFacts(
        counts=counts,
        from_value=first("from"),
        sender_value=first("sender"),
        cc_value=first("cc"),
        date_value=first("date"),
        subject=first("subject"),
        message_id=" ".join(mid.split()) if mid is not None else None,
        auto_submitted=folded_lower("auto-submitted"),
        precedence=folded_lower("precedence"),
        defects=len(msg.defects),
        message=None if unreadable else msg,
        unreadable=unreadable,
    )
