"""Which service an envelope recipient names, as a pure function of the address.

Only the service addresses at our domain exist; everything else is refused at RCPT so that
the daemon never becomes a relay or accepts mail it will not act on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum


class Service(StrEnum):
    REQUESTS = "requests"
    CONFIRM = "confirm"
    DECIDE = "decide"
    WHO = "who"
    LIST = "list"
    UPDATE = "update"
    HELP = "help"
    BOUNCES = "bounces"
    POSTMASTER = "postmaster"
    ABUSE = "abuse"


TAGGED = frozenset({Service.CONFIRM, Service.DECIDE, Service.BOUNCES})
"""Services whose address carries a token or tag after '+' (and only these)."""

FOR_A_PERSON = frozenset({Service.POSTMASTER, Service.ABUSE})
"""Services whose mail goes to the operators as it came (postmaster_desk)."""

_TAG = re.compile(r"[A-Za-z0-9_=.-]{1,200}")


@dataclass(frozen=True)
class Recipient:
    service: Service
    tag: str | None = None

    def __str__(self) -> str:
        return self.service.value if self.tag is None else f"{self.service.value}+{self.tag}"


def local_parts(addresses: Mapping[str, str]) -> dict[str, Service]:
    """Map configured local parts (config section [addresses]) to services."""
    return {addresses[s.value].lower(): s for s in Service}


def classify(address: str, domain: str, parts: Mapping[str, Service]) -> Recipient | None:
    """The service ``address`` names, or None if it is not one of ours.

    Local parts and domains compare case-insensitively (RFC 5321 requires it for
    postmaster; people type the others in any case); tags keep their case because tokens
    are case-sensitive.
    """
    local, at, dom = address.rpartition("@")
    if not at:
        local, dom = address, ""
        if local.lower() != "postmaster":
            return None
    elif dom.removesuffix(".").lower() != domain.lower():
        return None
    base, plus, tag = local.partition("+")
    service = parts.get(base.lower())
    if service is None:
        return None
    if service in TAGGED:
        if not plus or not _TAG.fullmatch(tag):
            return None
        return Recipient(service, tag)
    if plus:
        return None
    return Recipient(service)


class Services(frozenset[Service]):
    """The services a message's envelope names, with the tag each tagged one carries (the
    first recipient's): classified once, by the worker, and handed to whoever routes it."""

    tags: Mapping[Service, str]

    def __new__(cls, recipients: Iterable[Recipient]) -> Services:
        named = list(recipients)
        self = super().__new__(cls, (r.service for r in named))
        tags: dict[Service, str] = {}
        for r in named:
            if r.tag is not None:
                tags.setdefault(r.service, r.tag)
        self.tags = tags
        return self

    def tag(self, service: Service) -> str:
        """The tag sent with ``service`` (a token, a VERP tag): only for one of TAGGED."""
        return self.tags[service]


def services_of(rcpt_to: Iterable[str], domain: str, parts: Mapping[str, Service]) -> Services:
    """What an envelope's recipients name (those that are ours)."""
    return Services(r for r in (classify(a, domain, parts) for a in rcpt_to) if r is not None)
