"""Does this request come from the IANA administrative contact of the ccTLD it names?

A pure function of plain facts: what the message says (parsed strictly beforehand), what
DKIM proved, what IANA lists, and what we have seen before. No I/O, so every case of the
attack list is a row in a table-driven test.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    VERIFIED = "verified"
    NEEDS_CONFIRMATION = "needs-confirmation"
    REFUSED = "refused"
    WAIT = "wait"
    """Temporary: a lookup failed (IANA, DNS). Decide again later; never refuse for it."""


@dataclass(frozen=True)
class MessageView:
    """What the message says about who sent it, after strict parsing."""

    from_key: str | None
    """The single From address, lower-cased; None when From could not be read safely."""
    cc_keys: frozenset[str]
    problem: str | None
    """Why the message's headers cannot be trusted at all (counts, ambiguity), or None."""
    dkim_domains: frozenset[str]
    """d= of DKIM signatures that count and are aligned with the From domain."""
    dkim_temporary: bool
    """An aligned signature could not be checked because its key lookup failed."""
    replayed: bool
    """Message-ID seen before, or Date outside the replay window."""


@dataclass(frozen=True)
class IanaView:
    tld: str
    admin_key: str | None
    """IANA's administrative contact address, lower-cased; None if IANA has no such TLD."""
    unavailable: bool = False
    """IANA could not be asked and no usable cached answer exists."""


@dataclass(frozen=True)
class Decision:
    tld: str
    verdict: Verdict
    reason: str
    admin_key: str | None = None


def decide(msg: MessageView, iana: IanaView) -> Decision:
    """The verdict for one ccTLD named in the message."""
    tld = iana.tld
    if msg.problem is not None:
        return Decision(tld, Verdict.REFUSED, msg.problem)
    if iana.unavailable:
        return Decision(tld, Verdict.WAIT, "IANA could not be asked; the request waits and is retried")
    if iana.admin_key is None:
        return Decision(tld, Verdict.REFUSED, f".{tld} is not a delegated top-level domain at IANA")
    admin = iana.admin_key
    if msg.from_key == admin:
        if msg.dkim_domains and not msg.replayed:
            return Decision(tld, Verdict.VERIFIED,
                            "From is the IANA administrative contact and a DKIM signature of "
                            + ", ".join(sorted(msg.dkim_domains)) + " proves it", admin)
        if msg.dkim_temporary and not msg.replayed:
            return Decision(tld, Verdict.WAIT, "the DKIM key could not be fetched; checking again later",
                            admin)
        why = ("the message was seen before or is too old" if msg.dkim_domains
               else "no DKIM signature aligned with From verifies it")
        return Decision(tld, Verdict.NEEDS_CONFIRMATION,
                        f"From is the IANA administrative contact, but {why}: a token goes to that address",
                        admin)
    if admin in msg.cc_keys:
        return Decision(tld, Verdict.NEEDS_CONFIRMATION,
                        "the IANA administrative contact is in Cc: a token goes to that address", admin)
    return Decision(tld, Verdict.REFUSED,
                    f"the request must come from, or be copied (Cc) to, the address IANA lists as "
                    f"administrative contact for .{tld}", admin)
