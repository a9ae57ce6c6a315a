"""Strict reading of the address header fields (From, Sender, Cc, To).

A request counts only if it provably comes from the address IANA lists as the ccTLD's
administrative contact, so the address read here must be exactly the one a person's mail
client shows. Parsers disagree about comments, quoted local parts, route syntax, encoded
words, stray brackets and look-alike characters, and spoofing attacks live in precisely those
disagreements ("Composition Kills", Chen et al., USENIX Security 2020; the espoofer cases).
Python's own ``email.utils`` is one of the disagreeing parsers (CVE-2023-27043), so it is not
used. Instead only the plain forms that every client reads the same way are accepted, and
anything else is refused with a reason the sender can act on: being too strict costs an honest
sender one resend, being lenient lets someone else speak for a ccTLD.

Everything here is a pure function of the header value.
"""

from __future__ import annotations

import codecs
import re
import string
import unicodedata
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.header import decode_header
from enum import Enum

MAX_VALUE_CHARS = 2000
MAX_MAILBOXES = 50
MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 253  # RFC 1035, without the trailing dot
MAX_LABEL = 63
MAX_ADDRESS = 254  # RFC 5321 path limit (256) minus the angle brackets

EXAMPLE = "Your Name <you@example.org>"


class AddressError(ValueError):
    """Why an address field was refused.

    ``reason`` is quoted back to the sender, so it says what was wrong and how to fix it; it
    never echoes the input (a forged sender would otherwise choose the text of our reply).
    ``code`` is a short stable name for logs, statistics and tests.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Mailbox:
    """One mailbox as a reader sees it.

    ``address`` keeps the local part as written (RFC 5321 lets a receiving system treat case
    there as significant) but lower-cases the domain and drops its trailing dot, which DNS
    ignores. ``display`` is the decoded display name, or "": shown to people, never trusted.
    """

    address: str
    display: str = ""

    @property
    def key(self) -> str:
        """The form to compare addresses by. People type the IANA address in any case, and
        mailbox providers do not hand out ``Admin@`` and ``admin@`` to different people; a
        case-sensitive match would refuse honest mail without stopping anyone."""
        return self.address.lower()

    @property
    def local_part(self) -> str:
        return self.address.rpartition("@")[0]

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


def parse_address_list(value: str, *, field: str = "Cc") -> list[Mailbox]:
    """The mailboxes of a To: or Cc: value, or AddressError if any part of it is ambiguous.

    One bad entry refuses the whole value: the entries around it cannot be trusted to be
    split where a reader's client splits them. Only empty groups (``undisclosed-recipients:;``)
    are accepted, because they name nobody. ``field`` only names the line in reasons.
    """
    return _Parser(_prepare(value, field), field, groups=True).address_list()


def parse_single(value: str, *, field: str = "From") -> Mailbox:
    """The one mailbox of a From: or Sender: value, or AddressError.

    Several authors in From: are legal in RFC 5322 but clients show only one of them, and not
    all the same one, so exactly one is required.
    """
    plain = _plain_single(value)
    return plain if plain is not None else _full_single(value, field)


def _full_single(value: str, field: str) -> Mailbox:
    boxes = _Parser(_prepare(value, field), field, groups=False).address_list()
    if len(boxes) != 1:
        raise AddressError(
            "not_single",
            f"the {field}: line holds {len(boxes)} addresses where exactly one is allowed; "
            "send from the single address IANA lists, alone on the line",
        )
    return boxes[0]


_W = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_PLAIN = re.compile(rf"(?:({_W}(?: {_W})*) ?)?<({_W}(?:\.{_W})*)@({_LABEL}(?:\.{_LABEL})+)>"
                    rf"|({_W}(?:\.{_W})*)@({_LABEL}(?:\.{_LABEL})+)")


def _plain_single(value: str) -> Mailbox | None:
    """The Mailbox of the plainest From: values (``Name Words <local@domain>``, ``<local@domain>``,
    ``local@domain``: ASCII atoms, single spaces, a dot-atom and LDH labels) as the full parser
    reads them, without its tokens; None for anything else, which the full parser then reads or
    refuses. It refuses nothing itself: a value it answers is one the full parser accepts with
    the same Mailbox (tests/test_addresses.py compares both on generated values)."""
    if len(value) > MAX_VALUE_CHARS:
        return None
    m = _PLAIN.fullmatch(value)
    if m is None or "=?" in value:
        return None
    display, local, domain = m.group(1, 2, 3) if m.group(3) else ("", *m.group(4, 5))
    host = domain.lower()
    if (len(local) > MAX_LOCAL_PART or len(host) > MAX_DOMAIN or host.rpartition(".")[2].isdigit()
            or len(local) + 1 + len(host) > MAX_ADDRESS
            or any(len(label) > MAX_LABEL for label in host.split("."))):
        return None
    return Mailbox(f"{local}@{host}", display or "")


# --- characters ---------------------------------------------------------------------------

_FOLD = re.compile(r"\r\n(?=[ \t])")

_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")
_SPECIALS = frozenset("<>@,;:.")
_LDH = frozenset(string.ascii_letters + string.digits + "-")

# Invisible characters that Unicode files as letters, marks or symbols rather than as format
# characters (category Cf, refused wholesale): variation selectors, the combining grapheme
# joiner, Mongolian free variation selectors, Hangul fillers and the blank Braille pattern.
_INVISIBLE = frozenset(
    [chr(c) for c in range(0xFE00, 0xFE10)]
    + [chr(c) for c in range(0xE0100, 0xE01F0)]
    + ["\u034f", "\u180b", "\u180c", "\u180d", "\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"]
)

# Characters that look like '@', '<' or '>' without being them (NFKC already folds the
# full-width and small forms: U+FF20, U+FE6B, U+FF1C, U+FF1E, U+FE64, U+FE65). A reader takes
# "admin\uff20nic.mt" for an address; a parser does not.
_LOOKALIKES = frozenset(
    "\u2039\u203a"  # single angle quotation marks
    "\u2329\u232a\u3008\u3009\u27e8\u27e9\u27ea\u27eb"  # angle brackets
    "\u02c2\u02c3\u02f1\u02f2\u1438\u1433"  # modifier-letter and syllabics arrowheads
    "\u276c\u276d\u276e\u276f"  # ornamental angle brackets
    "\u2276\u2277\u227a\u227b\u22d6\u22d7\u2a7d\u2a7e"  # less-than/greater-than relations
)

# The common charsets, which mail clients decode alike. UTF-7 and the rarer ones could
# smuggle an '@' that some clients decode and others show raw.
_CHARSETS = frozenset(
    codecs.lookup(name).name
    for name in (
        "us-ascii", "utf-8", "windows-1250", "windows-1251", "windows-1252", "windows-1253",
        "windows-1254", "windows-1255", "windows-1256", "windows-1257", "windows-1258",
        "koi8-r", "koi8-u", "iso-2022-jp", "shift_jis", "euc-jp", "euc-kr", "gb2312", "gbk",
        "gb18030", "big5",
        *(f"iso-8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16)),
    )
)

_ENCODED_WORD = re.compile(r"=\?([^?\s*]+)(?:\*[A-Za-z0-9-]+)?\?([bBqQ])\?([^?\s]*)\?=")
_B_TEXT = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_Q_TEXT = re.compile(r"(?:=[0-9A-Fa-f]{2}|[!-<>-~])*")


def _char(c: str) -> str:
    return f"U+{ord(c):04X} {unicodedata.name(c, '(no name)')}"


def _check_chars(text: str, where: str, *, tab: bool = True) -> None:
    """Refuse characters that hide or fake what a reader sees, wherever they stand.

    ``where`` names the text for the reason ("the From: line"). ``tab``: a TAB is folding
    white space in a header as written, but a control character inside a decoded name.
    """
    for c in text:
        o = ord(c)
        if o < 0x80:
            if c == "\0":
                raise AddressError("nul", f"{where} contains a NUL character; "
                                          "send the message again from an ordinary mail program")
            if c in "\r\n":
                raise AddressError("line_break", f"{where} contains a line break "
                                                 "that is not a continuation line; keep the line whole")
            if (o < 0x20 and (c != "\t" or not tab)) or o == 0x7F:
                raise AddressError("control", f"{where} contains the control "
                                              f"character U+{o:04X}; remove it")
            continue
        cat = unicodedata.category(c)
        if cat == "Cs" or c == "\ufffd":
            raise AddressError("undecodable", f"{where} holds bytes that are not "
                                              "valid UTF-8; send it again encoded as UTF-8")
        if cat == "Cc":
            raise AddressError("control", f"{where} contains the control "
                                          f"character {_char(c)}; remove it")
        if cat in ("Cf", "Zl", "Zp") or c in _INVISIBLE:
            raise AddressError("invisible", f"{where} contains the invisible "
                                            f"character {_char(c)}, which can hide what the line "
                                            "really says; remove it")
        if cat in ("Co", "Cn"):
            raise AddressError("unassigned", f"{where} contains {_char(c)}, a "
                                             "character without an agreed appearance; remove it")
        if c in _LOOKALIKES or any(s in unicodedata.normalize("NFKC", c) for s in "@<>"):
            raise AddressError("lookalike", f"{where} contains {_char(c)}, which "
                                            "looks like '@', '<' or '>' but is not; use plain ASCII "
                                            "characters")


def _prepare(value: str, field: str) -> list[_Token]:
    if len(value) > MAX_VALUE_CHARS:
        raise AddressError("too_long", f"the {field}: line is longer than {MAX_VALUE_CHARS} characters; "
                                       "send to fewer recipients or with shorter names")
    if any("\udc80" <= c <= "\udcff" for c in value):
        # Python's bytes parsers hand raw 8-bit header bytes over as surrogate escapes; read
        # them as the UTF-8 that RFC 6532 allows, or not at all.
        try:
            value = value.encode("utf-8", "surrogateescape").decode("utf-8")
        except UnicodeError as exc:
            raise AddressError("undecodable", f"the {field}: line holds bytes that are not valid "
                                              "UTF-8; send it again encoded as UTF-8") from exc
    unfolded = _FOLD.sub("", value)
    _check_chars(unfolded, f"the {field}: line")
    if not unfolded.strip(" \t"):
        raise AddressError("empty", f"the {field}: line is empty; put your address there, e.g. "
                                    f"{field}: {EXAMPLE}")
    return _tokens(unfolded, field)


# --- tokens -------------------------------------------------------------------------------

class _Kind(Enum):
    ATOM = "atom"
    QUOTED = "quoted"
    SPECIAL = "special"
    SPACE = "space"


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _Kind
    text: str

    def is_(self, special: str) -> bool:
        return self.kind is _Kind.SPECIAL and self.text == special


_SPACE = _Token(_Kind.SPACE, " ")


def _is_atext(c: str) -> bool:
    # Non-ASCII counts as atom text (RFC 6532) so that raw UTF-8 names work; the checks on
    # addresses refuse it there.
    return c in _ATEXT or ord(c) >= 0x80


def _tokens(text: str, field: str) -> list[_Token]:
    """Split into RFC 5322 lexical tokens, refusing the constructs parsers disagree on."""
    out: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t":
            while i < n and text[i] in " \t":
                i += 1
            out.append(_SPACE)
        elif c == '"':
            quoted, i = _quoted(text, i + 1, field)
            out.append(_Token(_Kind.QUOTED, quoted))
        elif c in _SPECIALS:
            out.append(_Token(_Kind.SPECIAL, c))
            i += 1
        elif c in "()":
            raise AddressError("comment", f"the {field}: line contains a comment in parentheses; "
                                          "comments are not accepted here because mail programs "
                                          "disagree on them (strict rule): remove the parentheses "
                                          "and what stands between them")
        elif c in "[]":
            raise AddressError("ip_literal", f"the {field}: line contains square brackets outside "
                                             "double quotes, as in an IP address literal "
                                             "(user@[192.0.2.1]), which is not accepted; write the "
                                             "domain name, and put a name with brackets in quotes")
        elif c == "\\":
            raise AddressError("backslash", f"the {field}: line contains a backslash outside double "
                                            "quotes; remove it")
        elif _is_atext(c):
            j = i
            while j < n and _is_atext(text[j]):
                j += 1
            out.append(_Token(_Kind.ATOM, text[i:j]))
            i = j
        else:  # pragma: no cover - _check_chars leaves only the characters handled above
            raise AddressError("control", f"the {field}: line contains the character {_char(c)}; "
                                          "remove it")
    return out


def _quoted(text: str, i: int, field: str) -> tuple[str, int]:
    """The content of a quoted string starting after its opening quote, and the index after it."""
    parts: list[str] = []
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            return "".join(parts), i + 1
        if c == "\\":
            if i + 1 >= n:
                break
            parts.append(text[i + 1])
            i += 2
            continue
        parts.append(c)
        i += 1
    raise AddressError("unbalanced_quote", f"the {field}: line has an opening double quote without a "
                                           "closing one; close the quoted name")


# --- grammar ------------------------------------------------------------------------------

class _Parser:
    """Recursive descent over RFC 5322 address-list, minus every obsolete or ambiguous form."""

    def __init__(self, tokens: list[_Token], field: str, *, groups: bool) -> None:
        self.toks = tokens
        self.pos = 0
        self.field = field
        self.groups = groups

    def fail(self, code: str, reason: str) -> AddressError:
        return AddressError(code, f"the {self.field}: line {reason}")

    def peek(self) -> _Token | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def skip_space(self) -> None:
        while self.pos < len(self.toks) and self.toks[self.pos].kind is _Kind.SPACE:
            self.pos += 1

    def address_list(self) -> list[Mailbox]:
        boxes: list[Mailbox] = []
        while True:
            self.skip_space()
            tok = self.peek()
            if tok is None or tok.is_(","):
                raise self.fail("empty_entry", "has an empty entry (two commas in a row, or a comma at "
                                               "the start or end); remove the extra comma")
            boxes.extend(self.address())
            if len(boxes) > MAX_MAILBOXES:
                raise self.fail("too_many", f"lists more than {MAX_MAILBOXES} addresses; send to fewer "
                                            "recipients")
            self.skip_space()
            tok = self.peek()
            if tok is None:
                return boxes
            if not tok.is_(","):
                raise self.after_address(tok)
            self.pos += 1

    def after_address(self, tok: _Token) -> AddressError:
        if tok.is_("<"):
            return self.fail("two_addresses", "holds two addresses in one entry; keep only yours, as in "
                                              f"{EXAMPLE}")
        if tok.is_(">"):
            return self.fail("stray_angle", "has a '>' without a matching '<'; write " + EXAMPLE)
        if tok.is_(":") or tok.is_(";"):
            return self.misplaced(tok.text)
        return self.fail("trailing_text", "has text after the address; put the name before the "
                                          f"address, as in {EXAMPLE}")

    def misplaced(self, char: str) -> AddressError:
        return self.fail("misplaced", f"has a misplaced '{char}'; write plain addresses separated by "
                                      f"commas, as in {EXAMPLE}")

    def space_in_address(self) -> AddressError:
        return self.fail("space_in_address", "has a space inside an address; write the address without "
                                             "spaces")

    def address(self) -> list[Mailbox]:
        phrase = self.phrase()
        tok = self.peek()
        if tok is not None and tok.is_("<"):
            display = self.display(phrase)
            return [Mailbox(self.angle_addr(), display)]
        if tok is not None and tok.is_("@"):
            return [Mailbox(self.bare_addr_spec(phrase), "")]
        if tok is not None and tok.is_(":"):
            return self.group(phrase)
        if tok is not None and tok.is_(">"):
            raise self.fail("stray_angle", "has a '>' without a matching '<'; write " + EXAMPLE)
        if tok is not None and tok.is_(";"):
            raise self.misplaced(";")
        raise self.fail("no_address", f"holds a name without an address; write {EXAMPLE}")

    def phrase(self) -> list[_Token]:
        start = self.pos
        while (tok := self.peek()) is not None and (tok.kind is not _Kind.SPECIAL or tok.is_(".")):
            self.pos += 1
        return self.toks[start:self.pos]

    def display(self, phrase: list[_Token]) -> str:
        """The display name as a reader sees it, refused if it could pass for an address."""
        words = _strip_space(phrase)
        if not words:
            return ""
        if words[0].is_("."):
            # obs-phrase must start with a word; Python's parser crashes on this one.
            raise self.fail("display_dot", "has a name that starts with a dot; put the name in double "
                                           'quotes, as in "Your Name" <you@example.org>')
        raw = "".join(t.text for t in words)
        shown = _decode_display(raw, self.field)
        _check_chars(shown, f"the {self.field}: line, once its name is decoded,")
        folded = unicodedata.normalize("NFKC", shown)
        if any(c in folded for c in "@<>"):
            raise self.fail("display_address", "has a name (display name) that contains '@', '<' or '>' "
                                               "(possibly after decoding), so a reader could take it for "
                                               "the address; put only your name before the address, as "
                                               f"in {EXAMPLE}")
        if "=?" in folded:
            raise self.fail("encoded_nested", "has a name that still looks encoded (=?...?=) after "
                                              "decoding; let your mail program encode the name once")
        return shown

    def angle_addr(self) -> str:
        self.pos += 1  # '<'
        inner: list[_Token] = []
        while True:
            tok = self.peek()
            if tok is None:
                raise self.fail("unclosed_angle", "has a '<' without a matching '>'; write " + EXAMPLE)
            self.pos += 1
            if tok.is_(">"):
                break
            if tok.is_("<"):
                raise self.fail("nested_angle", "has a '<' inside angle brackets; write " + EXAMPLE)
            inner.append(tok)
        if not inner:
            raise self.fail("empty_angle", "has empty angle brackets <>; put your address between them")
        ats = [i for i, t in enumerate(inner) if t.is_("@")]
        if any(t.is_(":") for t in inner) or (inner[0].is_("@") and (len(ats) > 1 or any(
                t.is_(",") for t in inner))):
            raise self.fail("route", "uses source-route syntax (<@host:user@domain>), which is obsolete "
                                     "and hides the real address; write only user@domain")
        if any(t.kind is _Kind.QUOTED for t in inner[: ats[0] if ats else len(inner)]):
            raise self.quoted_local()
        if any(t.kind is _Kind.QUOTED for t in inner):
            raise self.fail("quoted_domain", "has a domain in double quotes; write the domain plainly")
        for t in inner:
            if t.is_(",") or t.is_(";"):
                raise self.misplaced(t.text)
        if any(t.kind is _Kind.SPACE for t in inner):
            raise self.space_in_address()
        if not ats:
            raise self.fail("no_at", "has angle brackets that hold no address (no '@'); write "
                                     + EXAMPLE)
        if len(ats) > 1:
            raise self.multiple_at()
        local = "".join(t.text for t in inner[: ats[0]])
        domain = "".join(t.text for t in inner[ats[0] + 1:])
        return self.addr_spec(local, domain)

    def quoted_local(self) -> AddressError:
        return self.fail("quoted_local", "has an address whose part before '@' is in double quotes; "
                                         "only plain addresses are accepted (letters, digits, dots and "
                                         "!#$%&'*+-/=?^_`{|}~ before the '@')")

    def multiple_at(self) -> AddressError:
        return self.fail("multiple_at", "has an address with more than one '@'; write a single "
                                        "user@domain")

    def bare_addr_spec(self, phrase: list[_Token]) -> str:
        if any(t.kind is _Kind.QUOTED for t in phrase):
            raise self.quoted_local()
        if phrase and phrase[-1].kind is _Kind.SPACE:
            raise self.space_in_address()
        if any(t.kind is _Kind.SPACE for t in phrase):
            raise self.fail("name_without_angle", "has a name without angle brackets around the address; "
                                                  f"write {EXAMPLE}")
        local = "".join(t.text for t in phrase)
        self.pos += 1  # '@'
        start = self.pos
        while (tok := self.peek()) is not None and (tok.kind is _Kind.ATOM or tok.is_(".")):
            self.pos += 1
        domain = "".join(t.text for t in self.toks[start:self.pos])
        after = self.pos
        while after < len(self.toks) and self.toks[after].kind is _Kind.SPACE:
            after += 1
        if after > self.pos and after < len(self.toks) and (
                self.toks[after].is_(".") or self.toks[after].is_("@")
                or (not domain and self.toks[after].kind is _Kind.ATOM)):
            raise self.space_in_address()
        tok = self.peek()
        if tok is not None and tok.is_("@"):
            raise self.multiple_at()
        if tok is not None and tok.kind is _Kind.QUOTED:
            raise self.fail("quoted_domain", "has a domain in double quotes; write the domain plainly")
        return self.addr_spec(local, domain)

    def group(self, phrase: list[_Token]) -> list[Mailbox]:
        if not _strip_space(phrase):
            raise self.misplaced(":")
        if not self.groups:
            raise self.fail("group", "uses group syntax (name:...;); write one address, as in "
                                     + EXAMPLE)
        self.display(phrase)
        self.pos += 1  # ':'
        self.skip_space()
        tok = self.peek()
        if tok is not None and tok.is_(";"):
            self.pos += 1
            return []
        raise self.fail("group_members", "names a group that holds addresses (name: a@x, b@y;); list the "
                                         "addresses plainly, separated by commas")

    def addr_spec(self, local: str, domain: str) -> str:
        """The normalised address, refused unless it is plain ASCII in DNS form."""
        for c in local + domain:
            if ord(c) >= 0x80:
                raise self.fail("non_ascii", f"has an address containing {_char(c)}; only plain ASCII is "
                                             "accepted in addresses because other characters can look "
                                             "like ASCII ones (write an international domain in its "
                                             "xn-- form)")
        if "=?" in local or "=?" in domain:
            raise self.fail("encoded_address", "has an encoded word (=?...?=) inside the address; encoded "
                                               "words may stand in the name only, never in the address")
        if not local:
            raise self.fail("no_local", "has an address with nothing before '@'")
        if local.startswith(".") or local.endswith(".") or ".." in local:
            raise self.fail("local_dots", "has an address whose part before '@' starts or ends with a dot "
                                          "or has two dots in a row")
        if len(local) > MAX_LOCAL_PART:
            raise self.fail("local_too_long", f"has an address whose part before '@' is longer than "
                                              f"{MAX_LOCAL_PART} characters")
        host = domain.removesuffix(".")
        if not host:
            raise self.fail("no_domain", "has an address with no domain after '@'")
        if len(host) > MAX_DOMAIN:
            raise self.fail("domain_too_long", f"has a domain longer than {MAX_DOMAIN} characters")
        labels = host.split(".")
        for label in labels:
            if not label:
                raise self.fail("empty_label", "has a domain with an empty label (a leading dot or two "
                                               "dots in a row)")
            if len(label) > MAX_LABEL:
                raise self.fail("label_too_long", f"has a domain with a label longer than {MAX_LABEL} "
                                                  "characters")
            if not set(label) <= _LDH:
                raise self.fail("label_chars", "has a domain with characters other than letters, digits, "
                                               "hyphens and dots")
            if label.startswith("-") or label.endswith("-"):
                raise self.fail("label_hyphen", "has a domain with a label that starts or ends with a "
                                                "hyphen")
        if len(labels) < 2:
            raise self.fail("single_label", "has an address whose domain has no dot; write the full "
                                            "domain name")
        if labels[-1].isdigit():
            raise self.fail("numeric_domain", "has an address whose domain looks like an IP address; "
                                              "write the domain name")
        address = f"{local}@{host.lower()}"
        if len(address) > MAX_ADDRESS:
            raise self.fail("address_too_long", f"has an address longer than {MAX_ADDRESS} characters")
        return address


def _strip_space(tokens: list[_Token]) -> list[_Token]:
    start, end = 0, len(tokens)
    while start < end and tokens[start].kind is _Kind.SPACE:
        start += 1
    while end > start and tokens[end - 1].kind is _Kind.SPACE:
        end -= 1
    return tokens[start:end]


def _decode_display(raw: str, field: str) -> str:
    """Decode RFC 2047 encoded words the way a lenient client would, or refuse.

    Encoded words are decoded inside quoted strings too (RFC 2047 forbids them there, but
    clients decode them anyway and the name they show is what counts). A word that merely
    resembles an encoded word is refused instead of guessed at.
    """
    out: list[str] = []
    space = ""
    after_encoded = False
    for part in re.split(r"([ \t]+)", raw):
        if not part:
            continue
        if part[0] in " \t":
            space = part
            continue
        m = _ENCODED_WORD.fullmatch(part)
        if m is not None:
            # RFC 2047 6.2: white space between adjacent encoded words is not displayed.
            word = _decode_word(m, field)
            _check_chars(word, f"the {field}: line, once its name is decoded,", tab=False)
            out.append(("" if after_encoded else space) + word)
            after_encoded = True
        elif "=?" in part:
            raise AddressError("encoded_malformed", f"the {field}: line has a name with a malformed "
                                                    "encoded word (=?charset?encoding?text?=); let your "
                                                    "mail program encode the name")
        else:
            out.append(space + part)
            after_encoded = False
        space = ""
    out.append(space)
    return "".join(out)


def _decode_word(m: re.Match[str], field: str) -> str:
    charset, encoding, text = m.group(1), m.group(2).lower(), m.group(3)
    try:
        codec = codecs.lookup(charset).name
    except LookupError:
        codec = ""
    if codec not in _CHARSETS:
        raise AddressError("encoded_charset", f"the {field}: line has a name encoded in a character set "
                                              "that is not accepted here; use UTF-8")
    if not (_B_TEXT if encoding == "b" else _Q_TEXT).fullmatch(text):
        raise AddressError("encoded_undecodable", f"the {field}: line has a name whose encoded word "
                                                  "cannot be decoded; let your mail program encode the "
                                                  "name in UTF-8")
    try:
        parts = decode_header(m.group(0))
        if len(parts) != 1 or not isinstance(parts[0][0], bytes):
            raise HeaderParseError("not a single encoded word")
        return parts[0][0].decode(codec)
    except (HeaderParseError, UnicodeDecodeError, ValueError) as exc:
        raise AddressError("encoded_undecodable", f"the {field}: line has a name whose encoded word "
                                                  "cannot be decoded; let your mail program encode the "
                                                  "name in UTF-8") from exc
