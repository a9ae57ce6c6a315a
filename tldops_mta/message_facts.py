"""Facts read from a message's header, as plain data for the decisions that follow.

Only the header section is parsed here (cheap, and all that routing needs). The counts of
singleton headers are kept because parsers disagree on which of two From: lines counts:
a message with more than one is refused before anything reads either.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32

SINGLETONS = ("from", "sender", "date", "subject", "to", "message-id")

_parser = BytesHeaderParser(policy=compat32)


@dataclass(frozen=True)
class MessageFacts:
    counts: dict[str, int]
    message_id: str | None
    auto_submitted: str | None
    header_defects: int

    def problem(self) -> str | None:
        """Why this message cannot be acted on at all, or None."""
        if self.counts.get("from", 0) != 1:
            return f"message must have exactly one From: header (has {self.counts.get('from', 0)})"
        for name in SINGLETONS:
            if self.counts.get(name, 0) > 1:
                return f"message has {self.counts[name]} {name.title()}: headers; one at most"
        return None


def read(raw: bytes) -> MessageFacts:
    msg = _parser.parsebytes(raw)
    counts: dict[str, int] = {}
    for name in msg.keys():  # noqa: SIM118 - Message iterates header names only via keys()
        key = name.lower()
        if key in SINGLETONS:
            counts[key] = counts.get(key, 0) + 1
    mid = msg.get("message-id")
    auto = msg.get("auto-submitted")
    return MessageFacts(
        counts=counts,
        message_id=str(mid).strip() if mid is not None else None,
        auto_submitted=str(auto).strip().lower() if auto is not None else None,
        header_defects=len(msg.defects),
    )
