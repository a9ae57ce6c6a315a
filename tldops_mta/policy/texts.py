"""The texts of every mail the daemon writes: templates in rules/replies.toml.

Each table there is one template with a ``subject`` and a ``body``; ``{name}`` is replaced by
the value the code gives (FIELDS lists which exist for each). Plain substitution, not
str.format: an operator's translation can hold any braces without breaking a mail, and no
template can reach into the program's objects. A missing template still gives a mail (the
values, labelled) so nothing is lost; ``tldops config check`` reports it.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping
from typing import Any

FIELDS: dict[str, frozenset[str]] = {
    "help": frozenset({"requests", "help"}),
    "refusal": frozenset({"problems", "requests", "help"}),
    "confirmation": frozenset({"tld", "admin", "requester", "subject", "date", "why", "request",
                               "confirm_address", "expires"}),
    "validator": frozenset({"id", "tld", "action", "requester", "evidence", "diff", "warnings",
                            "decide_address", "decision_rule", "expires", "reminder"}),
    "applied": frozenset({"id", "tld", "action", "requester", "evidence", "diff", "warnings",
                          "decide_address", "decision_rule"}),
    "escalation": frozenset({"id", "tld", "action", "requester", "evidence", "diff", "warnings",
                             "reason", "validator"}),
    "received": frozenset({"id", "tld", "action", "diff", "withdraw_address"}),
    "decision": frozenset({"id", "tld", "result"}),
    "who_refusal": frozenset({"reason", "help"}),
    "list_refusal": frozenset({"reason", "help"}),
    "list_held": frozenset({"subject"}),
    "list_confirmation": frozenset({"subject", "confirm_address"}),
    "list_moderation": frozenset({"id", "author", "subject", "tlp", "post"}),
    "list_rejected": frozenset({"subject", "reason", "help"}),
    "bouncing": frozenset({"address", "tlds", "failures", "days"}),
    "postmaster_forward": frozenset({"address", "sender", "client", "received", "queue_id",
                                     "subject"}),
    "redelegation": frozenset({"tld", "old", "new", "roster"}),
    "freshness_ask": frozenset({"tld", "entry", "confirm_address", "update", "help"}),
    "freshness_reminder": frozenset({"tld", "entry", "confirm_address", "update", "help", "asked"}),
    "freshness_notice": frozenset({"tld", "sscs", "requests", "help"}),
    "reconfirm": frozenset({"tld", "roster", "confirm_address", "requests", "help"}),
    "who_confirmation": frozenset({"confirm_address"}),
    "self_update_confirmation": frozenset({"tld", "change", "confirm_address"}),
    "decision_confirmation": frozenset({"id", "tld", "decision", "confirm_address", "expires"}),
    "outcome": frozenset({"id", "tld", "action", "outcome", "reason", "diff"}),
    "welcome": frozenset({"tld", "name", "roster", "who", "update", "help"}),
    "removed": frozenset({"tld", "name", "help"}),
    "stats_report": frozenset({"month", "summary", "csv"}),
    "invitation": frozenset({"tld", "country", "requests", "help", "home"}),
}

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def check(rules: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What is wrong with rules/replies.toml: a template missing, or a placeholder the code
    never fills (a typo would otherwise reach the recipients as '{tdl}')."""
    table = rules.get("replies")
    if table is None:
        return []  # no replies table given (the shipped one is always loaded): labelled fallback texts
    out: list[str] = []
    for name, fields in FIELDS.items():
        t = table.get(name)
        if not (isinstance(t, dict) and isinstance(t.get("subject"), str)
                and isinstance(t.get("body"), str)):
            out.append(f"rules/replies.toml: [{name}] wants a subject and a body (strings)")
            continue
        for key in ("subject", "body"):
            unknown = sorted(set(_PLACEHOLDER.findall(t[key])) - fields)
            if unknown:
                used = ", ".join("{" + u + "}" for u in unknown)
                allowed = ", ".join(sorted("{" + f + "}" for f in fields))
                out.append(f"rules/replies.toml: [{name}] {key} uses {used}; it may use {allowed}")
    for name in table:
        if name not in FIELDS:
            out.append(f"rules/replies.toml: unknown template [{name}]")
    return out


def render(rules: Mapping[str, Mapping[str, Any]], name: str,
           values: Mapping[str, object]) -> tuple[str, str]:
    """(subject, body) of template ``name`` with ``values`` put in."""
    assert set(values) <= FIELDS[name], set(values) - FIELDS[name]
    t = rules.get("replies", {}).get(name)
    if not isinstance(t, dict):
        body = "".join(f"{k}: {v}\n" for k, v in values.items())
        return f"[TLD-OPS] {name}", f"(rules/replies.toml has no [{name}] text)\n\n{body}"
    filled = {k: str(v) for k, v in values.items()}

    def fill(text: str) -> str:
        parts = _parts(text)  # literal, name, literal, name, ..., literal
        out = list(parts)
        for i in range(1, len(parts), 2):
            out[i] = filled.get(parts[i], "{" + parts[i] + "}")
        return "".join(out)

    return " ".join(fill(str(t["subject"])).split()), fill(str(t["body"]).lstrip("\n"))


@functools.lru_cache(maxsize=256)
def _parts(text: str) -> tuple[str, ...]:
    """A template cut at its placeholders once, not searched again for each mail."""
    return tuple(_PLACEHOLDER.split(text))


def counted(n: int, noun: str, nouns: str | None = None) -> str:
    """``1 ccTLD``, ``3 ccTLDs``: a count with its noun in the number it needs; ``nouns`` for
    the plurals that are not the noun plus s."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def utc_day(t: float) -> str:
    """``2026-12-03``: the UTC day of a Unix time, as every mail, listing and table writes it."""
    return time.strftime("%Y-%m-%d", time.gmtime(t))


def missing(what: str, ident: object) -> str:
    """``no request 99``: how every command and desk says that what it was given does not exist."""
    return f"no {what} {ident}"
