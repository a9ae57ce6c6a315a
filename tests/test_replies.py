"""Pure unit tests: enhanced status codes, content refusals, recipient classification."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tldops_mta.intake import content_checks, replies
from tldops_mta.settings.config import defaults
from tldops_mta.settings.recipients import TAGGED, Recipient, Service, classify, local_parts

ENHANCED = re.compile(r"^([245])(\d\d)([ -])([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")

# -- replies.with_enhanced_code --------------------------------------------------------------

OUR_REPLIES = {name: value for name, value in vars(replies).items()
               if name.isupper() and isinstance(value, str)}


def test_every_named_reply_carries_a_matching_enhanced_code() -> None:
    assert len(OUR_REPLIES) >= 15
    for name, reply in OUR_REPLIES.items():
        m = ENHANCED.match(reply)
        assert m, name
        assert m.group(1) == m.group(4), name  # class of the code = class of the reply
        assert replies.with_enhanced_code(reply) == reply, name
    assert ENHANCED.match(replies.queued("4ABC"))


@pytest.mark.parametrize(("reply", "decorated"), [
    ("250 OK", "250 2.0.0 OK"),
    ("221 Bye", "221 2.0.0 Bye"),
    ("252 Cannot VRFY user", "252 2.5.0 Cannot VRFY user"),
    ("500 Error: bad syntax", "500 5.5.2 Error: bad syntax"),
    ("500 Command line too long", "500 5.5.2 Command line too long"),
    ("500 Line too long (see RFC5321 4.5.3.1.6)", "500 5.5.2 Line too long (see RFC5321 4.5.3.1.6)"),
    ("501 Syntax: RSET", "501 5.5.4 Syntax: RSET"),
    ("502 EXPN not implemented", "502 5.5.1 EXPN not implemented"),
    ("503 Error: need MAIL command", "503 5.5.1 Error: need MAIL command"),
    ("552 Error: Too much mail data", "552 5.3.4 Error: Too much mail data"),
    ("552 Error: message size exceeds fixed maximum message size",
     "552 5.3.4 Error: message size exceeds fixed maximum message size"),
    ("554 Command refused due to lack of security",
     "554 5.7.0 Command refused due to lack of security"),
    ("555 MAIL FROM parameters not recognized or not implemented",
     "555 5.5.4 MAIL FROM parameters not recognized or not implemented"),
    ("454 TLS not available", "454 4.7.0 TLS not available"),
    ("220 Ready to start TLS", "220 2.0.0 Ready to start TLS"),
    ("421 Bye", "421 4.3.0 Bye"),
    ("599 Odd", "599 5.0.0 Odd"),
    ("250-first line", "250-2.0.0 first line"),
    ("250", "250 2.0.0"),
    # already decorated: unchanged
    ("553 5.1.3 Error: malformed address", "553 5.1.3 Error: malformed address"),
    ("421 4.7.0 MAIL sent too many times", "421 4.7.0 MAIL sent too many times"),
    ("250-2.0.0 more", "250-2.0.0 more"),
    # intermediate and non-SMTP: unchanged
    ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
    ("334 VXNlcm5hbWU6", "334 VXNlcm5hbWU6"),
    ("", ""),
])
def test_with_enhanced_code_examples(reply: str, decorated: str) -> None:
    assert replies.with_enhanced_code(reply) == decorated


reply_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


@given(code=st.integers(200, 599), sep=st.sampled_from([" ", "-"]), text=reply_text)
@example(code=250, sep=" ", text="1.2.3 not an enhanced code")
@example(code=550, sep=" ", text="2.0.0 wrong class")
@example(code=451, sep=" ", text="4.3.0x glued")
def test_with_enhanced_code_properties(code: int, sep: str, text: str) -> None:
    if str(code)[0] not in "245":
        return
    reply = f"{code}{sep}{text}"
    out = replies.with_enhanced_code(reply)
    m = ENHANCED.match(out)
    assert m, out
    assert out[:4] == reply[:4]  # code and separator kept
    if ENHANCED.match(reply):
        assert out == reply
    else:
        assert m.group(1) == m.group(4)  # what we add has the reply's class
        assert out.endswith(text.rstrip())  # the text is kept
    assert replies.with_enhanced_code(out) == out  # idempotent


@given(code=st.integers(100, 399).filter(lambda c: str(c)[0] not in "245"), text=reply_text)
def test_other_replies_pass_unchanged(code: int, text: str) -> None:
    reply = f"{code} {text}"
    assert replies.with_enhanced_code(reply) == reply


# -- content_checks.refusal ----------------------------------------------------------------

line_octets = st.binary(max_size=120).map(
    lambda b: b.replace(b"\r", b"r").replace(b"\n", b"n").replace(b"\0", b"0"))
clean_lines = st.lists(line_octets, min_size=1, max_size=20)


def crlf(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines)


@given(clean_lines)
def test_clean_content_passes(lines: list[bytes]) -> None:
    assert content_checks.refusal(crlf(lines)) is None


@given(clean_lines, st.data())
def test_a_line_over_998_octets_is_refused(lines: list[bytes], data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(lines)))
    length = data.draw(st.sampled_from([999, 1000, 1001, 4096]))
    content = crlf([*lines[:at], b"y" * length, *lines[at:]])
    assert content_checks.refusal(content) == replies.LINE_TOO_LONG


@pytest.mark.parametrize(("content", "expected"), [
    (b"", None),
    (b"x" * 998 + b"\r\n", None),
    (b"x" * 998, None),
    (b"x" * 999, replies.LINE_TOO_LONG),
    (b"x" * 999 + b"\r\n", replies.LINE_TOO_LONG),
    (b"a\r\n" + b"x" * 998 + b"\r\nb\r\n", None),
    (b"a\r\n" + b"x" * 999 + b"\r\nb\r\n", replies.LINE_TOO_LONG),
    (b"a\nb\r\n", replies.BARE_LINE_ENDING),
    (b"a\rb\r\n", replies.BARE_LINE_ENDING),
    (b"a\r\r\n", replies.BARE_LINE_ENDING),
    (b"a\r\n\n", replies.BARE_LINE_ENDING),
    (b"a\n\r", replies.BARE_LINE_ENDING),
    (b"a\r", replies.BARE_LINE_ENDING),
    (b"\n", replies.BARE_LINE_ENDING),
    (b"\r\n.\n", replies.BARE_LINE_ENDING),
    (b"\r\r\n.\r\r\n", replies.BARE_LINE_ENDING),
    (b"\0", replies.NUL_BYTE),
    (b"a\0\nb" + b"x" * 2000, replies.NUL_BYTE),  # NUL first, whatever else is wrong
    (b"a\n" + b"x" * 2000, replies.BARE_LINE_ENDING),  # then line endings, then length
])
def test_refusal_examples(content: bytes, expected: str | None) -> None:
    assert content_checks.refusal(content) == expected


@given(clean_lines, st.data(), st.sampled_from([b"\r", b"\n", b"\n\r", b"\r\r\n", b"\r\n\n"]))
def test_any_bare_cr_or_lf_is_refused(lines: list[bytes], data: st.DataObject,
                                      bad: bytes) -> None:
    content = crlf(lines)
    at = data.draw(st.integers(0, len(content)))
    if content[at - 1:at] == b"\r" and bad.startswith(b"\n"):
        at -= 1  # do not complete an existing CR into a CRLF
    mangled = content[:at] + bad + content[at:]
    assert content_checks.refusal(mangled) == replies.BARE_LINE_ENDING


@given(st.binary(max_size=300), st.data())
def test_a_nul_anywhere_is_refused_first(content: bytes, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(content)))
    assert content_checks.refusal(content[:at] + b"\0" + content[at:]) == replies.NUL_BYTE


@given(st.binary(max_size=2500))
def test_refusal_agrees_with_a_line_by_line_reading(content: bytes) -> None:
    if b"\0" in content:
        want: str | None = replies.NUL_BYTE
    elif re.search(rb"\r(?!\n)|(?<!\r)\n", content):
        want = replies.BARE_LINE_ENDING
    elif any(len(line) > 998 for line in content.split(b"\r\n")):
        want = replies.LINE_TOO_LONG
    else:
        want = None
    assert content_checks.refusal(content) == want


# -- recipients.classify -------------------------------------------------------------------

DOM = "tld-ops.localhost"
PARTS = local_parts({k.split(".", 1)[1]: v for k, v in defaults().items()
                     if k.startswith("addresses.")})
UNTAGGED = [s for s in Service if s not in TAGGED]
tags = st.from_regex(r"[A-Za-z0-9_=.-]{1,200}", fullmatch=True)


def mixed_case(s: str, flips: list[bool]) -> str:
    return "".join(ch.upper() if i < len(flips) and flips[i] else ch for i, ch in enumerate(s))


@given(st.sampled_from(UNTAGGED), st.lists(st.booleans(), max_size=30),
       st.lists(st.booleans(), max_size=30), st.booleans())
def test_untagged_services_in_any_case(service: Service, f1: list[bool], f2: list[bool],
                                       dot: bool) -> None:
    addr = f"{mixed_case(service.value, f1)}@{mixed_case(DOM, f2)}{'.' if dot else ''}"
    assert classify(addr, DOM, PARTS) == Recipient(service)


@given(st.sampled_from(sorted(TAGGED)), tags, st.lists(st.booleans(), max_size=30))
def test_tagged_services_keep_the_tag_as_sent(service: Service, tag: str,
                                              flips: list[bool]) -> None:
    got = classify(f"{mixed_case(service.value, flips)}+{tag}@{DOM}", DOM, PARTS)
    assert got == Recipient(service, tag)
    assert str(got) == f"{service.value}+{tag}"


@given(st.sampled_from(list(Service)), st.text(max_size=30))
def test_a_tag_is_needed_exactly_where_the_service_takes_one(service: Service,
                                                             tag: str) -> None:
    tagged_ok = service in TAGGED and re.fullmatch(r"[A-Za-z0-9_=.-]{1,200}", tag) is not None
    got = classify(f"{service.value}+{tag}@{DOM}", DOM, PARTS)
    assert got == (Recipient(service, tag) if tagged_ok else None)
    bare = classify(f"{service.value}@{DOM}", DOM, PARTS)
    assert bare == (None if service in TAGGED else Recipient(service))


@given(st.sampled_from(list(Service)),
       st.from_regex(r"[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,2}", fullmatch=True))
def test_other_domains_are_never_ours(service: Service, domain: str) -> None:
    if domain.rstrip(".").lower() == DOM:
        return
    local = f"{service.value}+tag" if service in TAGGED else service.value
    assert classify(f"{local}@{domain}", DOM, PARTS) is None
    assert classify(f"{local}@{DOM}.{domain}", DOM, PARTS) is None
    assert classify(f"{local}@{domain}.{DOM}", DOM, PARTS) is None


@pytest.mark.parametrize(("address", "expected"), [
    ("postmaster", Recipient(Service.POSTMASTER)),
    ("PostMaster", Recipient(Service.POSTMASTER)),
    ("requests", None),  # only postmaster may come without a domain (RFC 5321 4.5.1)
    ("", None),
    (f"@{DOM}", None),
    (f"nobody@{DOM}", None),
    (f"requests@{DOM}@{DOM}", None),
    (f"a@requests@{DOM}", None),
    (f"confirm+a+b@{DOM}", None),
    (f"confirm+a/b@{DOM}", None),
    (f"confirm+@{DOM}", None),
    (f"confirm+{'x' * 201}@{DOM}", None),
    (f"confirm+{'x' * 200}@{DOM}", Recipient(Service.CONFIRM, "x" * 200)),
])
def test_classify_examples(address: str, expected: Recipient | None) -> None:
    assert classify(address, DOM, PARTS) == expected


def test_configured_local_parts_replace_the_defaults() -> None:
    names = {s.value: s.value for s in Service} | {"requests": "Anfragen", "who": "wer"}
    parts = local_parts(names)
    assert classify(f"anfragen@{DOM}", DOM, parts) == Recipient(Service.REQUESTS)
    assert classify(f"WER@{DOM}", DOM, parts) == Recipient(Service.WHO)
    assert classify(f"requests@{DOM}", DOM, parts) is None
    assert classify(f"who@{DOM}", DOM, parts) is None
