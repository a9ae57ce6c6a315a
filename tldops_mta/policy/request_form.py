"""The request form: the text a person wrote, the ccTLDs it names, and the whole form.

Authentication only needs the ccTLDs (lines ``ccTLD: mt``, also ``TLD:``, in any case, quoted
or not, before a ``-- `` signature): ``named_tlds``. The request workflow reads the whole form
(``parse_form``; the format is docs/requests.md).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from html.parser import HTMLParser

_TLD_LINE = re.compile(r"^\s*(?:>\s*)*(?:cc)?tld\s*:\s*\.?(\S+)\s*$", re.IGNORECASE)


MAX_PARTS = 100
"""Deeper or wider MIME trees than this are not read further: no person writes one."""


def body_text(raw: bytes | Message) -> str:
    """The text a person wrote: the text/plain parts (attachments aside), else the HTML ones
    turned into text, read with the stdlib's compat32 parser (why not mail-parser:
    docs/architecture.md). Given an already parsed message (``MessageFacts.message``), it
    reads that one."""
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
    try:
        charset = _charset(part) or "utf-8"
        return payload.decode(charset, "replace")
    except (LookupError, ValueError):
        # An unknown charset name (LookupError), or one no codec takes: a NUL in the name,
        # a codec without 'replace' such as idna (ValueError, UnicodeError among them).
        return payload.decode("utf-8", "replace")


def _charset(part: Message) -> str | None:
    """``part.get_content_charset()``, which parses the Content-Type's parameters (RFC 2231
    included) at each call: it is a function of that field's value, and the same few values
    come again and again."""
    value = part.get("content-type")
    if isinstance(value, str):  # not a Header (8-bit octets): those are read as before
        return _charset_of(value)
    return part.get_content_charset()


@functools.lru_cache(maxsize=256)
def _charset_of(content_type: str) -> str | None:
    part = Message()
    part["Content-Type"] = content_type
    return part.get_content_charset()


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

    def parse_marked_section(self, i: int, report: bool = True) -> int:
        # The stdlib raises AssertionError on a "<![" it cannot name ("<![ x[", "<![foo[");
        # HTML5 reads any such "<![" as a bogus comment, up to the next '>'.
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:
            return self.parse_bogus_comment(i, report)


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


# -- the whole form (the request workflow reads it) --------------------------------------------

ACTIONS = ("subscribe", "update", "remove")
ROLES = {"primary": "primary", "secondary": "secondary", "third": "third", "tertiary": "third"}
_FIELDS = {
    "action": "action", "cctld": "cctld", "tld": "cctld", "ssc": "ssc", "contact": "ssc",
    "firstname": "first_name", "givenname": "first_name",
    "lastname": "last_name", "surname": "last_name", "familyname": "last_name",
    "phone": "phone", "telephone": "phone", "tel": "phone", "mobile": "phone",
    "email": "email", "mail": "email", "emailaddress": "email",
    "replaces": "replaces", "replace": "replaces", "remove": "remove",
}
_PERSON = ("first_name", "last_name", "phone", "email")
_PERSON_SET = frozenset(_PERSON)
_LABEL = {"first_name": "First name", "last_name": "Last name", "phone": "Phone",
          "email": "Email", "replaces": "Replaces"}
_FIELD_LINE = re.compile(r"^([A-Za-z][A-Za-z _-]{0,30}?)\s*:\s*(.*)$")
_QUOTE = re.compile(r"^\s*(?:>\s*)+")
_SIGNATURE = re.compile(r"--\s*")
_EMAIL = re.compile(r"^[^@\s<>\"(),;:]+@[^@\s<>\"(),;:]+\.[^@\s<>\"(),;:.]+$")
_PHONE = re.compile(r"^\+?[0-9 ()./-]{6,30}$")
FIELD_LIST = "Action, ccTLD, SSC, First name, Last name, Phone, Email, Replaces, Remove"


@dataclass(frozen=True)
class FormProblem:
    """One thing wrong with a form: where (1-based line of the mail's text, None for the
    form as a whole), what, and how to put it right."""

    line: int | None
    what: str
    fix: str
    private: bool = False
    """It tells something of the current roster: said only to the ccTLD's authenticated
    administrative contact (roster_policy.judge sets it)."""

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.what}. {self.fix}"


@dataclass(frozen=True)
class SscEntry:
    role: str
    first_name: str
    last_name: str
    phone: str
    email: str
    replaces: str | None
    line: int
    phone_line: int = 0
    email_line: int = 0
    """Where the Phone and Email values are (0: not known), for problems that name a line."""


@dataclass(frozen=True)
class RequestForm:
    action: str | None
    tld: str | None
    sscs: tuple[SscEntry, ...]
    removals: tuple[str, ...]
    remove_all: bool
    problems: tuple[FormProblem, ...]
    tld_line: int | None = None
    """Where the ccTLD is named, for the problem that it is no ccTLD TLD-OPS serves (the
    form does not know which are: requests_desk asks rules/cctlds.csv)."""

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Block:
    role: str
    line: int
    fields: dict[str, tuple[str, int]]


def parse_form(text: str) -> RequestForm:
    """The request form in a mail's text: what it asks, or every problem with it.

    Forgiving where a person is: field names in any case and spacing ("E-mail", "first
    name"), quoted-reply markers, prose around the form, text after a "-- " signature, the
    same form pasted twice. Strict where a mistake would change the roster: each field
    once per block (or twice the same), known fields only inside an SSC block, a single
    action and ccTLD, nothing the action does not use. Values are only checked for shape
    here; the policy (rules/) judges phone numbers, addresses and roster sizes.
    """
    problems: list[FormProblem] = []
    singles: dict[str, tuple[str, int]] = {}
    blocks: list[_Block] = []
    removals: list[tuple[str, int]] = []
    current: _Block | None = None
    """The block lines go to; a blank line closes a complete one, so that prose after the
    form is the person's own, while a detail after a blank line still finds its block."""

    def problem(line: int | None, what: str, fix: str) -> None:
        problems.append(FormProblem(line, what, fix))

    for n, raw_line in enumerate(text.splitlines(), 1):
        line = _QUOTE.sub("", raw_line) if ">" in raw_line else raw_line
        if line[:2] == "--" and _SIGNATURE.fullmatch(line):
            break  # a signature follows
        stripped = line.strip()
        if not stripped:
            if current is not None and current.fields.keys() >= _PERSON_SET:
                current = None
            continue
        m = _FIELD_LINE.match(stripped)
        field = (_FIELDS.get(m.group(1).replace(" ", "").replace("_", "").replace("-", "").lower())
                 if m else None)  # what a name may hold beside letters (_FIELD_LINE), dropped
        if m is None or field is None:
            if current is not None:
                shown = stripped[:40]
                problem(n, f"'{shown}' is not a field of the form",
                        f"Inside an SSC block, write 'Field: value' with one of: {FIELD_LIST}.")
            continue  # prose outside the blocks is the person's own business
        value = " ".join(m.group(2).split())
        if field in ("action", "cctld"):
            current = None
            seen = singles.get(field)
            if seen is not None and seen[0].lower() != value.lower():
                problem(n, f"a second {m.group(1).strip()} line says '{value[:40]}', line "
                        f"{seen[1]} says '{seen[0][:40]}'", "Send one request per action and ccTLD.")
            elif seen is None:
                singles[field] = (value, n)
        elif field == "ssc":
            role = ROLES.get(value.lower())
            if role is None:
                problem(n, f"'{value[:40]}' is not an SSC role",
                        "Write 'SSC: primary', 'SSC: secondary' or 'SSC: third'.")
                current = _Block("?", n, {})
            else:
                current = _Block(role, n, {})
            blocks.append(current)
        elif field == "remove":
            current = None
            removals.append((value, n))
        else:
            if current is None and blocks and field not in blocks[-1].fields:
                current = blocks[-1]  # a detail of the last SSC, after a blank line
            if current is None:
                problem(n, f"'{m.group(1).strip()}' is outside an SSC block",
                        "Start each SSC with a line 'SSC: primary' (or secondary, third) and "
                        "put their details under it.")
                continue
            seen = current.fields.get(field)
            if seen is not None and seen[0] != value:
                problem(n, f"a second {_LABEL[field]} line for this SSC (the first is line "
                        f"{seen[1]})", "Give each detail once per SSC.")
            elif seen is None:
                current.fields[field] = (value, n)

    action_value, action_line = singles.get("action", ("", None))
    action = action_value.lower() or None
    if action is None:
        problem(None, "the request does not say what it asks",
                "Add a line 'Action: subscribe', 'Action: update' or 'Action: remove'.")
    elif action not in ACTIONS:
        problem(action_line, f"'{action_value[:40]}' is not an action",
                "Write 'Action: subscribe', 'Action: update' or 'Action: remove'.")
        action = None
    tld_value, tld_line = singles.get("cctld", ("", None))
    tld = tld_value.lstrip(".") or None
    if tld is None:
        problem(None, "the request does not name its ccTLD", "Add a line such as 'ccTLD: mt'.")

    sscs = _read_blocks(blocks, action, problem)
    remove_all = any(v.lower() == "all" for v, _ in removals)
    addresses: list[str] = []
    for value, n in removals:
        if value.lower() == "all":
            continue
        if not _EMAIL.match(value):
            problem(n, f"'{value[:60]}' is not an email address",
                    "Name each SSC to remove by their roster address, or write 'Remove: all'.")
        elif value.lower() not in (a.lower() for a in addresses):
            addresses.append(value)
    if action == "remove":
        if not removals:
            problem(None, "a removal names nobody",
                    "Add 'Remove: <address of the SSC>' lines, or 'Remove: all' for the ccTLD.")
        if remove_all and addresses:
            problem(removals[0][1], "'Remove: all' and single addresses together",
                    "Keep either 'Remove: all' or the addresses.")
        for block in blocks:
            problem(block.line, "a removal lists no new SSCs",
                    "Delete the SSC blocks, or send them as 'Action: update'.")
    elif action is not None:
        for _, n in removals:
            problem(n, f"'Remove:' belongs to removals, not to '{action}'",
                    "Delete the line, or send the removal as its own request.")
        if not blocks:
            problem(None, f"'{action}' names no SSC",
                    "Add a block 'SSC: primary' with First name, Last name, Phone and Email.")
    return RequestForm(action, tld, tuple(sscs), tuple(addresses), remove_all,
                       tuple(sorted(problems, key=lambda p: (p.line or 0))), tld_line)


def _read_blocks(blocks: list[_Block], action: str | None,
                 problem: Callable[[int | None, str, str], None]) -> list[SscEntry]:
    out: list[SscEntry] = []
    by_role: dict[str, _Block] = {}
    for block in blocks:
        if block.role == "?":
            continue
        first = by_role.get(block.role)
        if first is not None:
            if {k: v for k, (v, _) in first.fields.items()} != {k: v for k, (v, _) in block.fields.items()}:
                problem(block.line, f"a second 'SSC: {block.role}' block (the first is line "
                        f"{first.line})", "Name each role once: primary, secondary, third.")
            continue  # the same block pasted twice counts once
        by_role[block.role] = block
        missing = [_LABEL[f] for f in _PERSON if f not in block.fields]
        if missing:
            problem(block.line, f"the {block.role} SSC lacks {', '.join(missing)}",
                    "Give First name, Last name, Phone and Email under each 'SSC:' line.")
            continue
        values = {k: v for k, (v, _) in block.fields.items()}
        email_line = block.fields["email"][1]
        if not _EMAIL.match(values["email"]):
            problem(email_line, f"'{values['email'][:60]}' is not an email address",
                    "Write the SSC's own address, such as 'Email: jane.doe@nic.example'.")
        phone_line = block.fields["phone"][1]
        if not _PHONE.match(values["phone"]) or sum(map(str.isdigit, values["phone"])) < 6:
            problem(phone_line, f"'{values['phone'][:40]}' is not a phone number",
                    "Write it with its country code, such as 'Phone: +356 2133 4455'.")
        for f in ("first_name", "last_name"):
            if len(values[f]) > 100 or not any(map(str.isalpha, values[f])):
                problem(block.fields[f][1], f"'{values[f][:40]}' is not a name",
                        f"Write the SSC's {_LABEL[f].lower()} as it should appear in the roster.")
        replaces = values.get("replaces")
        if replaces is not None and action != "update":
            problem(block.fields["replaces"][1], "'Replaces:' belongs to updates",
                    "Delete the line, or send the request as 'Action: update'.")
        elif action == "update" and replaces is None:
            problem(block.line, f"the update does not say whom the {block.role} SSC replaces",
                    "Add 'Replaces: <roster address of the current SSC>' (their own address "
                    "if only their details change).")
        elif replaces is not None and not _EMAIL.match(replaces):
            problem(block.fields["replaces"][1], f"'{replaces[:60]}' is not an email address",
                    "Name the SSC being replaced by their roster address.")
        out.append(SscEntry(block.role, values["first_name"], values["last_name"],
                            values["phone"], values["email"], replaces, block.line,
                            phone_line, email_line))
    return out
