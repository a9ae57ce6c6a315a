"""The request form, as far as authentication needs it: which ccTLDs a request names.

Lines ``ccTLD: mt`` (also ``TLD:``), in any case, quoted or not, before a ``-- `` signature.
The full form (action, SSCs) is read by the request workflow.
"""

from __future__ import annotations

import re
from email import message_from_bytes
from email.message import Message
from html.parser import HTMLParser

_TLD_LINE = re.compile(r"^\s*(?:>\s*)*(?:cc)?tld\s*:\s*\.?(\S+)\s*$", re.IGNORECASE)


MAX_PARTS = 100
"""Deeper or wider MIME trees than this are not read further: no person writes one."""


def body_text(raw: bytes | Message) -> str:
    """The text a person wrote: the text/plain parts (attachments aside), else the HTML ones
    turned into text. The stdlib's compat32 parser, which mail-parser wraps too, at a tenth
    of mail-parser's cost: this runs for every request. Given an already parsed message
    (``MessageFacts.message``), it reads that one."""
    plain: list[str] = []
    html: list[str] = []
    msg = raw if isinstance(raw, Message) else message_from_bytes(raw)
    for n, part in enumerate(msg.walk()):
        if n >= MAX_PARTS:
            break
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain":
            plain.append(_decoded(part))
        elif ctype == "text/html":
            html.append(_decoded(part))
    if plain:
        return "\n".join(plain)
    return html_to_text("\n".join(html))


def _decoded(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:  # an unknown charset name
        return payload.decode("utf-8", "replace")


class _Text(HTMLParser):
    BREAKS = frozenset({"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "table", "pre"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        if tag in self.BREAKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        if tag in self.BREAKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    p = _Text()
    p.feed(html)
    p.close()
    return "".join(p.parts)


def named_tlds(text: str) -> list[str]:
    """ccTLD names in the order given, without repeats (as written; not yet validated)."""
    found: list[str] = []
    for line in text.splitlines():
        if line.rstrip() == "--":
            break
        m = _TLD_LINE.match(line)
        if m and m.group(1).lower() not in (f.lower() for f in found):
            found.append(m.group(1))
    return found
