"""Reading IANA's answers (RDAP JSON, WHOIS text) into the administrative contact's address.

Pure functions over the octets received. Anything unexpected is an ``AnswerError`` with a
reason a person can act on: an answer we cannot read is never taken as "no match", and an
answer with two administrative contacts is never resolved by picking one. Reasons name no
address (they are logged at info level); the raw answer, kept beside them, has the details.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import idna

MAX_ANSWER = 256 * 1024
"""IANA's answers are a few KiB; anything this large is not an answer we trust."""

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDR = re.compile(rf"{_ATOM}(\.{_ATOM})*@({_LABEL}\.)+{_LABEL}")


class AnswerError(Exception):
    """The answer cannot be used; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotDelegated(AnswerError):
    """IANA answered, and has no such top-level domain."""


def plain_address(value: str) -> str:
    """An ASCII addr-spec, lower-cased; AnswerError for anything else."""
    v = value.strip()
    if v.lower().startswith("mailto:"):
        v = v[7:]
    if len(v) > 254 or not _ADDR.fullmatch(v):
        raise AnswerError(f"administrative contact address is not a plain address ({len(value)} characters)")
    return v.lower()


def _one(addresses: list[str], what: str) -> str:
    distinct = sorted(set(addresses))
    if not distinct:
        raise AnswerError(f"no e-mail address for the {what}")
    if len(distinct) > 1:
        raise AnswerError(f"several e-mail addresses for the {what}: refusing to choose")
    return distinct[0]


def _entities(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every entity, nested ones included; a loop, not recursion, so depth cannot crash it."""
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        found = node.get("entities") if isinstance(node, dict) else None
        if isinstance(found, list):
            for e in reversed(found):
                if isinstance(e, dict):
                    stack.append(e)
        if node is not doc:
            yield node


def _shown(value: Any) -> str:
    """A short, safe rendering of a JSON value for a reason (repr of a deep tree could recurse)."""
    if isinstance(value, str):
        return repr(value[:80])
    if value is None or isinstance(value, bool | int | float):
        return repr(value)[:80]
    return f"a JSON {type(value).__name__}"


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    if len(body) > MAX_ANSWER:
        raise AnswerError(f"{what} too large ({len(body)} octets)")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise AnswerError(f"{what} is not JSON (truncated?): {str(e)[:120]}") from e
    except RecursionError as e:
        raise AnswerError(f"{what} is nested too deeply to be an RDAP answer") from e
    if not isinstance(doc, dict):
        raise AnswerError(f"{what} is not a JSON object")
    return doc


def admin_from_rdap(body: bytes, tld_ascii: str) -> str:
    """The administrative contact's address in an RDAP domain answer (RFC 9083)."""
    doc = _json_object(body, "RDAP answer")
    if doc.get("errorCode") == 404:
        raise NotDelegated(f"RDAP: no top-level domain {tld_ascii!r}")
    kind = doc.get("objectClassName")
    if kind != "domain":
        raise AnswerError(f"RDAP answer is not a domain object (objectClassName {_shown(kind)})")
    name = doc.get("ldhName")
    if not isinstance(name, str) or name.rstrip(".").lower() != tld_ascii.lower():
        raise AnswerError(f"RDAP answer is for {_shown(name)}, not {tld_ascii!r}")
    admins = [e for e in _entities(doc)
              if isinstance(e.get("roles"), list) and "administrative" in e["roles"]]
    if not admins:
        raise AnswerError("RDAP answer has no administrative entity")
    if len(admins) > 1:
        raise AnswerError(f"RDAP answer has {len(admins)} administrative entities: refusing to choose")
    vcard = admins[0].get("vcardArray")
    if (not isinstance(vcard, list) or len(vcard) != 2 or vcard[0] != "vcard"
            or not isinstance(vcard[1], list)):
        raise AnswerError("administrative entity has no valid vcardArray")
    emails = []
    for prop in vcard[1]:
        if isinstance(prop, list) and len(prop) >= 4 and prop[0] == "email":
            if not isinstance(prop[3], str):
                raise AnswerError("vCard email value is not text")
            emails.append(plain_address(prop[3]))
    return _one(emails, "administrative contact")


def rdap_not_found(body: bytes, tld_ascii: str) -> NotDelegated:
    """What an HTTP 404 means, as the NotDelegated to report; AnswerError if it is no RDAP 404.

    A 404 is "no such TLD" only when it comes with an RDAP error object (RFC 9083 section 6).
    A bare or HTML 404 is what a wrong ``iana.rdap_url`` or a proxy returns, and taking it as
    "not delegated" would turn "could not look up" into "no match" for every TLD at once.
    """
    doc = _json_object(body, "RDAP 404 answer")
    code = doc.get("errorCode", 404)
    if code != 404:
        raise AnswerError(f"RDAP 404 answer carries errorCode {_shown(code)}")
    return NotDelegated(f"RDAP: HTTP 404, no top-level domain {tld_ascii!r}")


def _a_label(name: str) -> str | None:
    """The A-label of a WHOIS ``domain:`` value (IANA may write IDNs either way), else None."""
    if not name or len(name) > 253:
        return None
    try:
        return idna.encode(name.rstrip("."), uts46=True).decode("ascii")
    except (ValueError, UnicodeError):
        return None


def admin_from_whois(body: bytes, tld_ascii: str) -> str:
    """The ``e-mail:`` of the block that starts ``contact: administrative``."""
    if len(body) > MAX_ANSWER:
        raise AnswerError(f"WHOIS answer too large ({len(body)} octets)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AnswerError(f"WHOIS answer is not UTF-8: {e}") from e
    text = text.replace("\r\n", "\n")
    fields = [_field(line) for line in text.split("\n")]
    domains = [v for k, v in fields if k in ("domain", "domain-ace")]
    if re.search(r"(?m)^%\s*This query returned 0 objects", text):
        if domains:
            raise AnswerError("WHOIS answer says 0 objects yet names a domain")
        raise NotDelegated(f"WHOIS: no top-level domain {tld_ascii!r}")
    if not domains or any(_a_label(d) != tld_ascii.lower() for d in domains):
        raise AnswerError(f"WHOIS answer names {[d[:80] for d in domains[:3]]!r}, not {tld_ascii!r}")
    if sum(k == "domain" for k, _ in fields) != 1:
        raise AnswerError("WHOIS answer has no single 'domain:' line")
    blocks: list[list[tuple[str, str]]] = [[]]
    for k, v in fields:
        if k == "":
            if blocks[-1]:
                blocks.append([])
        elif k != "%":
            blocks[-1].append((k, v))
    admin = [b for b in blocks if b and b[0] == ("contact", "administrative")]
    if not admin:
        raise AnswerError("WHOIS answer has no 'contact: administrative' block")
    if len(admin) > 1:
        raise AnswerError(f"WHOIS answer has {len(admin)} administrative blocks: refusing to choose")
    return _one([plain_address(v) for k, v in admin[0] if k == "e-mail"], "administrative contact")


def _field(line: str) -> tuple[str, str]:
    """(key, value); ("", "") for a blank line, ("%", text) for a comment."""
    s = line.strip()
    if not s:
        return "", ""
    if s.startswith("%") or s.startswith("#"):
        return "%", s
    key, sep, value = s.partition(":")
    if not sep:
        return "?", s
    return key.strip().lower(), value.strip()
