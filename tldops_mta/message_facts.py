"""Facts read from a message's header, as plain data for the decisions that follow.

The message is parsed once, here, with the stdlib's compat32 parser; the parsed message
rides along (``message``, not compared) for whoever reads the body next (request_form),
so that nothing parses the same octets twice. The counts of singleton headers are kept
because parsers disagree on which of two From: lines counts: a message with more than one
is refused before anything reads either. Address fields are kept as raw text: ``addresses``
parses them strictly, here nothing is interpreted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32

SINGLETONS = ("from", "sender", "date", "subject", "to", "cc", "message-id", "reply-to")
REQUIRED_FOR_REQUESTS = ("from", "date", "subject")

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

    def problem(self, required: tuple[str, ...] = ("from",)) -> str | None:
        """Why this message cannot be acted on at all, or None."""
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


def _one(values: list[str] | None) -> str | None:
    return str(values[0]) if values else None


def read(raw: bytes) -> MessageFacts:
    msg = _parser.parsebytes(raw)
    counts: dict[str, int] = {}
    for name in msg.keys():  # noqa: SIM118 - Message iterates header names only via keys()
        key = name.lower()
        if key in SINGLETONS:
            counts[key] = counts.get(key, 0) + 1

    def first(name: str) -> str | None:
        return _one(msg.get_all(name))

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
        message=msg,
    )
